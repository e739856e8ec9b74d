"""Endpoints in order, one connection at a time, a failing one handing over to the next: for both etcd clients.

Both clients (gRPC in ``etcd_client``, the JSON gateway in ``etcd_gateway``) share the rules of
``--etcd-endpoints``: requests go to the current endpoint only; a connection failure retires it and the next
one is tried (each endpoint once per request, each attempt bounded by the request timeout); the one that
answers is kept; a request that every endpoint failed names them all. Reachability is reported to
``flannel.readiness`` in one place. What a connection is, and which errors show an endpoint unusable, is each
client's own: the hooks below. No gRPC here, so the gateway client never loads it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar, Generic, Protocol, TypeVar

from flannel import metrics
from flannel.errors import DatastoreUnavailableError
from flannel.readiness import DATASTORE, READINESS
from flannel.subnet.etcd_options import INSECURE_WARNING, EtcdStoreOptions

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class EndpointConnection(Protocol):
    """A client's connection to one endpoint."""

    url: str


C = TypeVar("C", bound=EndpointConnection)
R = TypeVar("R")


class EndpointFailover(Generic[C, R]):
    """The endpoints in order, with one connection (``C``) to the current one; requests run on what that
    connection gives once ready (``R``: a dialled client)."""

    caught: ClassVar[tuple[type[BaseException], ...]] = (Exception,)
    """What a request attempt may raise that ``failed`` must judge (the gRPC client adds cancellation)."""

    def __init__(self, options: EtcdStoreOptions) -> None:
        self.urls: Sequence[str] = options.endpoints
        self.timeout = options.request_timeout
        self._options = options
        self._index = 0
        self._conn: C | None = None
        if not (options.certfile and options.keyfile):
            log.warning(INSECURE_WARNING)

    # -- the client's part ----------------------------------------------------------------------------------

    def _open(self, url: str) -> C:
        """A connection to ``url``, not dialled yet."""
        raise NotImplementedError

    async def _ready(self, conn: C) -> R:
        """``conn`` dialled (and authenticated), as requests use it."""
        raise NotImplementedError

    async def _close(self, conn: C) -> None:
        """Release ``conn``."""
        raise NotImplementedError

    def _unusable(self, exc: BaseException, conn: C) -> str | None:
        """Why ``exc`` shows the endpoint unusable (so the next one should be tried); ``None`` otherwise."""
        raise NotImplementedError

    def _store_error(self, exc: BaseException, url: str, what: str) -> DatastoreUnavailableError | None:
        """The error to raise for an answer every member would give (a refused password, a refused watch);
        ``None`` for an exception that is not the datastore's at all (a bug: raised as it is)."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------

    def current(self) -> C:
        """The connection to the current endpoint (created, not dialled, when there is none)."""
        if not self.urls:
            raise DatastoreUnavailableError("no etcd endpoints given")
        if self._conn is None:
            self._conn = self._open(self.urls[self._index])
        return self._conn

    async def run(self, op: Callable[[R], Awaitable[_T]], what: str) -> _T:
        """``op`` on the current endpoint, moving on after each connection failure (each endpoint once).

        Each attempt is bounded by the request timeout. Errors other than connection failures, and the last
        connection failure, are raised as ``DatastoreUnavailableError``.
        """
        failures: list[tuple[str, str]] = []
        for _ in range(max(len(self.urls), 1)):
            conn = self.current()
            try:
                async with asyncio.timeout(self.timeout + 1):
                    result = await op(await self._ready(conn))
            except self.caught as exc:
                failures.append((conn.url, await self.failed(conn, exc, what)))
                continue
            self.answered()
            return result
        raise self.exhausted(what, failures)

    @staticmethod
    def answered() -> None:
        """etcd answered a request: whatever made the node unready because of it is over."""
        READINESS.resolved(DATASTORE)

    async def failed(self, conn: C, exc: BaseException, what: str) -> str:
        """Retire ``conn`` after a connection failure and say what failed; raise any other error."""
        reason = self._unusable(exc, conn)
        if reason is None:
            error = self._store_error(exc, conn.url, what)
            if error is None:
                raise exc
            READINESS.problem(DATASTORE, str(error))
            if error is exc:
                raise exc
            raise error from None
        if conn is self._conn:
            self._conn = None
            self._index = (self._index + 1) % len(self.urls)
            if len(self.urls) > 1:
                metrics.DATASTORE_FAILOVERS.inc()
                log.warning("etcd %s failed (%s: %s); switching to %s", conn.url, what, reason, self.urls[self._index])
        await self._close(conn)
        return reason

    def exhausted(self, what: str, failures: Sequence[tuple[str, str]]) -> DatastoreUnavailableError:
        """The error for a request that failed on every endpoint; it names them all. The node is not ready."""
        if len(failures) == 1:
            url, reason = failures[0]
            error = DatastoreUnavailableError(f"etcd {url}: {what}: {reason}")
        else:
            tried = "; ".join(f"{url}: {reason}" for url, reason in failures)
            error = DatastoreUnavailableError(f"etcd {','.join(self.urls)}: {what}: no endpoint answered ({tried})")
        READINESS.problem(DATASTORE, str(error))
        return error

    async def close(self) -> None:
        """Close the current connection; the next request dials the current endpoint again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._close(conn)
