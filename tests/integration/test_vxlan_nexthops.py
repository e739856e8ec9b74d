"""vxlan's IPv4 routes through kernel nexthop objects (``netlink.nexthops``), against the real kernel.

What is proved here, read back with ``ip -j``: a peer's route names a nexthop object whose id is its gateway;
``Backend.NexthopObjects: false`` keeps upstream's plain onlink routes; routes left in either form (by upstream
flanneld, or by us before the setting changed) are converted by the first snapshot; an id already held by
someone else's object is left alone and that peer gets a plain route; the reconcile repairs our objects changed
or deleted by hand and removes stale ones of our shape, and nothing else.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from flannel.lease import Lease
from flannel.subnet.manager import WatchResult
from tests.backend_harness import stays_in_own_namespace  # noqa: F401
from tests.integration.test_vxlan_network import (  # noqa: F401
    DEV,
    RegisterFn,
    added,
    expect_tunnel,
    log_lines,
    logs_fixture,
    nh_of,
    peer,
    register_fixture,
    removed,
    route_lines,
)
from tests.netns import NetNS, netns_fixture  # noqa: F401

pytestmark = pytest.mark.root


def nexthop_objects(ns: NetNS) -> dict[int, tuple[str, str, bool]]:
    """Every nexthop object: id -> (gateway, device, onlink)."""
    return {n["id"]: (n.get("gateway", ""), n.get("dev", ""), "onlink" in n.get("flags", []))
            for n in ns.ip_json("nexthop", "show")}


def route_forms(ns: NetNS) -> dict[str, int]:
    """Main-table routes on the device: destination -> the nexthop id it names (0: a plain route)."""
    return {r["dst"]: r.get("nhid", 0) for r in ns.ip_json("route", "show", "dev", DEV)}


def ours(*peers: int) -> dict[int, tuple[str, str, bool]]:
    return {nh_of(i): (f"10.100.{i}.0", DEV, True) for i in peers}


def snapshot(*peers: int) -> WatchResult:
    leases: tuple[Lease, ...] = tuple(peer(i) for i in peers)
    return WatchResult(snapshot=leases)


def test_routes_name_nexthop_objects_and_a_removed_peer_takes_its_object_along(netns: NetNS,
                                                                                 register: RegisterFn) -> None:
    node = register()
    node.events(added(peer(3)), added(peer(4)))
    expect_tunnel(netns, 3, 4)
    assert nexthop_objects(netns) == ours(3, 4)
    assert route_forms(netns) == {"10.100.3.0/24": nh_of(3), "10.100.4.0/24": nh_of(4)}
    node.events(removed(peer(3)))
    expect_tunnel(netns, 4)
    assert nexthop_objects(netns) == ours(4)
    node.network.synced = True
    assert node.reconcile() == 0


def test_the_setting_off_keeps_upstreams_plain_routes(netns: NetNS, register: RegisterFn,
                                                     logs: pytest.LogCaptureFixture) -> None:
    node = register({"Type": "vxlan", "NexthopObjects": False})
    node.events(added(peer(3)))
    expect_tunnel(netns, 3)
    assert log_lines(logs, logging.INFO)[-1] == "route replace 10.100.3.0/24 via 10.100.3.0 dev flannel.1 onlink"
    assert nexthop_objects(netns) == {}
    assert route_forms(netns) == {"10.100.3.0/24": 0}
    node.network.synced = True
    assert node.reconcile() == 0


@pytest.mark.parametrize("setting", [True, False], ids=["plain-to-nexthop", "nexthop-to-plain"])
def test_routes_left_in_the_other_form_are_converted_by_the_first_snapshot(netns: NetNS, register: RegisterFn,
                                                                           setting: bool) -> None:
    """Upstream flanneld (or this one with the setting off) leaves plain routes; this one with the setting on
    leaves routes naming objects. Whichever runs next rewrites them in its own form, without a gap."""
    before = register({"Type": "vxlan", "NexthopObjects": not setting})
    before.apply(snapshot(3, 4))
    node = register({"Type": "vxlan", "NexthopObjects": setting})
    node.apply(snapshot(3, 4))
    expect_tunnel(netns, 3, 4)
    want = {"10.100.3.0/24": nh_of(3) if setting else 0, "10.100.4.0/24": nh_of(4) if setting else 0}
    assert route_forms(netns) == want
    node.network.synced = True
    assert node.reconcile() == 0
    assert route_forms(netns) == want


def test_an_id_held_by_someone_elses_object_is_left_alone(netns: NetNS, register: RegisterFn) -> None:
    netns.ip("nexthop", "add", "id", str(nh_of(3)), "via", "198.18.0.254", "dev", "eth0")
    foreign = {nh_of(3): ("198.18.0.254", "eth0", False)}
    node = register()
    node.apply(snapshot(3, 4))
    expect_tunnel(netns, 3, 4)
    assert nexthop_objects(netns) == foreign | ours(4)
    assert route_forms(netns) == {"10.100.3.0/24": 0, "10.100.4.0/24": nh_of(4)}
    node.network.synced = True
    assert node.reconcile() == 0
    node.events(removed(peer(3)))
    expect_tunnel(netns, 4)
    assert nexthop_objects(netns) == foreign | ours(4)


def test_reconcile_repairs_our_objects_and_removes_stale_ones_of_our_shape_only(
        netns: NetNS, register: RegisterFn, logs: pytest.LogCaptureFixture) -> None:
    node = register()
    node.apply(snapshot(3, 4, 5))
    node.network.synced = True
    stale = str(nh_of(9))
    netns.ip("nexthop", "add", "id", stale, "via", "10.100.9.0", "dev", DEV, "onlink")
    netns.ip("nexthop", "add", "id", "77", "via", "10.100.77.0", "dev", DEV, "onlink")  # not our shape
    netns.ip("nexthop", "replace", "id", str(nh_of(3)), "via", "10.100.99.0", "dev", DEV, "onlink")
    netns.ip("nexthop", "del", "id", str(nh_of(4)))  # takes the route along
    logs.clear()
    assert node.reconcile() == 4
    expect_tunnel(netns, 3, 4, 5)
    assert nexthop_objects(netns) == ours(3, 4, 5) | {77: ("10.100.77.0", DEV, True)}
    assert route_forms(netns) == {f"10.100.{i}.0/24": nh_of(i) for i in (3, 4, 5)}
    repairs: list[Any] = [line.rsplit("(repair: ", 1)[1] for line in log_lines(logs, logging.WARNING)
                          if "(repair: " in line]
    assert sorted(repairs) == sorted([f"nexthop {nh_of(3)} wrong)", f"nexthop {nh_of(4)} missing)",
                                      f"stale nexthop {stale})", "route to 10.100.4.0/24 missing)"])
    assert f"{route_lines(4)[1]} (repair: route to 10.100.4.0/24 missing)" in log_lines(logs, logging.WARNING)
    assert node.reconcile() == 0
