"""A thin async storage layer over etcd v3 (etcd3aio): the only module that talks to etcd.

The allocation and renewal logic in ``etcd_manager`` sees only the small ``kvstore.KVStore`` protocol,
so tests swap in an in-memory store and keep the real logic. Everything library-specific lives here and in
``etcd_client`` (endpoints, TLS, failover): the ``hasleader`` watch metadata, compaction reporting, and the
translation of etcd3aio/gRPC failures into ``DatastoreUnavailableError``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any

from etcd3aio import prefix_range_end
from etcd3aio._protobuf import Compare, WatchResponse
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService

from flannel.errors import DatastoreUnavailableError
from flannel.subnet.etcd_client import Client, DefiniteError, Failover
from flannel.subnet.etcd_options import EtcdStoreOptions, parse_endpoint
from flannel.subnet.kvstore import KV, CompactedError, KVStore, PutResult, WatchEvent, WatchEventType

__all__ = [
    "KV",
    "CompactedError",
    "EtcdStore",
    "EtcdStoreOptions",
    "KVStore",
    "PutResult",
    "WatchEvent",
    "WatchEventType",
    "parse_endpoint",
]


class EtcdStore:
    """``KVStore`` on a real etcd cluster.

    Construction does no I/O: the first endpoint is dialled (and the user authenticated) on first use. Every
    request runs on one endpoint at a time; on a connection failure the store moves to the next endpoint and
    stays there (``etcd_client.Failover``). Use ``await EtcdStore.open(options)`` to connect eagerly.
    """

    def __init__(self, options: EtcdStoreOptions) -> None:
        self._options = options
        self._failover = Failover(options)

    @classmethod
    async def open(cls, options: EtcdStoreOptions) -> EtcdStore:
        """A store already connected (and authenticated); ``DatastoreUnavailableError`` when that fails."""
        store = cls(options)
        await store.connect()
        return store

    async def connect(self) -> None:
        """Dial the first endpoint that can be dialled and authenticate, unless already done."""
        await self._failover.run(_nothing, "connect")

    async def get(self, key: str) -> KV | None:
        resp = await self._failover.run(lambda c: _kv_of(c).get(key, timeout=self._timeout), f"get {key}")
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        end = prefix_range_end(prefix)
        resp = await self._failover.run(lambda c: _kv_of(c).get(prefix, end, timeout=self._timeout), f"list {prefix}")
        return [_kv(item) for item in resp.kvs], int(resp.header.revision)

    async def scan_prefix(self, prefix: str, each: Callable[[KV], None]) -> int:
        """``get_prefix`` key by key (gRPC answers the whole range in one message anyway)."""
        kvs, revision = await self.get_prefix(prefix)
        for kv in kvs:
            each(kv)
        return revision

    async def put(self, key: str, value: str, ttl: int | None) -> PutResult:
        lease_id, granted = await self._grant(ttl)
        resp = await self._failover.run(
            lambda c: _kv_of(c).put(key, value, lease=lease_id, timeout=self._timeout), f"put {key}"
        )
        return PutResult(int(resp.header.revision), lease_id, granted)

    async def create(self, key: str, value: str, ttl: int | None) -> PutResult | None:
        return await self._put_if(key, value, ttl, KVService.txn_compare_version(key, 0), f"create {key}")

    async def replace(self, key: str, value: str, ttl: int | None, mod_revision: int) -> PutResult | None:
        compare = Compare(result=Compare.EQUAL, target=Compare.MOD, key=key.encode(), mod_revision=mod_revision)
        return await self._put_if(key, value, ttl, compare, f"replace {key}")

    async def revoke(self, lease_id: int) -> None:
        if lease_id:
            with contextlib.suppress(DatastoreUnavailableError):
                await self._failover.run(
                    lambda c: _lease_of(c).revoke(lease_id, timeout=self._timeout), f"revoke {lease_id:x}"
                )

    async def _put_if(self, key: str, value: str, ttl: int | None, compare: Compare, what: str) -> PutResult | None:
        """One transaction: put ``value`` (on a fresh lease with ``ttl``) if ``compare`` holds."""
        lease_id, granted = await self._grant(ttl)
        success = [KVService.txn_op_put(key, value, lease=lease_id)]
        try:
            resp = await self._failover.run(lambda c: _kv_of(c).txn([compare], success, timeout=self._timeout), what)
        except BaseException:
            await self.revoke(lease_id)
            raise
        if not resp.succeeded:
            await self.revoke(lease_id)
            return None
        return PutResult(int(resp.header.revision), lease_id, granted)

    async def delete(self, key: str) -> bool:
        resp = await self._failover.run(lambda c: _kv_of(c).delete(key, timeout=self._timeout), f"delete {key}")
        return int(resp.deleted) > 0

    async def time_to_live(self, lease_id: int) -> int:
        if lease_id == 0:
            return -1  # what etcd answers for "no lease"; saves a round trip
        resp = await self._failover.run(
            lambda c: _lease_of(c).time_to_live(lease_id, timeout=self._timeout), f"look up lease {lease_id:x}"
        )
        return int(resp.TTL)

    async def lease_times(self, lease_id: int) -> tuple[int, int]:
        """``(remaining, granted)`` seconds of an etcd lease (``(-1, 0)`` for none or an expired one): what an
        operator's tool shows as expiry and time since the last renewal. Not part of ``KVStore``."""
        if lease_id == 0:
            return -1, 0
        resp = await self._failover.run(
            lambda c: _lease_of(c).time_to_live(lease_id, timeout=self._timeout), f"look up lease {lease_id:x}"
        )
        return int(resp.TTL), int(resp.grantedTTL)

    async def watch(self, key: str, start_revision: int, prefix: bool) -> AsyncGenerator[list[WatchEvent], None]:
        """One watch stream on the current endpoint; until its first answer, failing endpoints are skipped.

        Once responses flowed, a broken stream retires its endpoint and raises ``DatastoreUnavailableError``;
        the caller resumes from the revision it reached, and the new watch goes to the next endpoint.
        """
        what = f"watch {key}"
        range_end = prefix_range_end(key) if prefix else b""
        failures: list[tuple[str, str]] = []
        for _ in range(max(len(self._failover.urls), 1)):
            conn = self._failover.current()
            answered = False
            try:
                async with asyncio.timeout(self._timeout + 1):
                    _, _, service = (await conn.ready()).services()
                async with contextlib.aclosing(service.stream(key.encode(), range_end, start_revision)) as stream:
                    while True:
                        async with asyncio.timeout(None if answered else self._timeout + 1):
                            resp = await anext(stream, None)
                        if resp is None:
                            raise DatastoreUnavailableError("stream ended")
                        batch = _batch(resp, key)
                        if not answered:
                            self._failover.answered()
                            _check_not_rewound(resp, start_revision)
                        answered = True
                        yield batch
            except (Exception, asyncio.CancelledError) as exc:
                reason = await self._failover.failed(conn, exc, what)
                if answered:
                    raise DatastoreUnavailableError(f"etcd {conn.url}: {what}: {reason}") from None
                failures.append((conn.url, reason))
        raise self._failover.exhausted(what, failures)

    async def close(self) -> None:
        await self._failover.close()

    @property
    def _timeout(self) -> float:
        return self._options.request_timeout

    async def _grant(self, ttl: int | None) -> tuple[int, int]:
        if not ttl:
            return 0, 0
        resp = await self._failover.run(
            lambda c: _lease_of(c).grant(ttl, timeout=self._timeout), f"grant a {ttl}s lease"
        )
        return int(resp.ID), int(resp.TTL)



async def _nothing(client: Client) -> None:
    """The request of ``connect``: being dialled (and authenticated) is all it takes."""


def _kv_of(client: Client) -> KVService:
    return client.services()[0]


def _lease_of(client: Client) -> LeaseService:
    return client.services()[1]


def _batch(resp: WatchResponse, key: str) -> list[WatchEvent]:
    """The events of one watch response; compaction and a server-side cancel end the watch."""
    if resp.compact_revision > 0:
        raise CompactedError(int(resp.compact_revision))
    if resp.canceled:
        reason = resp.cancel_reason or "no reason given"
        raise DefiniteError(f"etcd cancelled the watch on {key}: {reason}")
    return [_event(ev) for ev in resp.events]


def _check_not_rewound(resp: WatchResponse, start_revision: int) -> None:
    """A store whose revision is behind where we resume was restored from an older snapshot: its history
    is not the one we followed, and a watch from our revision would wait silently for revisions to come.
    Treated like compaction: the caller re-lists."""
    current = int(resp.header.revision)
    if 0 < current < start_revision - 1:
        raise CompactedError(current, f"store revision {current} is behind {start_revision - 1} (restored?)")


def _kv(kv: Any) -> KV:
    return KV(kv.key.decode("utf-8", "replace"), bytes(kv.value), int(kv.mod_revision), int(kv.lease),
              int(kv.create_revision))


def _event(ev: Any) -> WatchEvent:
    kind = WatchEventType.DELETE if ev.type == 1 else WatchEventType.PUT  # mvccpb.Event.DELETE == 1
    return WatchEvent(kind, _kv(ev.kv))
