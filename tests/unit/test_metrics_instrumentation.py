"""The daemon's code paths move the right metrics: lease events, event→kernel latency, repairs, the watch.

The kernel-operation counters are moved by the netlink transport itself, so they are proven against a real
kernel (tests/integration/test_netlink_metrics.py), not here against a fake that would count for itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network

from flannel import metrics
from flannel.backend.peer_events import apply_lease_events
from flannel.backend.route_network import RoutePlane
from flannel.backend.route_plane import PeerRoute, apply_ops
from flannel.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from tests.unit.test_etcd_manager_logic import FakeStore, P, manager, next_result
from tests.waiting import wait_until


class FakeNetlink:
    """Accepts every operation; records them. Counts nothing: that is the real transport's job."""

    def __init__(self) -> None:
        self.sent: list[object] = []

    def apply(self, ops: Sequence[object]) -> list[None]:
        self.sent.extend(ops)
        return [None] * len(ops)


def lease(n: int) -> Lease:
    return Lease(IPv4Network(f"10.5.{n}.0/24"), None,
                 LeaseAttrs(public_ip=IPv4Address(f"192.0.2.{n}"), backend_type="host-gw"))


def plane() -> RoutePlane:
    return RoutePlane(family=2, cluster=IPv4Network("10.5.0.0/16"), own_subnet=IPv4Network("10.5.0.0/24"), oif=2)


def counter(family: metrics.Counter, *labels: str) -> float:
    return family.labels(*labels).value


def test_applied_lease_events_are_counted_by_type_and_close_the_latency_window() -> None:
    nl, p = FakeNetlink(), plane()
    added, removed = counter(metrics.LEASE_EVENTS, "added"), counter(metrics.LEASE_EVENTS, "removed")
    observed = metrics.LEASE_EVENT_TO_KERNEL.labels().count
    metrics.EVENT_LATENCY.received()
    events = [LeaseEvent(EventType.ADDED, lease(1)), LeaseEvent(EventType.ADDED, lease(2)),
              LeaseEvent(EventType.REMOVED, lease(1))]
    apply_lease_events(nl, events, "host-gw", [p], {})  # type: ignore[arg-type]
    assert counter(metrics.LEASE_EVENTS, "added") - added == 2
    assert counter(metrics.LEASE_EVENTS, "removed") - removed == 1
    assert len(nl.sent) == 3  # two routes replaced, one deleted
    assert metrics.LEASE_EVENT_TO_KERNEL.labels().count == observed + 1


def test_only_reconcile_batches_count_as_repairs() -> None:
    nl = FakeNetlink()
    op = PeerRoute(IPv4Network("10.5.9.0/24"), IPv4Address("192.0.2.9"), oif=2).replace_op()
    before = counter(metrics.RECONCILE_REPAIRS, "route_replace")
    apply_ops(nl, [op])  # type: ignore[arg-type]
    assert counter(metrics.RECONCILE_REPAIRS, "route_replace") == before
    apply_ops(nl, [op, op], ["route to 10.5.9.0/24 missing", "again"])  # type: ignore[arg-type]
    assert counter(metrics.RECONCILE_REPAIRS, "route_replace") == before + 2


async def test_watch_errors_and_reconnects_are_counted() -> None:
    store = FakeStore()
    it = manager(store).watch_leases()
    await next_result(it)  # the snapshot
    lost = counter(metrics.WATCH_ERRORS, "unavailable")
    compacted = counter(metrics.WATCH_ERRORS, "compacted")
    reconnects = metrics.WATCH_RECONNECTS.labels().value
    opened = store.opened.count(f"{P}/subnets/")
    pending = asyncio.create_task(next_result(it))
    await wait_until(lambda: store.opened.count(f"{P}/subnets/") == opened + 1, "the watch after the snapshot")
    store.break_watches()
    await wait_until(lambda: metrics.WATCH_RECONNECTS.labels().value == reconnects + 1, "the lost watch resumed")
    store.raw_put(f"{P}/subnets/10.5.6.0-24", '{"PublicIP":"9.9.9.6"}', 0)
    result = await pending
    assert result.events and metrics.EVENT_LATENCY._since is not None  # received, not programmed yet
    metrics.EVENT_LATENCY.programmed()
    assert counter(metrics.WATCH_ERRORS, "unavailable") == lost + 1
    assert metrics.WATCH_RECONNECTS.labels().value == reconnects + 1
    store.raw_put(f"{P}/subnets/10.5.7.0-24", '{"PublicIP":"9.9.9.7"}', 0)
    store.compact()
    store.break_watches()  # it resumes at a compacted revision: a fresh listing follows
    result = await next_result(it)
    while result.snapshot is None:
        result = await next_result(it)
    assert counter(metrics.WATCH_ERRORS, "compacted") == compacted + 1
    await it.aclose()  # type: ignore[attr-defined]
