"""The lease gate: a bad or hostile remote lease is skipped, the first holder keeps its entries."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannel import metrics
from flannel.config import NetworkConfig, check_network_config
from flannel.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.subnet.lease_guard import LeaseGuard
from flannel.subnet.lease_tracker import LeaseTracker
from flannel.subnet.manager import WatchResult

CONFIG = check_network_config(NetworkConfig(network=IPv4Network("10.244.0.0/16"), backend_type="vxlan"))
KUBE = NetworkConfig(network=IPv4Network("10.244.0.0/16"), backend_type="vxlan")
"""Kube mode's config: not defaulted, so no SubnetLen, and the podCIDRs may have any length."""
MAC_A, MAC_B, MAC_C = "aa:aa:aa:aa:aa:01", "aa:aa:aa:aa:aa:02", "aa:aa:aa:aa:aa:03"


def lease(v4: str | None, ip: str, mac: str = "", rev: int = 1, btype: str = "vxlan", v6: str | None = None,
          ip6: str | None = None, mac6: str = "") -> Lease:
    data = f'{{"VNI":1,"VtepMAC":"{mac}"}}' if mac else None
    data6 = f'{{"VNI":1,"VtepMAC":"{mac6}"}}' if mac6 else None
    attrs = LeaseAttrs(public_ip=IPv4Address(ip), public_ipv6=IPv6Address(ip6) if ip6 else None,
                       backend_type=btype, backend_data=data, backend_v6_data=data6)
    return Lease(IPv4Network(v4) if v4 else None, IPv6Network(v6) if v6 else None, attrs, revision=rev)


OWN = lease("10.244.1.0/24", "198.18.0.11", MAC_A)
REAL = lease("10.244.84.0/24", "198.18.0.12", MAC_B)
OTHER = lease("10.244.85.0/24", "198.18.0.13", MAC_C)
HOSTILE_25 = lease("10.244.84.0/25", "198.18.0.99", "aa:aa:aa:aa:aa:99", rev=7)
MAC_THIEF = lease("10.244.90.0/24", "198.18.0.99", MAC_B, rev=8)


def tracker(config: NetworkConfig = CONFIG, own: Lease = OWN, btype: str | None = "vxlan") -> LeaseTracker:
    return LeaseTracker(own, LeaseGuard.for_network(config, own, btype, vtep_macs=btype == "vxlan"))


def added(*leases: Lease) -> list[LeaseEvent]:
    return [LeaseEvent(EventType.ADDED, x) for x in leases]


def removed(*leases: Lease) -> list[LeaseEvent]:
    return [LeaseEvent(EventType.REMOVED, x) for x in leases]


def put(*leases: Lease) -> WatchResult:
    return WatchResult(events=tuple((True, x) for x in leases))


def delete(*leases: Lease) -> WatchResult:
    return WatchResult(events=tuple((False, Lease(x.subnet, x.ipv6_subnet)) for x in leases))


def rejected(reason: str) -> float:
    return metrics.LEASE_REJECTED.labels(reason).value


def test_a_record_inside_a_real_peers_subnet_is_skipped_with_a_warning_naming_both(
        caplog: pytest.LogCaptureFixture) -> None:
    t = tracker()
    assert t.apply(WatchResult(snapshot=(REAL, OTHER))) == added(REAL, OTHER)
    before = rejected("overlaps_lease")
    with caplog.at_level(logging.WARNING):
        assert t.apply(put(HOSTILE_25)) == []
    assert "10.244.84.0-25" in caplog.text and "10.244.84.0-24" in caplog.text
    assert rejected("overlaps_lease") == before + 1
    assert HOSTILE_25 in t.leases, "still known (flannel_known_peers), only not programmed"


def test_a_record_copying_a_peers_vtep_mac_with_another_public_ip_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    t = tracker()
    t.apply(WatchResult(snapshot=(REAL, OTHER)))
    before = rejected("duplicate_vtep_mac")
    with caplog.at_level(logging.WARNING):
        assert t.apply(put(MAC_THIEF)) == []
    assert "10.244.90.0-24" in caplog.text and "10.244.84.0-24" in caplog.text and MAC_B in caplog.text
    assert rejected("duplicate_vtep_mac") == before + 1


def test_a_node_that_moved_to_a_new_subnet_keeps_its_mac_and_public_ip_and_is_accepted() -> None:
    t = tracker()
    t.apply(WatchResult(snapshot=(REAL,)))
    moved = lease("10.244.91.0/24", "198.18.0.12", MAC_B, rev=9)
    assert t.apply(put(moved)) == added(moved)


def test_wrong_length_outside_network_and_own_overlap_are_skipped() -> None:
    t = tracker()
    t.apply(WatchResult(snapshot=()))
    counts = {r: rejected(r) for r in ("subnet_len", "outside_network", "overlaps_own")}
    short = lease("10.244.96.0/23", "198.18.0.20", "aa:aa:aa:aa:aa:20")
    outside = lease("10.245.1.0/24", "198.18.0.21", "aa:aa:aa:aa:aa:21")
    on_us = lease("10.244.0.0/23", "198.18.0.22", "aa:aa:aa:aa:aa:22")
    everything = lease("0.0.0.0/0", "198.18.0.23", "aa:aa:aa:aa:aa:23")
    assert t.apply(put(short, outside, on_us, everything)) == []
    assert rejected("subnet_len") == counts["subnet_len"] + 1
    assert rejected("outside_network") == counts["outside_network"] + 2
    assert rejected("overlaps_own") == counts["overlaps_own"] + 1


def test_replaying_events_changes_nothing_logs_nothing_counts_nothing(caplog: pytest.LogCaptureFixture) -> None:
    t = tracker()
    t.apply(WatchResult(snapshot=(REAL,)))
    t.apply(put(HOSTILE_25, MAC_THIEF))
    counts = (rejected("overlaps_lease"), rejected("duplicate_vtep_mac"))
    guard = t.guard
    assert guard is not None
    state = (dict(guard.held), dict(guard.skipped))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert t.apply(put(REAL, HOSTILE_25, MAC_THIEF)) == added(REAL)  # REAL's re-add is a no-op downstream
        assert t.apply(WatchResult(snapshot=(REAL, HOSTILE_25, MAC_THIEF))) == []
    assert caplog.text == ""
    assert (dict(guard.held), dict(guard.skipped)) == state
    assert (rejected("overlaps_lease"), rejected("duplicate_vtep_mac")) == counts
    # A renewal of the hostile record (new revision, same content) is not a new rejection either.
    assert t.apply(put(lease("10.244.84.0/25", "198.18.0.99", "aa:aa:aa:aa:aa:99", rev=50))) == []
    assert rejected("overlaps_lease") == counts[0]


def test_when_the_first_holder_goes_the_earliest_skipped_claimant_takes_its_place() -> None:
    t = tracker(config=KUBE)
    t.apply(WatchResult(snapshot=(REAL,)))
    small = lease("10.244.84.0/25", "198.18.0.30", "aa:aa:aa:aa:aa:30", rev=2)
    big = lease("10.244.84.0/23", "198.18.0.31", "aa:aa:aa:aa:aa:31", rev=3)
    assert t.apply(put(small, big)) == []
    assert t.apply(delete(REAL)) == removed(REAL) + added(small)
    assert t.apply(delete(small)) == removed(small) + added(big)
    assert t.apply(delete(big)) == removed(big)


def test_a_skipped_lease_that_is_removed_emits_nothing() -> None:
    t = tracker()
    t.apply(WatchResult(snapshot=(REAL,)))
    t.apply(put(HOSTILE_25))
    assert t.apply(delete(HOSTILE_25)) == []
    guard = t.guard
    assert guard is not None and guard.skipped == {}
    assert t.apply(delete(REAL)) == removed(REAL)


def test_an_update_that_would_collide_keeps_the_last_good_entries_until_it_is_fixed() -> None:
    t = tracker()
    t.apply(WatchResult(snapshot=(REAL, OTHER)))
    bad = lease("10.244.85.0/24", "198.18.0.13", MAC_B, rev=5)  # OTHER now claims REAL's MAC
    assert t.apply(put(bad)) == []
    good = lease("10.244.85.0/24", "198.18.0.13", "aa:aa:aa:aa:aa:77", rev=6)
    assert t.apply(put(good)) == added(good)
    assert t.apply(delete(good)) == removed(good)


def test_a_removal_of_a_holder_with_a_pending_bad_update_removes_what_was_programmed() -> None:
    t = tracker()
    t.apply(WatchResult(snapshot=(REAL, OTHER)))
    t.apply(put(lease("10.244.85.0/24", "198.18.0.13", MAC_B, rev=5)))
    assert t.apply(delete(OTHER)) == removed(OTHER)


def test_a_snapshot_keeps_the_holder_and_retries_the_skipped() -> None:
    t = tracker()
    t.apply(WatchResult(snapshot=(REAL, MAC_THIEF)))
    assert [ev.lease for ev in t.apply(WatchResult(snapshot=(MAC_THIEF,)))] == [REAL, MAC_THIEF]
    assert t.apply(WatchResult(snapshot=(MAC_THIEF,))) == []


def test_at_start_the_older_record_wins_whatever_the_key_order() -> None:
    t = tracker()
    older_thief = lease("10.244.2.0/24", "198.18.0.99", MAC_B, rev=1)
    newer_real = lease("10.244.84.0/24", "198.18.0.12", MAC_B, rev=2)
    assert t.apply(WatchResult(snapshot=(newer_real, older_thief))) == added(older_thief)


def test_leases_of_another_backend_claim_nothing_and_free_what_they_held() -> None:
    t = tracker(config=KUBE)
    t.apply(WatchResult(snapshot=(REAL,)))
    foreign = lease("10.244.84.0/25", "198.18.0.40", btype="host-gw")
    assert t.apply(put(foreign)) == added(foreign), "passed on: the backend logs and ignores it"
    t.apply(put(HOSTILE_25))
    switched = lease("10.244.84.0/24", "198.18.0.12", rev=3, btype="host-gw")
    assert t.apply(put(switched)) == added(switched) + added(HOSTILE_25)


def test_udp_guard_counts_every_lease_whatever_its_type() -> None:
    t = tracker(btype=None)
    t.apply(WatchResult(snapshot=(REAL,)))
    assert t.apply(put(lease("10.244.84.0/25", "198.18.0.40", btype=""))) == []


def test_subnet_len_is_checked_only_where_it_made_the_own_lease() -> None:
    kube = NetworkConfig(network=IPv4Network("10.244.0.0/16"), subnet_len=26)  # written, meaningless in kube mode
    assert LeaseGuard.for_network(kube, OWN).families[0].subnet_len is None
    assert LeaseGuard.for_network(CONFIG, OWN).families[0].subnet_len == 24


def test_ipv6_subnets_and_v6_vtep_macs_are_guarded_too() -> None:
    config = check_network_config(NetworkConfig(network=IPv4Network("10.244.0.0/16"), enable_ipv6=True,
                                                ipv6_network=IPv6Network("fd00:10:244::/56"), backend_type="vxlan"))
    own = lease("10.244.1.0/24", "198.18.0.11", MAC_A, v6="fd00:10:244:1::/64", ip6="2001:db8::11", mac6=MAC_A)
    real = lease("10.244.2.0/24", "198.18.0.12", MAC_B, v6="fd00:10:244:2::/64", ip6="2001:db8::12", mac6=MAC_C)
    t = tracker(config, own)
    assert t.apply(WatchResult(snapshot=(real,))) == added(real)
    wrong_len = lease("10.244.3.0/24", "198.18.0.13", "aa:aa:aa:aa:aa:33", v6="fd00:10:244:3::/80",
                      ip6="2001:db8::13")
    inside = lease("10.244.4.0/24", "198.18.0.14", "aa:aa:aa:aa:aa:44", v6="fd00:10:244:2::/64",
                   ip6="2001:db8::14")
    v6_thief = lease("10.244.5.0/24", "198.18.0.15", "aa:aa:aa:aa:aa:55", v6="fd00:10:244:5::/64",
                     ip6="2001:db8::99", mac6=MAC_C)
    assert t.apply(put(wrong_len, inside, v6_thief)) == []
    guard = t.guard
    assert guard is not None
    assert {k: r for k, (_, r) in guard.skipped.items()} == {
        wrong_len.key: "subnet_len", inside.key: "overlaps_lease", v6_thief.key: "duplicate_vtep_mac"}


def test_a_new_own_lease_is_guarded_from_then_on() -> None:
    t = tracker()
    t.apply(WatchResult(snapshot=()))
    t.own = lease("10.244.7.0/24", "198.18.0.11", MAC_A)
    assert t.apply(put(lease("10.244.7.0/25", "198.18.0.50", "aa:aa:aa:aa:aa:50"))) == []
    guard = t.guard
    assert guard is not None and [r for _, r in guard.skipped.values()] == ["overlaps_own"]
