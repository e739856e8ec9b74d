"""``KVStore`` over etcd's JSON gateway (``/v3/...``): the gRPC store's semantics without gRPC.

gRPC's library is most of flanneld's memory (issue #16: ``import grpc`` ~35 MiB of RSS against 8.4 MiB for a
bare interpreter). Every etcd >= 3.4 serves the same API as JSON over HTTP/1.1 on its client port, so this
store speaks that (``etcd_http``) and keeps what ``EtcdStore`` promises: endpoints in order with failover on a
connection failure, a bound on every request, TLS checked against each endpoint's own name, user and
password with a token fetched again when it expires, a watch from a revision that sends ``hasleader``, and
compaction, a cancelled watch or a store that went back in time reported as ``CompactedError``.

The default etcd client since issue #16; ``FLANNEL_ETCD_CLIENT=grpc`` chooses the gRPC store instead
(``etcd_choice.etcd_client_class``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from binascii import a2b_base64
from collections.abc import AsyncGenerator, Callable
from typing import Any

import h11

from flannel.errors import DatastoreUnavailableError
from flannel.subnet.etcd_failover import EndpointFailover
from flannel.subnet.etcd_http import DefiniteError, GatewayError, Member
from flannel.subnet.etcd_options import EtcdStoreOptions
from flannel.subnet.kvstore import KV, CompactedError, PutResult, WatchEvent, WatchEventType

LIST_PAGE = 500
"""Keys per range request of ``get_prefix``: 500 measured 0.2 MiB lower at a 5000-key re-list than 1000."""
DECODE_SLICE = 100
"""Keys of a listing decoded between two turns of the event loop (see ``scan_prefix``)."""
_FAILOVER_CODES = (4, 14, 16)
"""gRPC codes that make another member worth trying: deadline exceeded, unavailable, unauthenticated."""
_HASLEADER = [("Grpc-Metadata-Hasleader", "true")]
"""The gateway turns ``Grpc-Metadata-*`` headers into gRPC metadata: the watch then needs a leader, like Go's."""


class EtcdGatewayStore:
    """``KVStore`` on a real etcd cluster through its JSON gateway; construction does no I/O."""

    def __init__(self, options: EtcdStoreOptions) -> None:
        self._options = options
        self._failover = GatewayFailover(options)

    @classmethod
    async def open(cls, options: EtcdStoreOptions) -> EtcdGatewayStore:
        """A store that has reached etcd (and authenticated); ``DatastoreUnavailableError`` when that fails."""
        store = cls(options)
        await store.connect()
        return store

    async def connect(self) -> None:
        """Resolve the first endpoint that resolves and authenticate, as the gRPC store's dial does."""
        await self._failover.run(lambda member: member.ready(), "connect")

    async def get(self, key: str) -> KV | None:
        answer = await self._call("/v3/kv/range", {"key": _b64(key)}, f"get {key}")
        kvs = answer.get("kvs")
        return _kv(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        kvs: list[KV] = []
        revision = await self.scan_prefix(prefix, kvs.append)
        return kvs, revision

    async def scan_prefix(self, prefix: str, each: Callable[[KV], None]) -> int:
        """Listed in pages of ``LIST_PAGE`` keys, all at the first page's revision (one consistent snapshot): a
        5000-key answer is 1.6 MB of JSON and 5000 decoded dicts at once, the re-list peak of issue #16.

        The next page is asked for before this one is decoded, so that etcd prepares it meanwhile: serving a
        page and decoding its leases take about as long (5000 leases: ~100 ms each), and etcd runs on another
        core or host.
        """
        end = _b64_bytes(prefix_range_end(prefix.encode()))
        payload: dict[str, Any] = {"key": _b64(prefix), "range_end": end, "limit": str(LIST_PAGE)}
        what = f"list {prefix}"
        answer = await self._call("/v3/kv/range", payload, what)
        revision = _revision(answer)
        ahead: asyncio.Future[dict[str, Any]] | None = None
        try:
            while True:
                page = answer.pop("kvs", [])
                if page and answer.get("more"):
                    payload = {"key": _b64_bytes(a2b_base64(page[-1]["key"]) + b"\0"), "range_end": end,
                               "limit": str(LIST_PAGE), "revision": str(revision)}
                    ahead = asyncio.ensure_future(self._call("/v3/kv/range", payload, what))
                    await asyncio.sleep(0)  # the request goes out now, before the decoding below
                for first in range(0, len(page), DECODE_SLICE):
                    for item in page[first:first + DECODE_SLICE]:
                        each(_kv(item))
                    await asyncio.sleep(0)  # lets the request ahead go out, and its answer come in
                del page
                if ahead is None:
                    return revision
                answer, ahead = await ahead, None
        finally:
            if ahead is not None:  # ``each`` raised, or we were cancelled: the page asked for is not wanted
                ahead.cancel()
                ahead.add_done_callback(_discard)

    async def put(self, key: str, value: str, ttl: int | None) -> PutResult:
        lease_id, granted = await self._grant(ttl)
        answer = await self._call("/v3/kv/put", _put(key, value, lease_id), f"put {key}")
        return PutResult(_revision(answer), lease_id, granted)

    async def create(self, key: str, value: str, ttl: int | None) -> PutResult | None:
        compare = {"key": _b64(key), "result": "EQUAL", "target": "VERSION", "version": "0"}
        return await self._put_if(key, value, ttl, compare, f"create {key}")

    async def replace(self, key: str, value: str, ttl: int | None, mod_revision: int) -> PutResult | None:
        compare = {"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": str(mod_revision)}
        return await self._put_if(key, value, ttl, compare, f"replace {key}")

    async def revoke(self, lease_id: int) -> None:
        if lease_id:
            with contextlib.suppress(DatastoreUnavailableError):
                await self._call("/v3/lease/revoke", {"ID": str(lease_id)}, f"revoke {lease_id:x}")

    async def delete(self, key: str) -> bool:
        answer = await self._call("/v3/kv/deleterange", {"key": _b64(key)}, f"delete {key}")
        return int(answer.get("deleted", 0)) > 0

    async def time_to_live(self, lease_id: int) -> int:
        if lease_id == 0:
            return -1  # what etcd answers for "no lease"; saves a round trip
        return (await self.lease_times(lease_id))[0]

    async def lease_times(self, lease_id: int) -> tuple[int, int]:
        """``(remaining, granted)`` seconds of an etcd lease (``(-1, 0)`` for none or an expired one), for
        flannelctl. Not part of ``KVStore``."""
        if lease_id == 0:
            return -1, 0
        answer = await self._call("/v3/lease/timetolive", {"ID": str(lease_id)}, f"look up lease {lease_id:x}")
        return int(answer.get("TTL", -1)), int(answer.get("grantedTTL", 0))

    async def watch(self, key: str, start_revision: int, prefix: bool) -> AsyncGenerator[list[WatchEvent], None]:
        """One watch stream on the current endpoint; until its first answer, failing endpoints are skipped.

        Once responses flowed, a broken stream retires its endpoint and raises ``DatastoreUnavailableError``;
        the caller resumes from the revision it reached, and the new watch goes to the next endpoint.
        """
        what = f"watch {key}"
        create: dict[str, Any] = {"key": _b64(key), "start_revision": str(start_revision)}
        if prefix:
            create["range_end"] = _b64_bytes(prefix_range_end(key.encode()))
        failures: list[tuple[str, str]] = []
        for _ in range(max(len(self._failover.urls), 1)):
            member = self._failover.current()
            answered = False
            try:
                stream = member.stream("/v3/watch", {"create_request": create}, _HASLEADER)
                async with contextlib.aclosing(stream):
                    while True:
                        async with asyncio.timeout(None if answered else self._options.request_timeout + 1):
                            message = await anext(stream)
                        batch = _batch(message, key)
                        if not answered:
                            self._failover.answered()
                            _check_not_rewound(message, start_revision)
                        answered = True
                        yield batch
            except Exception as exc:
                reason = await self._failover.failed(member, exc, what)
                if answered:
                    raise DatastoreUnavailableError(f"etcd {member.url}: {what}: {reason}") from None
                failures.append((member.url, reason))
        raise self._failover.exhausted(what, failures)

    async def close(self) -> None:
        await self._failover.close()

    async def _call(self, path: str, payload: dict[str, Any], what: str) -> dict[str, Any]:
        return await self._failover.run(lambda member: member.call(path, payload), what)

    async def _grant(self, ttl: int | None) -> tuple[int, int]:
        if not ttl:
            return 0, 0
        answer = await self._call("/v3/lease/grant", {"TTL": str(ttl)}, f"grant a {ttl}s lease")
        return int(answer["ID"]), int(answer.get("TTL", 0))

    async def _put_if(self, key: str, value: str, ttl: int | None, compare: dict[str, Any],
                      what: str) -> PutResult | None:
        """One transaction: put ``value`` (on a fresh lease with ``ttl``) if ``compare`` holds."""
        lease_id, granted = await self._grant(ttl)
        txn = {"compare": [compare], "success": [{"request_put": _put(key, value, lease_id)}]}
        try:
            answer = await self._call("/v3/kv/txn", txn, what)
        except BaseException:
            await self.revoke(lease_id)
            raise
        if not answer.get("succeeded"):
            await self.revoke(lease_id)
            return None
        return PutResult(_revision(answer), lease_id, granted)


class GatewayFailover(EndpointFailover[Member, Member]):
    """``EndpointFailover`` with gateway members."""

    def _open(self, url: str) -> Member:
        return Member(url, self._options)

    async def _ready(self, conn: Member) -> Member:
        return conn

    async def _close(self, conn: Member) -> None:
        conn.close()

    def _unusable(self, exc: BaseException, conn: Member) -> str | None:
        return _connection_failure(exc, self.timeout)

    def _store_error(self, exc: BaseException, url: str, what: str) -> DatastoreUnavailableError | None:
        if isinstance(exc, GatewayError):
            return DatastoreUnavailableError(f"etcd {url}: {what}: {exc}")
        return exc if isinstance(exc, DatastoreUnavailableError) else None


def _connection_failure(exc: BaseException, timeout: float) -> str | None:
    """Why ``exc`` shows the endpoint unusable, so that the next one should be tried; ``None`` for other errors."""
    if isinstance(exc, DefiniteError):
        return None
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, OSError):  # refused, reset, TLS handshake (ssl.SSLError)
        return str(exc) or type(exc).__name__
    if isinstance(exc, h11.ProtocolError):
        return f"bad HTTP from etcd: {exc}"
    if isinstance(exc, GatewayError):
        return str(exc) if exc.code in _FAILOVER_CODES or (exc.code == 0 and exc.status >= 500) else None
    if isinstance(exc, DatastoreUnavailableError | StopAsyncIteration):
        return str(exc) or "stream ended"
    return None


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with ``prefix``": the prefix with its last byte below 0xff
    incremented (and what follows dropped); ``b"\\0"`` (to the end of the keyspace) when there is none."""
    for i in range(len(prefix) - 1, -1, -1):
        if prefix[i] < 0xFF:
            return prefix[:i] + bytes([prefix[i] + 1])
    return b"\0"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _b64_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _put(key: str, value: str, lease_id: int) -> dict[str, Any]:
    put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease_id:
        put["lease"] = str(lease_id)
    return put


def _revision(answer: dict[str, Any]) -> int:
    return int(answer.get("header", {}).get("revision", 0))


def _batch(message: dict[str, Any], key: str) -> list[WatchEvent]:
    """The events of one watch message; compaction and a server-side cancel end the watch. JSON leaves out
    every field at its default (``false``, ``0``, ``PUT``, empty)."""
    if "error" in message:
        error = message["error"]
        raise GatewayError(int(error.get("http_code", 0)), int(error.get("grpc_code", 0)), str(error.get("message")))
    result = message.get("result", {})
    if int(result.get("compact_revision", 0)) > 0:
        raise CompactedError(int(result["compact_revision"]))
    if result.get("canceled"):
        reason = result.get("cancel_reason") or "no reason given"
        raise DefiniteError(f"etcd cancelled the watch on {key}: {reason}")
    return [_event(ev) for ev in result.get("events", ())]


def _check_not_rewound(message: dict[str, Any], start_revision: int) -> None:
    """A store whose revision is behind where we resume was restored from an older snapshot: treated like
    compaction, the caller re-lists (as ``etcd_store``)."""
    current = _revision(message.get("result", {}))
    if 0 < current < start_revision - 1:
        raise CompactedError(current, f"store revision {current} is behind {start_revision - 1} (restored?)")


def _discard(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned request's outcome, so that asyncio does not report it as never retrieved."""
    if not future.cancelled():
        future.exception()


def _kv(item: dict[str, Any]) -> KV:
    # binascii directly: base64.b64decode's argument checks doubled the cost of a 5000-key listing
    get = item.get
    return KV(a2b_base64(get("key", "")).decode("utf-8", "replace"), a2b_base64(get("value", "")),
              int(get("mod_revision", 0)), int(get("lease", 0)), int(get("create_revision", 0)))


def _event(ev: dict[str, Any]) -> WatchEvent:
    kind = WatchEventType.DELETE if ev.get("type") == "DELETE" else WatchEventType.PUT
    return WatchEvent(kind, _kv(ev.get("kv", {})))
