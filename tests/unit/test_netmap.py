"""The network map without a browser: the JSON builder, the observer's view of the lease watch, the server's
answers, and the page being self-contained (no URL that would need the internet)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network

from flannel import metrics, netmap
from flannel.config import check_network_config, parse_network_config
from flannel.lease import Lease, LeaseAttrs
from flannel.netmap.model import DriftEntry, Inputs, build, drift_peer
from flannel.netmap.observer import Observer
from flannel.probe import ProbeResult
from flannel.subnet.manager import WatchResult

NOW = 1_800_000_000.0


def lease(n: int, mac: str = "") -> Lease:
    data = f'{{"VNI":1,"VtepMAC":"{mac}"}}' if mac else None
    return Lease(IPv4Network(f"10.244.{n}.0/24"), attrs=LeaseAttrs(IPv4Address(f"198.18.0.{10 + n}"), None, "vxlan",
                                                                    data), expiration=NOW + 600 * n)


def inputs(**kw: object) -> Inputs:
    base: dict[str, object] = {"own": lease(1), "own_expiry": NOW + 86000, "peers": [lease(3), lease(2)],
                               "network": "10.244.0.0/16", "backend_type": "vxlan", "ready": True,
                               "ready_reason": "flanneld is ready",
                               "peer_expiry": {"10.244.2.0-24": NOW + 1200, "10.244.3.0-24": NOW + 1800}}
    return Inputs(**(base | kw))  # type: ignore[arg-type]


def ok(peer: int) -> ProbeResult:
    return ProbeResult(f"10.244.{peer}.0-24", f"10.244.{peer}.0", True, 0.0004, 1450, "", NOW)


def test_every_lease_is_a_node_and_every_peer_an_edge_from_this_node() -> None:
    doc = build(inputs(probes={"10.244.2.0-24": ok(2)}), now=NOW)
    assert doc["self"] == "10.244.1.0-24" and doc["version"] == 1
    assert [n["key"] for n in doc["nodes"]] == ["10.244.1.0-24", "10.244.2.0-24", "10.244.3.0-24"]
    me, two, three = doc["nodes"]
    assert me["self"] and me["expires_in_seconds"] == 86000 and me["health"] == "ok"
    assert two == {"key": "10.244.2.0-24", "self": False, "subnet": "10.244.2.0/24", "ipv6_subnet": None,
                   "public_ip": "198.18.0.12", "public_ipv6": None, "backend_type": "vxlan", "reserved": False,
                   "expires_at": "2027-01-15T08:20:00Z", "expires_in_seconds": 1200, "lease_expires": True,
                   "health": "ok", "problems": []}
    assert three["health"] == "unknown"  # not probed yet
    edges = {e["to"]: e for e in doc["edges"]}
    assert edges["10.244.2.0-24"]["state"] == "ok" and edges["10.244.2.0-24"]["path_mtu_bytes"] == 1450
    assert edges["10.244.3.0-24"]["state"] == "unknown" and edges["10.244.3.0-24"]["reachable"] is None
    assert doc["healthy"]
    json.dumps(doc)  # plain values only


def test_an_unreachable_peer_is_red_with_the_reason() -> None:
    bad = ProbeResult("10.244.3.0-24", "10.244.3.0", False, None, None, "no reply", NOW)
    doc = build(inputs(probes={"10.244.2.0-24": ok(2), "10.244.3.0-24": bad}), now=NOW)
    three = doc["nodes"][2]
    assert three["health"] == "unreachable" and "10.244.3.0: no reply" in three["problems"][0]
    assert not doc["healthy"]


def test_a_host_gw_peer_without_pods_is_grey_and_the_map_stays_healthy() -> None:
    quiet = ProbeResult("10.244.3.0-24", "10.244.3.1", False, None, None, "no reply from 10.244.3.1, but the public "
                        "IP 198.18.0.13 answers", NOW, no_target=True)
    doc = build(inputs(backend_type="host-gw", probes={"10.244.2.0-24": ok(2), "10.244.3.0-24": quiet}), now=NOW)
    three = doc["nodes"][2]
    assert three["health"] == "no_target" and three["problems"] == [f"not probed: {quiet.error}"]
    assert {e["to"]: e["state"] for e in doc["edges"]}["10.244.3.0-24"] == "no_target"
    assert doc["healthy"]


def test_a_dual_stack_edge_carries_both_families_and_the_worse_state() -> None:
    v6_ok = ProbeResult("10.244.2.0-24", "fd00:10:244:2::", True, 0.0005, 1430, "", NOW, family=6)
    v6_bad = ProbeResult("10.244.3.0-24", "fd00:10:244:3::", False, None, None, "no reply", NOW, family=6)
    doc = build(inputs(probes={"10.244.2.0-24": ok(2), "10.244.3.0-24": ok(3)},
                       probes_v6={"10.244.2.0-24": v6_ok, "10.244.3.0-24": v6_bad}), now=NOW)
    two, three = doc["edges"]
    assert two["state"] == "ok" and two["address"] == "10.244.2.0" and two["ipv4"]["path_mtu_bytes"] == 1450
    assert two["ipv6"] == {"state": "ok", "reachable": True, "address": "fd00:10:244:2::", "rtt_seconds": 0.0005,
                           "path_mtu_bytes": 1430, "error": None, "probed_at": "2027-01-15T08:00:00Z"}
    assert three["state"] == "unreachable" and three["ipv4"]["state"] == "ok" and three["ipv6"]["error"] == "no reply"
    assert doc["nodes"][2]["health"] == "unreachable" and not doc["healthy"]


def test_drift_is_attributed_to_the_peer_it_concerns_and_stale_entries_to_this_node() -> None:
    entries = [DriftEntry("route to 10.244.2.0/24 missing", "ip route replace 10.244.2.0/24 via 10.244.2.0 dev "
                          "flannel.1 onlink"),
               DriftEntry("fdb entry 0a:58:0a:f4:03:00 missing", "bridge fdb replace 0a:58:0a:f4:03:00 dev flannel.1 "
                          "dst 198.18.0.13 self permanent"),
               DriftEntry("stale route to 10.244.250.0/24", "ip route del 10.244.250.0/24 dev flannel.1")]
    doc = build(inputs(drift_checked=True, drift=entries, peers=[lease(2), lease(3, "0a:58:0a:f4:03:00")]), now=NOW)
    assert [d["peer"] for d in doc["drift"]["entries"]] == ["10.244.2.0-24", "10.244.3.0-24", None]
    assert {n["key"]: n["health"] for n in doc["nodes"]} == {
        "10.244.1.0-24": "drift", "10.244.2.0-24": "drift", "10.244.3.0-24": "drift"}


def test_a_drift_entry_names_the_peer_by_its_subnet_not_a_prefix_of_it() -> None:
    entry = DriftEntry("route to 10.244.20.0/24 missing", "ip route replace 10.244.20.0/24 via 10.244.20.0")
    assert drift_peer(entry, [lease(2), lease(20)]) == "10.244.20.0-24"


def test_conflicts_win_over_everything_and_unreadiness_marks_this_node() -> None:
    doc = build(inputs(ready=False, ready_reason="flanneld is not ready: datastore: down",
                       conflicts=[("10.244.3.0-24", "overlaps_lease", "overlaps 10.244.2.0/24")],
                       drift=[DriftEntry("route to 10.244.3.0/24 missing", "")], drift_checked=True), now=NOW)
    health = {n["key"]: n["health"] for n in doc["nodes"]}
    assert health == {"10.244.1.0-24": "not_ready", "10.244.2.0-24": "unknown", "10.244.3.0-24": "conflict"}
    assert doc["conflicts"] == [{"peer": "10.244.3.0-24", "reason": "overlaps_lease",
                                 "message": "overlaps 10.244.2.0/24"}]


def test_a_reservation_never_expires() -> None:
    reserved = Lease(IPv4Network("10.244.9.0/24"), attrs=LeaseAttrs(IPv4Address("198.18.0.19")), reserved=True)
    node = build(inputs(peers=[reserved]), now=NOW)["nodes"][1]
    assert node["reserved"] and node["expires_at"] is None and node["expires_in_seconds"] is None


def test_the_page_is_self_contained() -> None:
    html = netmap.page().decode()
    assert "http://" not in html and "https://" not in html and "//" not in re.sub(r"//[^\n]*", "", html.replace(
        "://", ""))  # no protocol-relative URL either (comments aside)
    assert not re.search(r"""\b(src|href)\s*=""", html), "the page loads nothing: no src= or href="
    assert "@import" not in html and "url(" not in html
    assert 'fetch("map.json"' in html  # its one request, relative to where it was served from


def test_the_server_answers_the_page_the_json_and_404() -> None:
    respond = netmap.handler(lambda: {"nodes": []})
    code, ctype, body = respond("/")
    assert code == 200 and ctype.startswith("text/html") and body.startswith(b"<!DOCTYPE html>")
    assert respond("/map.json") == (200, "application/json", b'{"nodes":[]}')
    assert respond("/metrics")[0] == 404  # the map port serves the map only


async def test_the_observer_sees_the_lease_watch_it_passes_on() -> None:
    config = check_network_config(parse_network_config('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'))
    obs = Observer(config, lease(1), interval=5, drift=False)
    results = [WatchResult(snapshot=(lease(1), lease(2), lease(3))), WatchResult(events=((False, lease(3)),))]

    async def watch() -> AsyncIterator[WatchResult]:
        for r in results:
            yield r

    passed = [r async for r in obs.tap(watch())]
    assert passed == results  # unchanged, for the backend
    assert [p.key for p in obs.tracker.leases] == ["10.244.2.0-24"]
    assert [str(t.address) for t in obs.targets()] == ["10.244.2.0"]
    doc = obs.document()
    assert [n["key"] for n in doc["nodes"]] == ["10.244.1.0-24", "10.244.2.0-24"]


async def test_conflicting_leases_are_counted() -> None:
    config = check_network_config(parse_network_config('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'))
    obs = Observer(config, lease(1), interval=5, drift=False)
    inside = Lease(IPv4Network("10.244.2.0/25"), attrs=LeaseAttrs(IPv4Address("198.18.0.99"), None, "vxlan"))
    obs.tracker.apply(WatchResult(snapshot=(lease(2), inside)))
    obs.targets = lambda: []  # type: ignore[method-assign]  # no probes: conflicts only
    await obs.refresh()
    assert [(k, r) for k, r, _ in obs.conflicts] == [("10.244.2.0-25", "overlaps_lease")]
    assert metrics.LEASE_CONFLICTS.labels().get() == 1


# -- peers' lease expiry ---------------------------------------------------------------------------------------


def test_in_kube_mode_peer_expiry_is_not_applicable() -> None:
    doc = build(inputs(peer_expiry=None), now=NOW)
    assert [(n["lease_expires"], n["expires_in_seconds"]) for n in doc["nodes"][1:]] == [(False, None)] * 2


async def test_expiry_comes_from_the_watch_s_writes_and_once_per_listed_record() -> None:
    from flannel.netmap.expiry import LeaseExpiry

    asked: list[str] = []

    async def lookup(key: str) -> float | None:
        asked.append(key)
        return 500.0

    clock = [NOW]
    exp = LeaseExpiry(86400, lookup, budget=2, clock=lambda: clock[0])

    def rev(n: int, r: int, reserved: bool = False) -> Lease:
        return Lease(IPv4Network(f"10.244.{n}.0/24"), attrs=LeaseAttrs(IPv4Address(f"198.18.0.{n}")), revision=r,
                     reserved=reserved)

    exp.saw(WatchResult(snapshot=(rev(2, 5), rev(3, 6), rev(4, 7), rev(5, 8, reserved=True))))
    assert exp.expiry(rev(2, 5)) == 0.0 and len(exp.pending) == 3  # age unknown; the reservation never expires
    assert await exp.resolve() == 2 and asked == ["10.244.2.0-24", "10.244.3.0-24"]  # within the budget
    assert exp.expiry(rev(2, 5)) == NOW + 500
    clock[0] += 10
    exp.saw(WatchResult(events=((True, rev(4, 9)),)))  # renewed: a write seen by the watch, no look-up
    assert exp.expiry(rev(4, 9)) == NOW + 10 + 86400 and not exp.pending
    assert await exp.resolve() == 0 and len(asked) == 2
    exp.saw(WatchResult(snapshot=(rev(2, 5), rev(4, 9))))  # a re-list: known records are not asked again
    assert await exp.resolve() == 0 and exp.expiry(rev(2, 5)) == NOW + 500 and "10.244.3.0-24" not in exp.known
    assert exp.expiry(rev(2, 6)) == 0.0  # another revision of the record: not known


def test_without_a_lookup_nothing_is_tracked() -> None:
    from flannel.netmap.expiry import LeaseExpiry

    exp = LeaseExpiry(86400, None)
    exp.saw(WatchResult(events=((True, lease(2)),)))
    assert not exp.supported and exp.expiry(lease(2)) == 0.0
