"""Turning watch results into backend events (spec §5.2), with our deliberate fixes."""

from __future__ import annotations

import gc
import logging
import weakref
from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest

from flannel.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.subnet.lease_guard import Family, LeaseGuard
from flannel.subnet.lease_tracker import LeaseTracker
from flannel.subnet.manager import WatchResult


def lease(v4: str | None, ip: str = "192.168.0.1", v6: str | None = None, rev: int = 1, mac: str = "") -> Lease:
    data = f'{{"VtepMAC":"{mac}"}}' if mac else None
    attrs = LeaseAttrs(public_ip=IPv4Address(ip), backend_type="vxlan", backend_data=data)
    return Lease(IPv4Network(v4) if v4 else None, IPv6Network(v6) if v6 else None, attrs, revision=rev)


def bare(v4: str, v6: str | None = None) -> Lease:
    return Lease(IPv4Network(v4), IPv6Network(v6) if v6 else None)


def added(lease: Lease) -> LeaseEvent:
    return LeaseEvent(EventType.ADDED, lease)


def removed(lease: Lease) -> LeaseEvent:
    return LeaseEvent(EventType.REMOVED, lease)


OWN = lease("10.1.1.0/24", "192.168.0.100")
A = lease("10.1.2.0/24", "192.168.0.2")
B = lease("10.1.3.0/24", "192.168.0.3")


def test_first_snapshot_adds_every_remote_lease_but_not_our_own() -> None:
    t = LeaseTracker(OWN)
    assert t.apply(WatchResult(snapshot=(OWN, A, B))) == [added(A), added(B)]
    assert t.leases == [A, B]


def test_incremental_removal_carries_the_stored_attributes() -> None:
    t = LeaseTracker(OWN)
    t.apply(WatchResult(snapshot=(A,)))
    assert t.apply(WatchResult(events=((False, bare("10.1.2.0/24")),))) == [removed(A)]
    assert t.leases == []


def test_unknown_removal_is_passed_on_bare_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    t = LeaseTracker(OWN)
    with caplog.at_level(logging.ERROR):
        assert t.apply(WatchResult(events=((False, bare("10.1.9.0/24")),))) == [removed(bare("10.1.9.0/24"))]
    assert "10.1.9.0-24" in caplog.text


def test_incremental_added_replaces_the_stored_lease() -> None:
    t = LeaseTracker(OWN)
    t.apply(WatchResult(snapshot=(A,)))
    a2 = lease("10.1.2.0/24", "192.168.0.22", rev=5)
    assert t.apply(WatchResult(events=((True, a2),))) == [added(a2)]
    assert t.apply(WatchResult(events=((False, bare("10.1.2.0/24")),))) == [removed(a2)]


def test_own_lease_events_are_dropped() -> None:
    t = LeaseTracker(OWN)
    assert t.apply(WatchResult(events=((True, OWN), (False, bare("10.1.1.0/24"))))) == []


def test_a_result_with_neither_events_nor_snapshot_removes_nothing() -> None:
    t = LeaseTracker(OWN)
    t.apply(WatchResult(snapshot=(A, B)))
    assert t.apply(WatchResult()) == []
    assert t.leases == [A, B]


def test_an_empty_snapshot_removes_everything() -> None:
    t = LeaseTracker(OWN)
    t.apply(WatchResult(snapshot=(A, B)))
    assert t.apply(WatchResult(snapshot=())) == [removed(A), removed(B)]


def test_snapshot_diff_reports_only_changes_removals_first() -> None:
    t = LeaseTracker(OWN)
    t.apply(WatchResult(snapshot=(A,)))
    assert t.apply(WatchResult(snapshot=(B,))) == [removed(A), added(B)]
    assert t.apply(WatchResult(snapshot=(B,))) == []


def test_snapshot_reports_a_lease_whose_attributes_changed() -> None:
    """Deliberately unlike upstream: a new VtepMAC seen only in a resync must still be programmed."""
    t = LeaseTracker(OWN)
    old = lease("10.1.2.0/24", mac="aa:aa:aa:aa:aa:aa")
    t.apply(WatchResult(snapshot=(old,)))
    new = lease("10.1.2.0/24", mac="bb:bb:bb:bb:bb:bb")
    assert t.apply(WatchResult(snapshot=(new,))) == [added(new)]
    renewed = lease("10.1.2.0/24", mac="bb:bb:bb:bb:bb:bb", rev=9)
    assert t.apply(WatchResult(snapshot=(renewed,))) == [added(renewed)]


def test_own_filter_matches_families_the_event_carries() -> None:
    own = lease("10.1.1.0/24", v6="fd00:0:0:1::/64")
    t = LeaseTracker(own)
    assert t.is_own(bare("10.1.1.0/24"))  # IPv4-only event: IPv4 compared
    assert t.is_own(bare("10.1.1.0/24", "fd00:0:0:1::/64"))  # dual: both compared
    assert not t.is_own(bare("10.1.1.0/24", "fd00:0:0:2::/64"))
    assert t.is_own(lease(None, v6="fd00:0:0:1::/64"))  # IPv6-only event
    assert not t.is_own(bare("10.1.2.0/24"))
    assert not LeaseTracker().is_own(bare("10.1.1.0/24"))


def test_setting_the_own_lease_forgets_it_as_a_remote_one() -> None:
    t = LeaseTracker()
    t.apply(WatchResult(snapshot=(OWN, A)))
    t.own = OWN
    assert t.leases == [A]
    assert t.apply(WatchResult(snapshot=(OWN, A))) == []


def test_a_replaced_lease_leaves_nothing_of_itself_behind() -> None:
    """A dict keeps the key object of its first entry: a key made of the first lease's subnets kept them alive
    through every later lease of that peer (2 MiB at 5000 peers after 10 minutes of churn)."""
    tracker = LeaseTracker(OWN)
    first = lease("10.1.7.0/24", "192.168.0.7")
    tracker.apply(WatchResult(snapshot=(first,)))
    gone = weakref.ref(first.subnet)  # type: ignore[arg-type]
    del first
    tracker.apply(WatchResult(events=((True, lease("10.1.7.0/24", "192.168.0.8", rev=2)),)))
    gc.collect()
    assert gone() is None
    assert [str(held.attrs.public_ip) for held in tracker.leases] == ["192.168.0.8"]


def test_lease_keys_are_one_shared_string_per_subnet() -> None:
    """Every later lease of a peer, by event or by snapshot, carries the key object of the first one the tracker
    knew: the guard and the backend keep that object in their dicts, so a peer costs one key text."""
    tracker = LeaseTracker(OWN)
    first = lease("10.1.7.0/24")
    tracker.apply(WatchResult(snapshot=(first,)))
    moved = lease("10.1.7.0/24", "192.168.0.9", rev=2)
    assert moved.key == first.key and moved.key is not first.key  # made separately: equal, not the same
    [ev] = tracker.apply(WatchResult(events=((True, moved),)))
    assert ev.lease.key is first.key
    again = lease("10.1.7.0/24", "192.168.0.10", rev=3)
    [ev] = tracker.apply(WatchResult(snapshot=(again,)))
    assert ev.lease.key is first.key
    gone = lease("10.1.7.0/24", "192.168.0.10", rev=3)
    [ev] = tracker.apply(WatchResult(events=((False, gone),)))
    assert ev.type is EventType.REMOVED and ev.lease.key is first.key


def test_a_snapshot_keeps_the_known_object_of_an_unchanged_lease() -> None:
    """The guard and the backend hold the objects of the lease first passed on, and an unchanged lease is not
    passed on again: the tracker keeps that object too, so a re-list leaves one lease a peer, not two."""
    guard = LeaseGuard([Family(v6=False, network=IPv4Network("10.0.0.0/8"), own=None)])
    tracker = LeaseTracker(OWN, guard)
    first, other = lease("10.1.7.0/24", "192.168.0.7"), lease("10.1.8.0/24", "192.168.0.8")
    tracker.apply(WatchResult(snapshot=(first, other)))
    copy, moved = lease("10.1.7.0/24", "192.168.0.7"), lease("10.1.8.0/24", "192.168.0.9", rev=2)
    assert copy == first and copy is not first
    events = tracker.apply(WatchResult(snapshot=(copy, moved)))
    assert [ev.lease for ev in events] == [moved]
    held = {held.key: held for held in tracker.leases}
    assert held[first.key] is first and held[moved.key] is moved
    assert guard.held[first.key] is first
