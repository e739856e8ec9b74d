"""The storage interface under the etcd subnet manager: a handful of key/value operations and a watch.

Upstream splits its etcd code the same way (``registry.go`` under ``local_manager.go``): the allocation and
renewal logic sees only ``KVStore``, so tests replace the store with an in-memory one and keep the logic.
The real implementations are ``etcd_gateway.EtcdGatewayStore`` (etcd's JSON gateway, the default) and
``etcd_store.EtcdStore`` (gRPC, with ``FLANNEL_ETCD_CLIENT=grpc``); ``EtcdClient`` is what both offer.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class KV:
    """One key as stored in etcd."""

    key: str
    """The full key."""
    value: bytes
    """The raw value (empty for a deletion)."""
    mod_revision: int
    """Revision of the last change (for a deletion: the revision of the delete)."""
    lease_id: int = 0
    """etcd lease the key is attached to; 0 for none (a reservation)."""
    create_revision: int = 0
    """Revision that created the key: it changes only when the key is deleted and created again, which is
    how a node tells its own record, overwritten, from a record another node created after ours was gone."""


class WatchEventType(enum.Enum):
    """What happened to a watched key."""

    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by a watch."""

    type: WatchEventType
    """Put (created or modified) or delete (removed or expired)."""
    kv: KV
    """The key after the change; for a delete only key and mod_revision are meaningful."""


@dataclass(frozen=True, slots=True)
class PutResult:
    """Outcome of a successful write."""

    revision: int
    """Store revision of the write."""
    lease_id: int
    """etcd lease the key now hangs off; 0 when written without a TTL."""
    ttl: int
    """TTL granted by the server in seconds; 0 when written without a TTL."""


class CompactedError(Exception):
    """A watch's start revision was compacted away, or the store went back in time (restored from a
    snapshot): the caller must re-list and watch afresh."""

    def __init__(self, compact_revision: int, message: str = "") -> None:
        super().__init__(message or f"watch revision compacted (compact revision {compact_revision})")
        self.compact_revision = compact_revision


class KVStore(Protocol):
    """The storage operations the etcd subnet manager needs; nothing more."""

    async def get(self, key: str) -> KV | None:
        """The key, or ``None`` when absent."""
        ...

    async def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """Every key starting with ``prefix`` and the store revision the listing reflects."""
        ...

    async def scan_prefix(self, prefix: str, each: Callable[[KV], None]) -> int:
        """``get_prefix`` handing each key to ``each`` as soon as it is read; the listing's revision.

        A store that reads in pages drops each page's ``KV``s once handed over, so a caller that keeps
        something smaller (a decoded lease) never holds thousands of raw records at once (issue #16).
        """
        ...

    async def put(self, key: str, value: str, ttl: int | None) -> PutResult:
        """Write unconditionally; with ``ttl`` the key hangs off a freshly granted lease."""
        ...

    async def create(self, key: str, value: str, ttl: int | None) -> PutResult | None:
        """Write only if the key does not exist; ``None`` when it does (a lost race)."""
        ...

    async def replace(self, key: str, value: str, ttl: int | None, mod_revision: int) -> PutResult | None:
        """Write only if the key's last change is still ``mod_revision``; ``None`` when it is not.

        With ``ttl`` the key hangs off a freshly granted lease; a lost comparison revokes that lease again.
        """
        ...

    async def revoke(self, lease_id: int) -> None:
        """Revoke an etcd lease (and so delete the keys attached to it); best effort, errors are dropped."""
        ...

    async def delete(self, key: str) -> bool:
        """Delete the key; ``True`` when something was deleted."""
        ...

    async def time_to_live(self, lease_id: int) -> int:
        """Remaining seconds of an etcd lease; -1 for no lease or an expired one."""
        ...

    def watch(self, key: str, start_revision: int, prefix: bool) -> AsyncGenerator[list[WatchEvent], None]:
        """Changes from ``start_revision`` on; one (possibly empty) list per server response.

        Ends only by raising: ``CompactedError`` or ``DatastoreUnavailableError``.
        """
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


class EtcdClient(KVStore, Protocol):
    """``KVStore`` plus what the real etcd clients offer to tools (flannelctl): an explicit first connection
    and a lease's times."""

    async def connect(self) -> None:
        """Reach an endpoint (and authenticate); ``DatastoreUnavailableError`` when none answers."""
        ...

    async def lease_times(self, lease_id: int) -> tuple[int, int]:
        """``(remaining, granted)`` seconds of an etcd lease; ``(-1, 0)`` for no lease or an expired one."""
        ...
