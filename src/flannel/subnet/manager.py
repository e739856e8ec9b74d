"""The ``SubnetManager`` interface: what the daemon and backends need from a datastore.

Two implementations exist upstream (etcd and the Kubernetes API); backends must not care which one is in
use, so they see only this protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from flannel.config import NetworkConfig
from flannel.lease import Lease, LeaseAttrs


@dataclass(frozen=True, slots=True)
class WatchResult:
    """One step of the all-leases watch: either incremental events or a full snapshot.

    A snapshot replaces everything known; ``LeaseTracker`` turns it into Added/Removed events by diffing.
    """

    events: tuple[tuple[bool, Lease], ...] = ()
    """Incremental changes: ``(added, lease)``; for a removal the lease carries only its subnets."""
    snapshot: tuple[Lease, ...] | None = None
    """Every current lease, after a (re)list; ``None`` for an incremental result."""


class SubnetManager(Protocol):
    """Lease storage and allocation."""

    async def get_network_config(self) -> NetworkConfig:
        """Read, parse and validate the network config; raise ``ConfigError`` naming the key on bad input."""
        ...

    async def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        """Get this node a lease (reusing its previous one when possible) published with ``attrs``."""
        ...

    def watch_leases(self) -> AsyncIterator[WatchResult]:
        """Every lease of the network: a snapshot first, then changes, with resync after lost watches."""
        ...

    async def complete_lease(self, lease: Lease) -> None:
        """Keep the own lease alive (renewal, own-key watch). Runs until cancelled."""
        ...

    async def close(self) -> None:
        """Release connections; the lease itself is left in place."""
        ...
