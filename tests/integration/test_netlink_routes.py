"""Routes: onlink replace/delete, listing, lookups; checked with ``ip -j route``."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannel.netlink import (
    BlackholeRouteReplace,
    FdbReplace,
    NeighReplace,
    Netlink,
    Op,
    Route,
    RouteDelete,
    RouteReplace,
    VxlanSpec,
    is_gone,
)
from flannel.netlink.consts import RTN_BLACKHOLE, RTPROT_BOOT
from tests.netns import UNDERLAY_IP, NetNS, netns_fixture  # noqa: F401

pytestmark = pytest.mark.root


def _vxlan(nl: Netlink) -> int:
    link = nl.create_vxlan(VxlanSpec("flannel.1", 1, 0, None, 0, False, False, 1450, None))
    nl.set_link_up(link.index)  # the kernel refuses onlink routes over a device that is down
    return link.index


def test_route_replace_onlink_then_delete(netns: NetNS) -> None:
    net, gw = IPv4Network("10.244.3.0/24"), IPv4Address("10.244.3.0")
    with Netlink(netns.name) as nl:
        idx = _vxlan(nl)
        assert nl.apply([RouteReplace(net, gw, idx, onlink=True)]) == [None]
        assert nl.apply([RouteReplace(net, gw, idx, onlink=True)]) == [None]  # idempotent
        shown = netns.ip_json("route", "show", "10.244.3.0/24")
        want = {"dst": "10.244.3.0/24", "gateway": "10.244.3.0", "dev": "flannel.1", "flags": ["onlink"]}
        assert shown == [want]
        netns.ip("route", "replace", "10.244.4.0/24", "via", "10.244.4.0", "dev", "flannel.1", "onlink")
        listed = {r.dst: r for r in nl.routes(socket.AF_INET)}
        r, by_ip = listed[net], listed[IPv4Network("10.244.4.0/24")]
        assert (r.gateway, r.oif, r.onlink, r.type, r.scope, r.protocol, r.table) == (
            gw,
            idx,
            True,
            1,
            0,
            RTPROT_BOOT,
            254,
        )

        # Indistinguishable from what `ip route replace` makes, so either can adopt the other's routes.
        def shape(x: Route) -> tuple[int, int, int, bool]:
            return (x.type, x.scope, x.protocol, x.onlink)

        assert shape(r) == shape(by_ip)
        assert nl.apply([RouteDelete(net, gw, idx)]) == [None]
        assert netns.ip_json("route", "show", "10.244.3.0/24") == []
        [err] = nl.apply([RouteDelete(net)])
    assert is_gone(err) and err is not None and err.op == "route del 10.244.3.0/24"


def test_routes_lists_default_and_blackhole_routes(netns: NetNS) -> None:
    netns.ip("route", "add", "default", "via", "198.18.0.254")
    with Netlink(netns.name) as nl:
        assert nl.apply([BlackholeRouteReplace(IPv4Network("10.244.0.0/16"))]) == [None]
        routes = {r.dst: r for r in nl.routes()}
    assert routes[IPv4Network("0.0.0.0/0")].gateway == IPv4Address("198.18.0.254")
    assert routes[IPv4Network("10.244.0.0/16")].type == RTN_BLACKHOLE
    assert routes[IPv4Network("198.18.0.0/24")].gateway is None
    assert netns.ip_json("route", "show", "type", "blackhole")[0]["dst"] == "10.244.0.0/16"


def test_routes_of_other_tables_are_left_out(netns: NetNS) -> None:
    netns.ip("route", "add", "10.244.9.0/24", "dev", "eth0", "table", "100")
    with Netlink(netns.name) as nl:
        assert IPv4Network("10.244.9.0/24") not in {r.dst for r in nl.routes()}
        assert [r.table for r in nl.routes(table=100)] == [100]


def test_route_get_tells_interface_source_and_gateway(netns: NetNS) -> None:
    netns.ip("route", "add", "203.0.113.0/24", "via", "198.18.0.254")
    with Netlink(netns.name) as nl:
        eth0 = nl.link_by_name("eth0")
        assert eth0 is not None
        direct = nl.route_get(IPv4Address("198.18.0.77"))
        via = nl.route_get("203.0.113.5")
        assert nl.route_get(IPv4Address("192.0.2.1")) is None  # no default route in the namespace
    assert direct is not None and via is not None
    assert (direct.oif, direct.prefsrc, direct.gateway) == (eth0.index, IPv4Address(UNDERLAY_IP), None)
    assert (via.oif, via.gateway) == (eth0.index, IPv4Address("198.18.0.254"))


def test_thousands_of_routes_are_listed(netns: NetNS) -> None:
    base = int(IPv4Address("10.64.0.0"))
    with Netlink(netns.name) as nl:
        idx = _vxlan(nl)
        ops = [RouteReplace(IPv4Network((base + (i << 8), 24)), None, idx) for i in range(5000)]
        assert not any(nl.apply(ops))
        listed = {r.dst for r in nl.routes() if r.oif == idx}
    assert listed == {op.dst for op in ops}
    assert len(netns.ip_json("route", "show", "dev", "flannel.1")) == 5000


def test_ipv6_route_neigh_and_fdb(netns: NetNS) -> None:
    net, gw = IPv6Network("fd00:10:244:3::/64"), IPv6Address("fd00:10:244:3::")
    mac, public = "0a:58:00:00:03:00", IPv6Address("fd00:198:18::3")
    netns.ip("addr", "add", "fd00:198:18::1/64", "dev", "eth0", "nodad")
    with Netlink(netns.name) as nl:
        local = IPv6Address("fd00:198:18::1")
        link = nl.create_vxlan(VxlanSpec("flannel-v6.1", 1, 0, local, 0, False, False, 1430, None))
        nl.set_link_up(link.index)
        ops: list[Op] = [
            NeighReplace(link.index, gw, mac),
            FdbReplace(link.index, mac, public),
            RouteReplace(net, gw, link.index, onlink=True),
        ]
        assert nl.apply(ops) == [None, None, None]
        [route] = [r for r in nl.routes(socket.AF_INET6) if r.dst == net]
        assert (route.gateway, route.oif, route.onlink) == (gw, link.index, True)
        assert [(n.ip, n.lladdr) for n in nl.neighbours(link.index, socket.AF_INET6)] == [(gw, mac)]
        assert [(e.mac, e.dst) for e in nl.fdb(link.index)] == [(mac, public)]
        info = nl.route_get(IPv6Address("fd00:10:244:3::5"))
        assert info is not None and (info.oif, info.gateway) == (link.index, gw)
    assert netns.ip_json("-6", "route", "show", str(net))[0]["gateway"] == str(gw)
