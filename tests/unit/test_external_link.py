"""Following the external interface without a kernel: how it is found again, what is logged, and ipip's
DirectRouting routes moved to its new index (ipip cannot run on this machine's kernel; the vxlan and host-gw
paths run against the real kernel in tests/integration/test_external_iface.py)."""

from __future__ import annotations

import logging
import socket
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from flannel.backend.base import ExternalInterface
from flannel.backend.external import ExternalLink
from flannel.backend.ipip import IPIPNetwork, IPIPRoutePlane
from flannel.backend.route_plane import PeerRoute
from flannel.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.netlink import Addr, IptunSpec, Link, LinkEvent
from flannel.netlink.links import IptunInfo

ADDR = IPv4Address("198.18.0.1")
EXT = ExternalInterface(name="eth0", index=2, mtu=1500, iface_addr=ADDR, iface_v6_addr=None, ext_addr=ADDR,
                        ext_v6_addr=None)
SPEC = IptunSpec(name="flannel.ipip", local=ADDR, mtu=1480)


class Kernel:
    """The links and addresses a namespace holds; answers the lookups ``ExternalLink`` and ipip make."""

    def __init__(self, *links: Link, addrs: dict[int, list[str]] | None = None) -> None:
        self.links = {link.index: link for link in links}
        self.addrs = addrs or {}
        self.applied: list[object] = []

    def link_by_index(self, index: int) -> Link | None:
        return self.links.get(index)

    def link_by_name(self, name: str) -> Link | None:
        return next((link for link in self.links.values() if link.name == name), None)

    def addresses(self, index: int | None = None, family: int | None = None) -> list[Addr]:
        return [Addr(i, IPv4Address(a), 32, 0, 0x80, "") for i, texts in self.addrs.items()
                if index is None or i == index for a in texts]

    def add_address(self, *args: Any) -> None:
        raise AssertionError("flannel.ipip has its address in these tests")

    def routes(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []

    def route_matches(self, dsts: list[Any]) -> list[Any]:
        return [None] * len(dsts)

    def route_get(self, dst: Any) -> Any:
        return type("Info", (), {"gateway": None})()  # every peer on-link: DirectRouting applies

    def apply(self, ops: list[object]) -> list[None]:
        self.applied.extend(ops)
        return [None] * len(ops)


def eth(index: int, name: str = "eth0", up: bool = True) -> Link:
    return Link(index=index, name=name, mtu=1500, mac="02:00:00:00:00:01", up=up, kind="veth")


def test_the_same_index_is_kept_and_nothing_is_said() -> None:
    ext = ExternalLink(EXT)
    assert ext.refresh(Kernel(eth(2), addrs={2: ["198.18.0.1"]})) is None  # type: ignore[arg-type]
    assert ext.index == 2 and ext.usable


def test_a_recreated_interface_is_found_by_name_and_followed(caplog: pytest.LogCaptureFixture) -> None:
    ext = ExternalLink(EXT)
    assert ext.refresh(Kernel(eth(7), addrs={7: ["198.18.0.1"]})) == 2  # type: ignore[arg-type]
    assert (ext.index, ext.iface.name, ext.usable) == (7, "eth0", True)
    assert "external interface eth0 (index 2) is now eth0 (index 7); following it" in caplog.text


def test_without_its_name_the_interface_holding_our_address_is_followed() -> None:
    ext = ExternalLink(EXT)
    kernel = Kernel(eth(7, name="ens3"), addrs={7: ["198.18.0.1"]})
    assert ext.refresh(kernel) == 2  # type: ignore[arg-type]
    assert (ext.index, ext.iface.name) == (7, "ens3")


def test_gone_and_down_are_unusable_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flannel")
    ext = ExternalLink(EXT)
    for _ in range(3):
        assert ext.refresh(Kernel()) is None  # type: ignore[arg-type]
    assert not ext.usable and caplog.text.count("is gone") == 1
    assert ext.refresh(Kernel(eth(2, up=False), addrs={2: ["198.18.0.1"]})) is None  # type: ignore[arg-type]
    assert ext.present and not ext.up and not ext.usable and "eth0 is down" in caplog.text
    ext.refresh(Kernel(eth(2), addrs={2: ["198.18.0.1"]}))  # type: ignore[arg-type]
    assert ext.usable and "is up with its address" in caplog.text


def test_another_address_is_an_error_naming_both_and_no_address_yet_only_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    ext = ExternalLink(EXT)
    ext.refresh(Kernel(eth(7)))  # type: ignore[arg-type]
    assert [r.levelno for r in caplog.records if "yet" in r.getMessage()] == [logging.WARNING]
    for _ in range(2):
        ext.refresh(Kernel(eth(7), addrs={7: ["198.18.0.7"]}))  # type: ignore[arg-type]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "198.18.0.7 instead of 198.18.0.1" in errors[0] and "PublicIP 198.18.0.1" in errors[0]
    assert ext.usable, "it carries on with what exists"


def test_events_that_concern_the_interface() -> None:
    ext = ExternalLink(EXT)
    assert ext.concerns(LinkEvent("new", 2, "eth0"))
    assert ext.concerns(LinkEvent("new", 9, "eth0"))  # re-created under its name
    assert ext.concerns(LinkEvent("addr", 2, ""))
    assert not ext.concerns(LinkEvent("addr", 9, "eth0:1"))
    assert not ext.concerns(LinkEvent("new", 5, "flannel.1"))


def test_ipip_direct_routes_follow_the_recreated_interface_and_tunnel_routes_stay() -> None:
    tunnel_dev = Link(index=9, name="flannel.ipip", mtu=1480, mac="", up=True, kind="ipip",
                      iptun=IptunInfo(ADDR, None, 0))
    kernel = Kernel(eth(2), tunnel_dev, addrs={2: ["198.18.0.1"], 9: ["10.244.7.0"]})
    plane = IPIPRoutePlane(family=socket.AF_INET, cluster=IPv4Network("10.244.0.0/16"),
                           own_subnet=IPv4Network("10.244.7.0/24"), oif=2, nl=kernel,  # type: ignore[arg-type]
                           tunnel_index=9, direct_routing=True)
    own = Lease(subnet=IPv4Network("10.244.7.0/24"))
    network = IPIPNetwork(kernel, own, 1480, plane, SPEC, 10.0, "eth0", ext=EXT)  # type: ignore[arg-type]
    network.handle_events([LeaseEvent(EventType.ADDED, Lease(
        subnet=IPv4Network("10.244.3.0/24"), attrs=LeaseAttrs(public_ip=IPv4Address("198.18.0.9"),
                                                              backend_type="ipip")))])
    plane.desired["far"] = PeerRoute(IPv4Network("10.244.4.0/24"), IPv4Address("203.0.113.5"), oif=9, onlink=True)
    network.synced = True

    del kernel.links[2]
    kernel.links[7] = eth(7, up=False)
    kernel.addrs = {7: ["198.18.0.1"], 9: ["10.244.7.0"]}
    kernel.applied.clear()
    assert network.reconcile() == 0, "nothing is programmed through a down interface"
    assert kernel.applied == []
    assert plane.oif == 7 and plane.desired["far"].oif == 9
    assert network.names[7] == "eth0" and 2 not in network.names

    kernel.links[7] = eth(7)
    assert network.reconcile() == 2  # the fake kernel has no routes: both are re-added
    direct = PeerRoute(IPv4Network("10.244.3.0/24"), IPv4Address("198.18.0.9"), oif=7, onlink=True)
    assert direct.replace_op() in kernel.applied
    assert plane.route_for(Lease(subnet=IPv4Network("10.244.5.0/24"), attrs=LeaseAttrs(
        public_ip=IPv4Address("198.18.0.9")))).oif == 7  # type: ignore[union-attr]  # future leases too
