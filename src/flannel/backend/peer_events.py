"""Lease events → kernel operations, the same for every backend that programs peers.

Each backend keeps, per address family, a *plane* holding the entries it wants for each remote lease
(vxlan: neighbour + FDB + route; host-gw and ipip: one route). Applying an event is then a diff between what
the lease wanted before and what it wants now, so replaying an event changes nothing. This module is that
loop, written once: the backend-type filter, the skip-one-bad-lease rule, and batching.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from flannel import metrics
from flannel.backend.route_plane import apply_ops
from flannel.errors import LeaseDecodeError
from flannel.lease import EventType, Lease, LeaseEvent
from flannel.netlink import Netlink

log = logging.getLogger(__name__)

OPS_PER_BATCH = 1024
"""Kernel operations per netlink batch: large enough to amortise the round trips, small enough that a snapshot
of thousands of leases does not hold every packed message in memory at once."""


class PeerPlane(Protocol):
    """One family's wanted entries per remote lease, and how to move between two wants."""

    @property
    def desired(self) -> dict[str, Any]:
        """Wanted entries by lease key."""
        ...

    def entries_for(self, lease: Lease) -> Any:
        """What ``lease`` needs on this plane (None for nothing); ``LeaseDecodeError``/``ValueError`` if unusable."""
        ...

    def ops_for_change(self, old: Any, new: Any) -> list[object]:
        """Netlink operations turning ``old`` into ``new`` (either may be None)."""
        ...


def apply_lease_events(nl: Netlink, events: Sequence[LeaseEvent], backend_type: str,
                       planes: Sequence[PeerPlane], names: dict[int, str]) -> None:
    """Apply ``events`` to every plane and send the resulting kernel operations in batches.

    A lease of another backend type is ignored, and what was programmed for it earlier is removed (upstream
    keeps it, so a peer that switched backends would keep stale entries). A lease whose data cannot be used is
    skipped alone, with a warning naming it; whatever it had programmed before stays.
    """
    ops: list[object] = []
    for ev in events:
        lease = ev.lease
        key = lease.key  # a property that formats the key each time: once per event, not four times
        (metrics.LEASE_ADDED if ev.type is EventType.ADDED else metrics.LEASE_REMOVED).inc()
        foreign = ev.type is EventType.ADDED and lease.attrs.backend_type != backend_type
        if foreign:
            log.info("ignoring non-%s lease %s (BackendType %r)", backend_type, key, lease.attrs.backend_type)
        for plane in planes:
            old = plane.desired.get(key)
            new = None
            if not (ev.type is EventType.REMOVED or foreign):
                try:
                    new = plane.entries_for(lease)
                except (LeaseDecodeError, ValueError) as exc:
                    log.warning("skipping lease %s: %s (its current entries are left as they are)", key, exc)
                    continue
            ops.extend(plane.ops_for_change(old, new))
            if new is None:
                plane.desired.pop(key, None)
            else:
                plane.desired[key] = new
        if len(ops) >= OPS_PER_BATCH:
            apply_ops(nl, ops, names=names)
            ops = []
    apply_ops(nl, ops, names=names)
    metrics.EVENT_LATENCY.programmed()
