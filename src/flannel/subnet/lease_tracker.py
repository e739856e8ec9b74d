"""Turning watch results into Added/Removed lease events for a backend (spec §5.2).

A backend needs events it can apply idempotently, but a watch sometimes delivers a whole snapshot (at
start, after compaction or a lost watch). ``LeaseTracker`` remembers the remote leases so that a snapshot
becomes the difference to what the backend already programmed, and so that a removal carries the attributes
(VtepMAC, public IP...) the backend needs to undo its state.

Three deliberate differences from upstream's ``LeaseWatcher``:

* a result with neither events nor a snapshot changes nothing (upstream treats it as an empty snapshot and
  removes every route: quirk §6.6/§17.5);
* in a snapshot, a lease present before and after whose attributes or revision changed is reported as
  Added, so a changed VtepMAC or public IP is reprogrammed (upstream reports nothing until the next renewal);
* a snapshot's removals come before its additions (upstream: additions first), see ``_reset``; its additions
  go oldest record first (by revision), so that the first holder of a contested subnet or VtepMAC is the one
  the ``LeaseGuard`` keeps, whatever the key order;
* with a ``LeaseGuard`` (every backend gives one), a lease that would disturb another is not passed on
  (``lease_guard.py``). ``leases`` still lists every remote lease known.
"""

from __future__ import annotations

import logging
from operator import attrgetter

from flannel.lease import EventType, Lease, LeaseEvent
from flannel.subnet.lease_guard import LeaseGuard
from flannel.subnet.manager import WatchResult

log = logging.getLogger(__name__)


class LeaseTracker:
    """The known remote leases of one network, and the events that keep a backend in step with them."""

    def __init__(self, own: Lease | None = None, guard: LeaseGuard | None = None) -> None:
        self._own = own
        self._leases: dict[str, Lease] = {}
        """By ``Lease.key``: one string per subnet pair, computed once and shared with the guard and the backend
        (a ``(subnet, ipv6_subnet)`` tuple was 56 bytes more per peer, and hashed in Python; issue #16). A dict
        keeps the key object of its first entry when a value is replaced: a tuple key kept every peer's first
        network objects alive through all its later leases (+2 MiB under churn); a key text (``_shared_key``) keeps
        nothing of the lease."""
        self.guard = guard
        """Decides which leases may reach the backend; None passes every one on."""

    @property
    def own(self) -> Lease | None:
        """This node's lease, whose events are filtered out."""
        return self._own

    @own.setter
    def own(self, lease: Lease | None) -> None:
        self._own = lease
        if lease is not None and self.guard is not None:
            self.guard.own_changed(lease)
        if lease is not None:
            self._leases = {k: v for k, v in self._leases.items() if not self.is_own(v)}

    @property
    def leases(self) -> list[Lease]:
        """The remote leases currently known."""
        return list(self._leases.values())

    def is_own(self, lease: Lease) -> bool:
        """Whether ``lease`` is this node's, by the subnets it carries (§5.2).

        A family the event does not carry is not compared: an IPv4-only event matches on IPv4 alone, a
        dual-stack event must match both.
        """
        own = self._own
        net = lease.subnet_int  # the numbers: ``subnet`` builds a network object on each read (issue #16)
        if own is None or (net is None and lease.ipv6_subnet is None):
            return False
        if net is not None and (net != own.subnet_int or lease.subnet_prefixlen != own.subnet_prefixlen):
            return False
        return lease.ipv6_subnet is None or lease.ipv6_subnet == own.ipv6_subnet

    def apply(self, result: WatchResult) -> list[LeaseEvent]:
        """Apply one watch result; return the events the backend must apply, in order."""
        events = self._reset(result.snapshot) if result.snapshot is not None else self._incremental(result)
        if self.guard is None:
            return events
        return self.guard.admit(events, snapshot=result.snapshot is not None)

    def _incremental(self, result: WatchResult) -> list[LeaseEvent]:
        out: list[LeaseEvent] = []
        for added, lease in result.events:
            if self.is_own(lease):
                continue
            key = self._shared_key(lease)
            if added:
                self._leases[key] = lease
                out.append(LeaseEvent(EventType.ADDED, lease))
                continue
            known = self._leases.pop(key, None)
            if known is None:
                log.error("removed lease %s was not known; passing on the bare removal", lease.key)
                out.append(LeaseEvent(EventType.REMOVED, lease))
            else:
                out.append(LeaseEvent(EventType.REMOVED, known))
        return out

    def _shared_key(self, lease: Lease) -> str:
        """``lease.key``, made the very string of the known lease of the same subnets if there is one (see
        ``Lease.share_key``): the guard and the backend then find their entries under the key object they hold."""
        known = self._leases.get(lease.key)
        if known is not None and known is not lease:
            lease.share_key(known)
        return lease.key

    def _reset(self, snapshot: tuple[Lease, ...]) -> list[LeaseEvent]:
        fresh: dict[str, Lease] = {}
        for lease in snapshot:
            if not self.is_own(lease):
                key = self._shared_key(lease)
                old = self._leases.get(key)
                # An unchanged lease is not passed on, so the guard and the backend keep the objects of the one
                # known: keeping that one here too, rather than its equal copy, leaves one lease per peer after a
                # re-list instead of two (about 0.5 KB a peer; issue #16).
                fresh[key] = old if old is not None and old == lease else lease
        # Removals first: a node that moved to a new subnet keeps its VtepMAC, and removing the old lease
        # after adding the new one would delete the neighbour entries just written.
        out = [LeaseEvent(EventType.REMOVED, old) for key, old in self._leases.items() if key not in fresh]
        # Sorting the leases, not the items: 5000 (key, lease) pairs were 0.3 MiB more at the peak (issue #16).
        for lease in sorted(fresh.values(), key=attrgetter("revision")):
            old = self._leases.get(lease.key)
            if old is None or old.attrs != lease.attrs or old.revision != lease.revision:
                out.append(LeaseEvent(EventType.ADDED, lease))
        self._leases = fresh
        return out
