"""Addresses: listing with flags, adding (idempotently) and deleting, checked with ``ip -j addr``."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address

import pytest

from flannel.netlink import Netlink, NetlinkError, VxlanSpec, is_gone
from flannel.netlink.addrs import IFA_F_PERMANENT
from tests.netns import UNDERLAY_IP, NetNS, netns_fixture  # noqa: F401

pytestmark = pytest.mark.root


def _ip_addrs(ns: NetNS, dev: str) -> set[str]:
    return {f"{a['local']}/{a['prefixlen']}" for a in ns.ip_json("addr", "show", "dev", dev)[0]["addr_info"]}


def test_addresses_lists_the_underlay_address_as_permanent(netns: NetNS) -> None:
    with Netlink(netns.name) as nl:
        eth0 = nl.link_by_name("eth0")
        assert eth0 is not None
        v4 = nl.addresses(eth0.index, socket.AF_INET)
    assert [(a.address, a.prefixlen, a.label) for a in v4] == [(IPv4Address(UNDERLAY_IP), 24, "eth0")]
    assert v4[0].flags & IFA_F_PERMANENT and v4[0].permanent and v4[0].scope == 0


def test_add_is_idempotent_and_delete_removes(netns: NetNS) -> None:
    with Netlink(netns.name) as nl:
        link = nl.create_vxlan(VxlanSpec("flannel.1", 1, 0, None, 0, False, False, 1450, None))
        nl.add_address(link.index, IPv4Address("10.244.7.0"), 32)
        nl.add_address(link.index, IPv4Address("10.244.7.0"), 32)  # replace semantics: no EEXIST
        nl.add_address(link.index, IPv6Address("fd00:10:244:7::"), 128)
        assert _ip_addrs(netns, "flannel.1") >= {"10.244.7.0/32", "fd00:10:244:7::/128"}
        assert [a.address for a in nl.addresses(link.index, socket.AF_INET)] == [IPv4Address("10.244.7.0")]
        v6 = {a.address for a in nl.addresses(link.index, socket.AF_INET6)}
        assert IPv6Address("fd00:10:244:7::") in v6
        assert all(a.index == link.index for a in nl.addresses(link.index))
        nl.delete_address(link.index, IPv4Address("10.244.7.0"), 32)
        assert "10.244.7.0/32" not in _ip_addrs(netns, "flannel.1")
        with pytest.raises(NetlinkError) as exc:
            nl.delete_address(link.index, IPv4Address("10.244.7.0"), 32)
    assert is_gone(exc.value) and exc.value.op.startswith("addr del 10.244.7.0/32")


def test_addresses_of_every_device_and_family(netns: NetNS) -> None:
    with Netlink(netns.name) as nl:
        every = nl.addresses()
    assert IPv4Address("127.0.0.1") in {a.address for a in every}
    assert IPv6Address("::1") in {a.address for a in every}
