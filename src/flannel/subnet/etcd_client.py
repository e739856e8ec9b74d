"""How ``EtcdStore`` reaches etcd: one endpoint at a time, each verified against its own name, with failover.

One gRPC channel over the addresses of every endpoint can check only one TLS server name, so members with
their own certificates (kubeadm: each member's certificate names only that member) fail verification. Here
each endpoint gets its own channel, built when first needed with that endpoint's host name for TLS, and
only one channel exists at a time, which keeps memory flat. On a connection failure the channel is closed
and the next endpoint is dialled, its host name resolved afresh; the one that answers is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from etcd3aio import Etcd3Client, EtcdError, TokenRefresher
from etcd3aio._protobuf import WatchCreateRequest, WatchRequest, WatchResponse
from etcd3aio.errors import EtcdConnectionError, EtcdTransientError, EtcdUnauthenticatedError
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService
from etcd3aio.watch import WatchService

from flannel.errors import DatastoreUnavailableError
from flannel.subnet.etcd_failover import EndpointFailover
from flannel.subnet.etcd_options import Endpoint, parse_endpoint, uses_tls

if TYPE_CHECKING:
    from flannel.subnet.etcd_options import EtcdStoreOptions


SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# An unreachable member, or one that no longer takes our auth token (expired, revoked): another client is needed.
_FAILOVER_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAUTHENTICATED)


class DefiniteError(DatastoreUnavailableError):
    """An etcd answer that every member would repeat (bad password, refused watch): no failover."""


class LeaderWatchService(WatchService):
    """etcd3aio's watch service plus one single-stream watch that sends ``hasleader`` and ends on cancel.

    etcd3aio's own ``watch()`` sends only the auth token, reconnects internally, and keeps waiting after the
    server cancels a compacted watch, so the caller never learns of it. This method opens exactly one stream
    and hands every response back; ``EtcdStore.watch`` interprets them.
    """

    async def stream(self, key: bytes, range_end: bytes, start_revision: int) -> AsyncGenerator[WatchResponse, None]:
        ended = asyncio.Event()

        async def requests() -> AsyncIterator[WatchRequest]:
            create = WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision)
            yield WatchRequest(create_request=create)
            await ended.wait()  # keep the request side open; ending it lets grpc's sending task finish

        metadata = (*self._metadata, ("hasleader", "true"))
        call = self._stub.Watch(requests(), metadata=metadata)
        try:
            async for response in call:
                yield response
        finally:
            ended.set()  # a call that failed by itself is not cancelled by ``cancel()``, nor is its sender
            call.cancel()


class Client(Etcd3Client):
    """``Etcd3Client`` on one endpoint: our gRPC target, ``pick_first`` over its addresses, the leader watch."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(["127.0.0.1:2379"], **kwargs)
        manager = self._manager
        manager.target = target  # etcd3aio only builds ``ipv4:`` targets; we also need ``ipv6:``
        others = [opt for opt in manager.grpc_options if opt[0] != "grpc.lb_policy_name"]
        manager.grpc_options = [("grpc.lb_policy_name", "pick_first"), *others]

    async def connect(self) -> None:
        await super().connect()
        self.watch = LeaderWatchService(
            self._channel,
            max_attempts=self._rpc_max_attempts,
            reconnect_backoff_seconds=self._watch_reconnect_backoff_seconds,
            max_reconnect_backoff_seconds=self._watch_max_reconnect_backoff_seconds,
        )
        if self._token:
            self.watch.set_token(self._token)

    def services(self) -> tuple[KVService, LeaseService, LeaderWatchService]:
        """The services in use; ``DatastoreUnavailableError`` once the client was closed under the caller."""
        kv, lease, watch = self.kv, self.lease, self.watch
        if kv is None or lease is None or not isinstance(watch, LeaderWatchService):
            raise DatastoreUnavailableError("connection closed")
        return kv, lease, watch


class Connection:
    """A client for one endpoint: resolved, dialled and authenticated on first use; closed when retired."""

    def __init__(self, url: str, options: EtcdStoreOptions) -> None:
        self.url = url
        self.client: Client | None = None
        """The ready client; ``None`` until the first ``ready()`` and after ``close()``."""
        self.closed = False
        self._options = options
        self._refresher: TokenRefresher | None = None
        self._lock = asyncio.Lock()

    async def ready(self) -> Client:
        """The client, dialling (and authenticating) first if needed."""
        async with self._lock:
            if self.client is None and not self.closed:
                self.client, self._refresher = await self._dial()
                if self.closed:  # retired while dialling
                    await self.close()
            if self.client is None:
                raise DatastoreUnavailableError("connection closed")
            return self.client

    async def close(self) -> None:
        self.closed = True
        refresher, client = self._refresher, self.client
        self._refresher = self.client = None
        if refresher is not None:
            with contextlib.suppress(Exception):
                await refresher.__aexit__(None, None, None)
        if client is not None:
            await client.close()

    async def _dial(self) -> tuple[Client, TokenRefresher | None]:
        try:
            ep = parse_endpoint(self.url)
        except ValueError as exc:
            raise DatastoreUnavailableError(str(exc)) from None
        client = Client(await _grpc_target(ep), **_tls_args(self._options, ep))
        await client.connect()
        user, password = self._options.username, self._options.password
        if not (user and password):
            return client, None
        refresher = client.token_refresher(user, password.reveal())
        try:
            await refresher.__aenter__()
        except BaseException as exc:
            await client.close()
            if isinstance(exc, EtcdError | grpc.aio.AioRpcError) and _connection_failure(exc) is None:
                raise DefiniteError(f"etcd {self.url}: authenticate as {user!r}: {_detail(exc)}") from None
            raise
        return client, refresher


class Failover(EndpointFailover[Connection, Client]):
    """``EndpointFailover`` with gRPC clients: a call cancelled because another task closed its channel counts
    as a connection failure too."""

    caught = (Exception, asyncio.CancelledError)

    def _open(self, url: str) -> Connection:
        return Connection(url, self._options)

    async def _ready(self, conn: Connection) -> Client:
        return await conn.ready()

    async def _close(self, conn: Connection) -> None:
        await conn.close()

    def _unusable(self, exc: BaseException, conn: Connection) -> str | None:
        return _connection_failure(exc, conn, self.timeout)

    def _store_error(self, exc: BaseException, url: str, what: str) -> DatastoreUnavailableError | None:
        if isinstance(exc, EtcdError | grpc.aio.AioRpcError):
            return DatastoreUnavailableError(f"etcd {url}: {what}: {_detail(exc)}")
        return exc if isinstance(exc, DatastoreUnavailableError) else None


def _connection_failure(exc: BaseException, conn: Connection | None = None, timeout: float = 0) -> str | None:
    """Why ``exc`` shows the endpoint unusable, so that the next one should be tried; ``None`` for other errors."""
    if isinstance(exc, DefiniteError):
        return None
    if isinstance(exc, asyncio.CancelledError):  # grpc cancels the calls of a channel we closed
        task = asyncio.current_task()
        closed_under_us = conn is not None and conn.closed and task is not None and not task.cancelling()
        return "connection closed" if closed_under_us else None
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, grpc.aio.UsageError):  # another task's failure closed the channel under this call
        return "connection closed"
    if isinstance(exc, grpc.aio.AioRpcError):
        return _detail(exc) if exc.code() in _FAILOVER_CODES else None
    if isinstance(exc, EtcdConnectionError | EtcdTransientError | EtcdUnauthenticatedError | DatastoreUnavailableError):
        return str(exc)
    return None


def _detail(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name} {exc.details() or ''}".rstrip()
    return str(exc)


async def _grpc_target(ep: Endpoint) -> str:
    """An ``ipv4:``/``ipv6:`` target with the endpoint's current addresses (IPv4 preferred, one family)."""
    try:
        addrs = [ipaddress.ip_address(ep.host)]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise DatastoreUnavailableError(f"cannot resolve {ep.host}: {exc}") from None
        found = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        version = 4 if any(a.version == 4 for a in found) else 6
        addrs = [a for a in found if a.version == version]
        if not addrs:
            raise DatastoreUnavailableError(f"cannot resolve {ep.host}: no address") from None
    if addrs[0].version == 4:
        return "ipv4:" + ",".join(f"{a}:{ep.port}" for a in addrs)
    return "ipv6:" + ",".join(f"[{a}]:{ep.port}" for a in addrs)


def _tls_args(options: EtcdStoreOptions, ep: Endpoint) -> dict[str, Any]:
    """TLS settings for one endpoint as flanneld's Go client ends up with them (spec §6.9).

    A client certificate is used only when both ``certfile`` and ``keyfile`` are set. Like the Go etcd
    client, ``https://`` endpoints get TLS even without one (server verification only), ``http://`` endpoints
    never do, and a bare address does when a certificate is configured. The server certificate is checked
    against this endpoint's own host name. The files are read at every dial, so renewed ones are picked up.
    """
    have_cert = bool(options.certfile and options.keyfile)
    if not uses_tls(ep, have_cert):
        return {}
    ca_path = Path(options.cafile) if options.cafile else SYSTEM_CA_BUNDLE
    try:
        args: dict[str, Any] = {"ca_cert": ca_path.read_bytes()}
        if have_cert:
            args["cert_chain"] = Path(options.certfile).read_bytes()
            args["cert_key"] = Path(options.keyfile).read_bytes()
    except OSError as exc:
        raise DatastoreUnavailableError(f"cannot read etcd TLS file: {exc}") from None
    args["tls_server_name"] = ep.host
    return args
