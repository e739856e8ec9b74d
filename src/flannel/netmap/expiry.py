"""When each peer's lease expires, for the map, without asking etcd about every lease every round.

In etcd mode every lease record is attached to an etcd lease of the TTL its node granted (flannel: 24 h), and a
node renews by writing its record again with a fresh one. So a record *seen being written* by the lease watch
expires the TTL after that moment (give or take the watch's delay): no request needed. Only leases that were
already there when the watch started (or re-listed after a compaction) have an unknown age; for those, the
remaining time is asked once per record (a ``get`` for its etcd lease id and one ``LeaseTimeToLive``), lazily,
at most ``budget`` per round, so a 5000-node cluster is looked up over a few minutes and never again unless a
record changes. A reservation (no etcd lease) never expires.

Kube mode has no lease expiry at all (a node's pod CIDR lasts as long as the node object): ``lookup`` is None
there, and the map says "n/a".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from flannel.errors import DatastoreUnavailableError
from flannel.lease import Lease
from flannel.subnet.manager import WatchResult

log = logging.getLogger(__name__)

Lookup = Callable[[str], Awaitable[float | None]]
"""Remaining seconds of a lease by its key (``10.244.3.0-24``); None for none (a reservation, or gone)."""
BUDGET = 16
"""Look-ups per round at most."""


@dataclass(frozen=True)
class Known:
    """The expiry of one lease record."""

    revision: int
    """The record's revision it belongs to (a new write makes it stale)."""
    at: float
    """Unix time it expires; 0 for never (a reservation) or unknown (a failed look-up)."""


class LeaseExpiry:
    """Expiry per peer lease, from the lease watch's writes and a few look-ups."""

    def __init__(self, ttl: float, lookup: Lookup | None, budget: int = BUDGET,
                 clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.lookup = lookup
        self.budget = budget
        self.clock = clock
        self.known: dict[str, Known] = {}
        self.pending: dict[str, int] = {}
        """Lease key to record revision, for records of unknown age."""

    @property
    def supported(self) -> bool:
        """Whether leases expire at all here (etcd mode)."""
        return self.lookup is not None

    def saw(self, result: WatchResult) -> None:
        """Take note of one step of the lease watch."""
        if not self.supported:
            return
        now = self.clock()
        for added, lease in result.events:
            self.pending.pop(lease.key, None)
            if added:
                self.known[lease.key] = Known(lease.revision, 0.0 if lease.reserved else now + self.ttl)
            else:
                self.known.pop(lease.key, None)
        if result.snapshot is not None:
            keys = {lease.key for lease in result.snapshot}
            for gone in self.known.keys() - keys:
                del self.known[gone]
            self.pending = {k: r for k, r in self.pending.items() if k in keys}
            for lease in result.snapshot:
                self._listed(lease)

    def _listed(self, lease: Lease) -> None:
        have = self.known.get(lease.key)
        if have is not None and have.revision == lease.revision:
            return
        if lease.reserved:
            self.known[lease.key] = Known(lease.revision, 0.0)
        else:
            self.known.pop(lease.key, None)
            self.pending[lease.key] = lease.revision

    async def resolve(self) -> int:
        """Look up at most ``budget`` records of unknown age; returns how many were asked about."""
        if self.lookup is None or not self.pending:
            return 0
        batch = list(self.pending.items())[:self.budget]
        for key, revision in batch:
            try:
                remaining = await self.lookup(key)
            except (DatastoreUnavailableError, OSError, TimeoutError) as exc:  # weather: try again next round
                log.debug("lease expiry of %s not looked up: %s", key, exc)
                return 0
            if self.pending.get(key) != revision:
                continue  # written meanwhile: the watch's event knows better
            del self.pending[key]
            self.known[key] = Known(revision, self.clock() + remaining if remaining else 0.0)
        return len(batch)

    def expiry(self, lease: Lease) -> float:
        """Unix time ``lease`` expires; 0 for never, unknown or not looked up yet."""
        have = self.known.get(lease.key)
        return have.at if have is not None and have.revision == lease.revision else 0.0
