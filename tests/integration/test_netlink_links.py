"""Links: creating, reading back and changing VXLAN devices through ``Netlink``, checked with ``ip -d -j``."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv6Address

import pytest

from flannel.netlink import Netlink, NetlinkError, VxlanSpec, is_exists, is_gone
from tests.netns import UNDERLAY_IP, NetNS, netns_fixture  # noqa: F401

pytestmark = pytest.mark.root


def _info(ns: NetNS, dev: str) -> dict[str, object]:
    link = ns.ip_json("-d", "link", "show", "dev", dev)[0]
    assert link["linkinfo"]["info_kind"] == "vxlan"
    return dict(link, **link["linkinfo"]["info_data"])


def test_create_vxlan_sets_every_attribute_as_ip_would(netns: NetNS) -> None:
    with Netlink(netns.name) as nl:
        eth0 = nl.link_by_name("eth0")
        assert eth0 is not None
        link = nl.create_vxlan(
            VxlanSpec(
                "flannel.1",
                vni=1,
                underlay_index=eth0.index,
                local=IPv4Address(UNDERLAY_IP),
                port=8472,
                learning=False,
                gbp=True,
                mtu=1450,
                mac="0A:58:0a:f4:01:00",
            )
        )
    got = _info(netns, "flannel.1")
    assert got["ifindex"] == link.index
    assert (got["address"], got["mtu"], got["id"], got["link"]) == ("0a:58:0a:f4:01:00", 1450, 1, "eth0")
    assert (got["local"], got["port"], got["ttl"]) == (UNDERLAY_IP, 8472, 0)
    assert (got["learning"], got["gbp"]) == (False, True)
    assert link.kind == "vxlan" and link.name == "flannel.1" and link.mac == "0a:58:0a:f4:01:00"
    assert link.mtu == 1450 and not link.up
    assert link.vxlan is not None
    v = link.vxlan
    assert (v.vni, v.underlay_index, v.local, v.port) == (1, eth0.index, IPv4Address(UNDERLAY_IP), 8472)
    assert (v.learning, v.gbp, v.l2miss, v.group) == (False, True, False, None)


def test_vxlan_without_port_gets_the_kernel_default_8472(netns: NetNS) -> None:
    with Netlink(netns.name) as nl:
        link = nl.create_vxlan(VxlanSpec("vx0", 42, 0, None, 0, True, False, 0, None))
    assert link.vxlan is not None and link.vxlan.port == 8472 and link.vxlan.learning
    got = _info(netns, "vx0")
    assert got["port"] == 8472 and got["learning"] is True and "gbp" not in got and got["mtu"] == 1500


def test_vxlan_with_ipv6_local_uses_local6(netns: NetNS) -> None:
    with Netlink(netns.name) as nl:
        local = IPv6Address("fd00:198:18::1")
        link = nl.create_vxlan(VxlanSpec("flannel-v6.1", 1, 0, local, 4789, False, False, 1430, None))
    assert link.vxlan is not None and link.vxlan.local == IPv6Address("fd00:198:18::1")
    got = _info(netns, "flannel-v6.1")
    assert got["local6"] == "fd00:198:18::1" and got["port"] == 4789 and got["mtu"] == 1430


def test_adopting_reads_a_device_created_by_ip(netns: NetNS) -> None:
    netns.ip(
        "link",
        "add",
        "flannel.1",
        "address",
        "0a:00:00:00:00:01",
        "type",
        "vxlan",
        "id",
        "9",
        "dev",
        "eth0",
        "local",
        UNDERLAY_IP,
        "group",
        "239.1.1.1",
        "l2miss",
        "dstport",
        "8472",
    )
    with Netlink(netns.name) as nl:
        link = nl.link_by_name("flannel.1")
        assert link is not None and link.vxlan is not None
        assert link.vxlan.group == IPv4Address("239.1.1.1") and link.vxlan.l2miss and link.vxlan.vni == 9
        assert nl.link_by_index(link.index) == link
        assert link in nl.links()
        with pytest.raises(NetlinkError) as exc:
            nl.create_vxlan(VxlanSpec("flannel.1", 1, 0, None, 0, False, False, 1450, None))
    assert is_exists(exc.value) and "link add flannel.1" in exc.value.op


def test_missing_links_are_none(netns: NetNS) -> None:
    with Netlink(netns.name) as nl:
        assert nl.link_by_name("nosuchdev") is None
        assert nl.link_by_index(99999) is None


def test_set_up_mtu_and_delete(netns: NetNS) -> None:
    with Netlink(netns.name) as nl:
        link = nl.create_vxlan(VxlanSpec("vx1", 5, 0, None, 0, False, False, 1450, None))
        nl.set_link_mtu(link.index, 1400)
        nl.set_link_up(link.index)
        again = nl.link_by_index(link.index)
        assert again is not None and again.up and again.mtu == 1400
        got = netns.ip_json("link", "show", "dev", "vx1")[0]
        assert "UP" in got["flags"] and got["mtu"] == 1400
        nl.delete_link(link.index)
        assert netns.ip("link", "show", "dev", "vx1", check=False).returncode != 0
        with pytest.raises(NetlinkError) as exc:
            nl.delete_link(link.index)
        assert is_gone(exc.value)


def test_socket_in_a_netns_leaves_the_thread_in_its_own(netns: NetNS) -> None:
    before = os.stat("/proc/thread-self/ns/net").st_ino
    with Netlink(netns.name) as nl:
        assert os.stat("/proc/thread-self/ns/net").st_ino == before
        assert {link.name for link in nl.links()} == {"lo", "eth0", "eth0-peer"}
