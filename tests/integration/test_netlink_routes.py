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
from flannel.netlink import routes as wire_routes
from flannel.netlink.consts import RTM_GETROUTE, RTN_BLACKHOLE, RTPROT_BOOT
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


def _foreign_routes(netns: NetNS, count: int) -> None:
    """``count`` /32 routes via the underlay, as a BGP daemon would install them (``proto bird``)."""
    lines = (f"route add 100.{i >> 16 & 0xFF}.{i >> 8 & 0xFF}.{i & 0xFF}/32 via 198.18.0.254 proto bird"
             for i in range(count))
    netns.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n")


def test_routes_of_one_device_are_filtered_by_the_kernel(netns: NetNS) -> None:
    _foreign_routes(netns, 20000)
    base = int(IPv4Address("10.244.0.0"))
    with Netlink(netns.name) as nl:
        idx = _vxlan(nl)
        eth0 = netns.ifindex("eth0")
        ops = [RouteReplace(IPv4Network((base + (i << 8), 24)), IPv4Address(base + (i << 8)), idx, True)
               for i in range(100)]
        assert not any(nl.apply(ops))
        assert {(r.dst, r.oif, r.table) for r in nl.routes(oif=idx)} == {(op.dst, idx, 254) for op in ops}
        assert len(nl.routes(oif=eth0)) == 20001  # the /24 of its address too
        assert len(nl.routes()) == 20101
        # What the kernel sent, before any filtering of ours: only the device's main-table routes.
        sent = nl._dump(RTM_GETROUTE, wire_routes.dump_body(socket.AF_INET, 254, idx),
                        lambda data, start, end: wire_routes.parse_route(data, start, end, None), "route show")
        assert len(sent) == 100 and {(r.oif, r.table) for r in sent} == {(idx, 254)}
        netns.ip("route", "add", "10.245.0.0/24", "dev", "flannel.1", "table", "100")
        assert [r.dst for r in nl.routes(table=100, oif=idx)] == [IPv4Network("10.245.0.0/24")]


def test_routes_of_a_device_that_does_not_exist_are_none(netns: NetNS) -> None:
    with Netlink(netns.name) as nl:
        assert nl.routes(oif=99999) == []
        assert nl.routes(socket.AF_INET6, oif=99999) == []


def test_route_match_names_the_table_entry_a_lookup_ends_in(netns: NetNS) -> None:
    netns.ip("route", "add", "10.244.3.0/24", "via", "198.18.0.7")
    netns.ip("route", "add", "10.244.3.128/25", "via", "198.18.0.8")
    netns.ip("route", "add", "10.244.4.0/24", "via", "198.18.0.9", "table", "100")
    netns.ip("rule", "add", "to", "10.244.4.0/24", "lookup", "100", "pref", "100")
    netns.ip("route", "add", "blackhole", "10.244.5.0/24")
    netns.ip("route", "add", "prohibit", "10.244.6.0/24")
    netns.ip("addr", "add", "fd00:198:18::1/64", "dev", "eth0", "nodad")
    netns.ip("route", "add", "fd00:10:244:3::/64", "via", "fd00:198:18::7")
    with Netlink(netns.name) as nl:
        r = nl.route_match(IPv4Address("10.244.3.0"))
        assert r is not None and (r.dst, r.gateway, r.table) == (
            IPv4Network("10.244.3.0/24"), IPv4Address("198.18.0.7"), 254)
        r = nl.route_match("10.244.3.200")  # the more specific route hides the /24 from this address
        assert r is not None and r.dst == IPv4Network("10.244.3.128/25")
        r = nl.route_match("10.244.4.0")  # a policy rule sends the lookup to another table
        assert r is not None and (r.dst, r.table) == (IPv4Network("10.244.4.0/24"), 100)
        assert nl.route_match("10.244.5.0") is None  # blackhole
        assert nl.route_match("10.244.6.0") is None  # prohibit
        assert nl.route_match("192.0.2.1") is None  # no route at all
        r = nl.route_match(IPv6Address("fd00:10:244:3::"))
        assert r is not None and (r.dst, r.gateway, r.table) == (
            IPv6Network("fd00:10:244:3::/64"), IPv6Address("fd00:198:18::7"), 254)
        assert nl.route_match("fd00:99::1") is None


def test_route_matches_answers_thousands_of_lookups_in_order(netns: NetNS) -> None:
    base = int(IPv4Address("10.64.0.0"))
    nets = [IPv4Network((base + (i << 8), 24)) for i in range(3000)]
    with Netlink(netns.name, bufsize=64 << 10) as nl:  # a small buffer: many chunks in flight in turn
        assert nl._max_gets < 100
        assert not any(nl.apply([RouteReplace(n, IPv4Address(f"198.18.0.{2 + i % 200}")) for i, n in enumerate(nets)
                                 if i % 3]))
        found = nl.route_matches([n.network_address for n in nets])
        assert nl.route_matches([]) == []
    assert len(found) == 3000
    for i, (net, r) in enumerate(zip(nets, found, strict=True)):
        if i % 3:
            assert r is not None and (r.dst, r.gateway) == (net, IPv4Address(f"198.18.0.{2 + i % 200}"))
        else:
            assert r is None  # no default route in the namespace


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
