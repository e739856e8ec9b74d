"""A thin async storage layer over etcd v3 (etcd3aio): the only module that talks to etcd.

The allocation and renewal logic in ``etcd_manager`` sees only the small ``kvstore.KVStore`` protocol,
so tests swap in an in-memory store and keep the real logic. Everything library-specific lives here:
endpoint and TLS handling as flanneld's etcd client does it, the ``hasleader`` watch metadata,
compaction reporting, and the translation of etcd3aio/gRPC failures into ``DatastoreUnavailableError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import grpc.aio
from etcd3aio import Etcd3Client, EtcdError, TokenRefresher, prefix_range_end
from etcd3aio._protobuf import WatchCreateRequest, WatchRequest, WatchResponse
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService
from etcd3aio.watch import WatchService

from flannel.errors import DatastoreUnavailableError
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
]

log = logging.getLogger(__name__)

SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_T = TypeVar("_T")


@dataclass(frozen=True)
class EtcdStoreOptions:
    """How to reach etcd: flanneld's ``--etcd-*`` flags."""

    endpoints: Sequence[str] = ("http://127.0.0.1:2379",)
    """Endpoint URLs as flanneld takes them (``http://h:2379``, ``https://h:2379`` or bare ``h:2379``)."""
    keyfile: str = ""
    """Client private key (PEM) for TLS client authentication."""
    certfile: str = ""
    """Client certificate (PEM); TLS client auth needs both this and ``keyfile``."""
    cafile: str = ""
    """CA bundle to verify the server; the system bundle when empty."""
    username: str = ""
    """etcd user for authentication (with ``password``)."""
    password: str = ""
    """Password of ``username``."""
    request_timeout: float = 10.0
    """Upper bound in seconds for one request, retries included, so an unreachable etcd fails, not hangs."""

    def __post_init__(self) -> None:
        cleaned = tuple(e.strip() for e in self.endpoints if e.strip())
        object.__setattr__(self, "endpoints", cleaned)  # hashable, whatever sequence was given

    @classmethod
    def from_flag(cls, endpoints: str, **kwargs: Any) -> EtcdStoreOptions:
        """Build from the comma-separated ``--etcd-endpoints`` text."""
        return cls(endpoints=endpoints.split(","), **kwargs)


@dataclass(frozen=True)
class _Endpoint:
    scheme: str
    host: str
    port: int


def parse_endpoint(url: str) -> _Endpoint:
    """Split ``scheme://host:port`` (scheme optional, port 2379 by default); ``ValueError`` if malformed."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    if parts.scheme not in ("", "http", "https") or not parts.hostname:
        raise ValueError(f"invalid etcd endpoint {url!r}")
    return _Endpoint(parts.scheme, parts.hostname, parts.port or 2379)


def _needs_tls(ep: _Endpoint, have_cert: bool) -> bool:
    """The Go client's rule: http drops TLS, https requires it, a bare address uses it when configured."""
    if ep.scheme == "http":
        return False
    return ep.scheme == "https" or have_cert


class _LeaderWatchService(WatchService):
    """etcd3aio's watch service plus one single-stream watch that sends ``hasleader`` and ends on cancel.

    etcd3aio's own ``watch()`` sends only the auth token, reconnects internally, and keeps waiting after the
    server cancels a compacted watch, so the caller never learns of it. This method opens exactly one stream
    and hands every response back; ``EtcdStore.watch`` interprets them.
    """

    async def stream(self, key: bytes, range_end: bytes, start_revision: int) -> AsyncIterator[WatchResponse]:
        async def requests() -> AsyncIterator[WatchRequest]:
            create = WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision)
            yield WatchRequest(create_request=create)
            await asyncio.Future()  # keep the request side open

        metadata = (*self._metadata, ("hasleader", "true"))
        call = self._stub.Watch(requests(), metadata=metadata)
        try:
            async for response in call:
                yield response
        finally:
            call.cancel()


class _Client(Etcd3Client):
    """``Etcd3Client`` with the leader-requiring watch service and a gRPC target of our choosing."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(["127.0.0.1:2379"], **kwargs)
        self._manager.target = target  # etcd3aio only builds ``ipv4:`` targets; we also need ``ipv6:``

    async def connect(self) -> None:
        await super().connect()
        self.watch = _LeaderWatchService(
            self._channel,
            max_attempts=self._rpc_max_attempts,
            reconnect_backoff_seconds=self._watch_reconnect_backoff_seconds,
            max_reconnect_backoff_seconds=self._watch_max_reconnect_backoff_seconds,
        )
        if self._token:
            self.watch.set_token(self._token)


class EtcdStore:
    """``KVStore`` on a real etcd cluster.

    Construction does no I/O: the channel is opened (and the user authenticated) on first use, and again on
    the next use if that failed, so the daemon's retry loop covers an etcd that is not up yet. Use
    ``await EtcdStore.open(options)`` to connect eagerly and fail fast.
    """

    def __init__(self, options: EtcdStoreOptions) -> None:
        self._options = options
        self._where = ",".join(options.endpoints)
        self._client: _Client | None = None
        self._refresher: TokenRefresher | None = None
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, options: EtcdStoreOptions) -> EtcdStore:
        """A store already connected (and authenticated); ``DatastoreUnavailableError`` when that fails."""
        store = cls(options)
        await store.connect()
        return store

    async def connect(self) -> None:
        """Open the channel and authenticate, unless already done."""
        async with self._lock:
            if self._client is not None:
                return
            opts = self._options
            try:
                endpoints = [parse_endpoint(e) for e in opts.endpoints]
            except ValueError as exc:
                raise DatastoreUnavailableError(str(exc)) from None
            if not endpoints:
                raise DatastoreUnavailableError("no etcd endpoints given")
            client = _Client(await _grpc_target(endpoints, self._where), **_tls_args(opts, endpoints))
            await client.connect()
            if opts.username and opts.password:
                refresher = client.token_refresher(opts.username, opts.password)
                try:
                    what = f"authenticate as {opts.username!r}"
                    await _guard(refresher.__aenter__(), what, self._where, opts.request_timeout)
                except BaseException:
                    await client.close()
                    raise
                self._refresher = refresher
            self._client = client

    async def get(self, key: str) -> KV | None:
        kv, _ = await self._services()
        resp = await self._call(kv.get(key, timeout=self._timeout), f"get {key}")
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        kv, _ = await self._services()
        resp = await self._call(kv.get(prefix, prefix_range_end(prefix), timeout=self._timeout), f"list {prefix}")
        return [_kv(item) for item in resp.kvs], int(resp.header.revision)

    async def put(self, key: str, value: str, ttl: int | None) -> PutResult:
        kv, _ = await self._services()
        lease_id, granted = await self._grant(ttl)
        resp = await self._call(kv.put(key, value, lease=lease_id, timeout=self._timeout), f"put {key}")
        return PutResult(int(resp.header.revision), lease_id, granted)

    async def create(self, key: str, value: str, ttl: int | None) -> PutResult | None:
        kv, _ = await self._services()
        lease_id, granted = await self._grant(ttl)
        txn = kv.txn(
            [KVService.txn_compare_version(key, 0)],
            [KVService.txn_op_put(key, value, lease=lease_id)],
            timeout=self._timeout,
        )
        try:
            resp = await self._call(txn, f"create {key}")
        except BaseException:
            await self._revoke(lease_id)
            raise
        if not resp.succeeded:
            await self._revoke(lease_id)
            return None
        return PutResult(int(resp.header.revision), lease_id, granted)

    async def delete(self, key: str) -> bool:
        kv, _ = await self._services()
        resp = await self._call(kv.delete(key, timeout=self._timeout), f"delete {key}")
        return int(resp.deleted) > 0

    async def time_to_live(self, lease_id: int) -> int:
        if lease_id == 0:
            return -1  # what etcd answers for "no lease"; saves a round trip
        _, lease = await self._services()
        resp = await self._call(lease.time_to_live(lease_id, timeout=self._timeout), f"look up lease {lease_id:x}")
        return int(resp.TTL)

    async def watch(self, key: str, start_revision: int, prefix: bool) -> AsyncGenerator[list[WatchEvent], None]:
        await self._services()
        service = self._client.watch if self._client is not None else None
        if not isinstance(service, _LeaderWatchService):
            raise DatastoreUnavailableError("etcd store is closed")
        range_end = prefix_range_end(key) if prefix else b""
        try:
            async for resp in service.stream(key.encode(), range_end, start_revision):
                if resp.compact_revision > 0:
                    raise CompactedError(int(resp.compact_revision))
                if resp.canceled:
                    reason = resp.cancel_reason or "no reason given"
                    raise DatastoreUnavailableError(f"etcd cancelled the watch on {key}: {reason}")
                yield [_event(ev) for ev in resp.events]
        except grpc.aio.AioRpcError as exc:
            detail = f"{exc.code().name} {exc.details() or ''}".rstrip()
            raise DatastoreUnavailableError(f"etcd {self._where}: watch {key}: {detail}") from None
        raise DatastoreUnavailableError(f"etcd {self._where}: watch {key}: stream ended")

    async def close(self) -> None:
        async with self._lock:
            if self._refresher is not None:
                with contextlib.suppress(Exception):
                    await self._refresher.__aexit__(None, None, None)
                self._refresher = None
            if self._client is not None:
                await self._client.close()
                self._client = None

    async def _services(self) -> tuple[KVService, LeaseService]:
        if self._client is None:
            await self.connect()
        client = self._client
        if client is None or client.kv is None or client.lease is None:
            raise DatastoreUnavailableError("etcd store is closed")
        return client.kv, client.lease

    @property
    def _timeout(self) -> float:
        return self._options.request_timeout

    async def _call(self, call: Awaitable[_T], what: str) -> _T:
        return await _guard(call, what, self._where, self._timeout)

    async def _grant(self, ttl: int | None) -> tuple[int, int]:
        if not ttl:
            return 0, 0
        _, lease = await self._services()
        resp = await self._call(lease.grant(ttl, timeout=self._timeout), f"grant a {ttl}s lease")
        return int(resp.ID), int(resp.TTL)

    async def _revoke(self, lease_id: int) -> None:
        if lease_id:
            with contextlib.suppress(DatastoreUnavailableError):
                _, lease = await self._services()
                await self._call(lease.revoke(lease_id, timeout=self._timeout), f"revoke {lease_id:x}")


async def _guard(call: Awaitable[_T], what: str, where: str, timeout: float) -> _T:
    """Await ``call`` within ``timeout``, turning every library failure into ``DatastoreUnavailableError``."""
    try:
        async with asyncio.timeout(timeout + 1):
            return await call
    except TimeoutError:
        raise DatastoreUnavailableError(f"etcd {where}: {what}: no answer within {timeout:g}s") from None
    except EtcdError as exc:
        raise DatastoreUnavailableError(f"etcd {where}: {what}: {exc}") from None
    except grpc.aio.AioRpcError as exc:
        detail = f"{exc.code().name} {exc.details() or ''}".rstrip()
        raise DatastoreUnavailableError(f"etcd {where}: {what}: {detail}") from None


def _kv(kv: Any) -> KV:
    return KV(kv.key.decode("utf-8", "replace"), bytes(kv.value), int(kv.mod_revision), int(kv.lease))


def _event(ev: Any) -> WatchEvent:
    kind = WatchEventType.DELETE if ev.type == 1 else WatchEventType.PUT  # mvccpb.Event.DELETE == 1
    return WatchEvent(kind, _kv(ev.kv))


async def _grpc_target(endpoints: Sequence[_Endpoint], where: str) -> str:
    """Resolve the endpoints to addresses for gRPC's round-robin balancer (``ipv4:`` or ``ipv6:`` target).

    gRPC needs one address family per target; endpoints of the other family than the first are dropped
    with a warning.
    """
    loop = asyncio.get_running_loop()
    addrs: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    ports: list[int] = []
    for ep in endpoints:
        host = "127.0.0.1" if ep.host == "localhost" else ep.host
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            try:
                infos = await loop.getaddrinfo(host, ep.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise DatastoreUnavailableError(f"etcd {where}: cannot resolve {host}: {exc}") from None
            infos.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first
            addr = ipaddress.ip_address(infos[0][4][0])
        addrs.append(addr)
        ports.append(ep.port)
    version = addrs[0].version
    parts: list[str] = []
    for ep, addr, port in zip(endpoints, addrs, ports, strict=True):
        if addr.version != version:
            log.warning("etcd endpoint %s:%d skipped: cannot mix IPv4 and IPv6 endpoints", ep.host, ep.port)
            continue
        parts.append(f"{addr}:{port}" if version == 4 else f"[{addr}]:{port}")
    return f"ipv{version}:{','.join(parts)}"


def _tls_args(options: EtcdStoreOptions, endpoints: Sequence[_Endpoint]) -> dict[str, Any]:
    """TLS settings as flanneld's Go client ends up with them (spec §6.9).

    A client certificate is used only when both ``certfile`` and ``keyfile`` are set. Like the Go etcd
    client, ``https://`` endpoints get TLS even without one (server verification only), and ``http://``
    endpoints never do. One gRPC channel serves all endpoints, so TLS is on if any endpoint needs it.
    """
    have_cert = bool(options.certfile and options.keyfile)
    if not have_cert:
        log.warning("no certificate provided: connecting to etcd with http. This is insecure")
    tls = [_needs_tls(ep, have_cert) for ep in endpoints]
    if not any(tls):
        return {}
    if not all(tls):
        log.warning("etcd endpoints mix http and https; using TLS for all of them")
    ca_path = Path(options.cafile) if options.cafile else SYSTEM_CA_BUNDLE
    try:
        args: dict[str, Any] = {"ca_cert": ca_path.read_bytes()}
        if have_cert:
            args["cert_chain"] = Path(options.certfile).read_bytes()
            args["cert_key"] = Path(options.keyfile).read_bytes()
    except OSError as exc:
        raise DatastoreUnavailableError(f"cannot read etcd TLS file: {exc}") from None
    # The target is a list of resolved addresses; verify the certificate against the first endpoint's name.
    args["tls_server_name"] = endpoints[0].host
    return args
