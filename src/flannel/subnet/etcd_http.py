"""HTTP/1.1 to one etcd member's JSON gateway: h11 for the protocol, asyncio streams for the bytes.

``EtcdGatewayStore`` talks to etcd's gRPC-gateway (``/v3/...``, JSON) instead of gRPC, because gRPC's
library is most of flanneld's memory (issue #16). h11 is a sans-I/O HTTP/1.1 state machine (framing,
chunked bodies, keep-alive rules) that costs ~0.4 MiB; measured against it, ``httpcore`` imports ``ssl``
eagerly and needs ``anyio`` (+3 MiB over ``ssl``, before ``anyio``), ``aiohttp`` +15.3 MiB (docs/performance.md). What
is left to us is small: a socket per request in flight, a few idle ones kept, and the member's TLS and token.

A ``Member`` is one endpoint: its TLS context (built at first dial, server name checked against this
endpoint's own host), its auth token (fetched at first use, fetched again once when etcd says it expired),
and a small pool of keep-alive connections. Errors come out as ``OSError``/``h11.ProtocolError`` (the
connection failed) or ``GatewayError`` (etcd answered with an error), for the failover to sort.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import h11

from flannel.errors import DatastoreUnavailableError
from flannel.subnet.etcd_options import parse_endpoint, uses_tls

if TYPE_CHECKING:
    import ssl

    from flannel.subnet.etcd_options import EtcdStoreOptions

SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
UNAUTHENTICATED = 16
"""gRPC code of "etcdserver: invalid auth token" (an expired or revoked token)."""
_IDLE_KEPT = 4
_READ_SIZE = 256 * 1024


class GatewayError(Exception):
    """etcd answered a request with an error: the gRPC ``code`` it carries (0 when the body had none)."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class DefiniteError(DatastoreUnavailableError):
    """An etcd answer that every member would repeat (bad password, refused watch): no failover."""


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host
        self._h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, host: str, port: int, context: ssl.SSLContext | None) -> HttpConnection:
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if context is not None else None
            )
        except socket.gaierror as exc:
            raise DatastoreUnavailableError(f"cannot resolve {host}: {exc.strerror or exc}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:  # a watch may sit idle for hours: notice a peer that vanished
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for opt, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
                if hasattr(socket, opt):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
        return cls(reader, writer, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    async def send(self, path: str, body: bytes, headers: list[tuple[str, str]]) -> int:
        """Send a POST and read the response head; its status."""
        conn = self._h11
        out = conn.send(h11.Request(method="POST", target=path, headers=[
            ("Host", self._host), ("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers,
        ]))
        out = (out or b"") + (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
        self._writer.write(out)
        await self._writer.drain()
        event = await self._next()
        if not isinstance(event, h11.Response):
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
        return int(event.status_code)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body of the response being read, as it arrives."""
        while True:
            event = await self._next()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")

    async def body(self) -> bytearray:
        """The whole body, grown in place: a list of chunks joined at the end held a 5000-key listing twice."""
        body = bytearray()
        async for chunk in self.chunks():
            body += chunk
        return body

    def reusable(self) -> bool:
        """Ready for the next request (the server did not ask to close)."""
        try:
            self._h11.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        return True

    def closed_by_peer(self) -> bool:
        """The other side closed this idle connection already (its end of stream has arrived)."""
        return self._reader.at_eof() or self._writer.is_closing()

    def close(self) -> None:
        """Drop the connection now. An abort, not a graceful close: a TLS close waits for the peer's
        close_notify (up to 30 s), and a loop that ends meanwhile leaves the socket unclosed. Nothing we
        discard has data worth flushing."""
        self._writer.transport.abort()

    async def _next(self) -> Any:
        conn = self._h11
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await self._reader.read(_READ_SIZE)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    raise ConnectionResetError("connection closed by etcd")
                continue
            if isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("connection closed by etcd")
            return event


class Member:
    """One etcd endpoint through its gateway: TLS, token and a few kept connections."""

    def __init__(self, url: str, options: EtcdStoreOptions) -> None:
        self.url = url
        self.closed = False
        self._options = options
        self._idle: list[HttpConnection] = []
        self._busy: set[HttpConnection] = set()
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self._context: ssl.SSLContext | None = None
        self._host, self._port, self._tls, self._invalid = "", 0, False, ""
        try:
            ep = parse_endpoint(url)
        except ValueError as exc:  # reported by the first request, like any other failure of this endpoint
            self._invalid = str(exc)
        else:
            self._host, self._port = ep.host, ep.port
            self._tls = uses_tls(ep, bool(options.certfile and options.keyfile))

    async def ready(self) -> None:
        """What the gRPC store does when it dials: check that the host name resolves, and authenticate."""
        if self._invalid:
            raise DatastoreUnavailableError(self._invalid)
        try:
            await asyncio.get_running_loop().getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise DatastoreUnavailableError(f"cannot resolve {self._host}: {exc.strerror or exc}") from None
        await self._authenticated()

    async def call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` as JSON and return etcd's JSON answer; with credentials, re-authenticates once when
        etcd says the token expired."""
        token = await self._authenticated()
        try:
            return await self._call(path, payload, token)
        except GatewayError as exc:
            if exc.code != UNAUTHENTICATED or token is None:
                raise
        return await self._call(path, payload, await self._authenticated(stale=token))

    async def stream(self, path: str, payload: dict[str, Any],
                     headers: list[tuple[str, str]]) -> AsyncGenerator[dict[str, Any], None]:
        """POST ``payload`` and yield each newline-delimited JSON message of the streamed answer, on a
        connection of its own that is closed at the end."""
        token = await self._authenticated()
        conn = await self._connect()
        try:
            status = await conn.send(path, json.dumps(payload).encode(), self._headers(token) + headers)
            if status != 200:
                raise _error(status, await conn.body())
            pending = b""
            async for chunk in conn.chunks():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if pending.strip():  # etcd's last word (a refusal such as "no leader") comes without a newline
                yield json.loads(pending)
            raise ConnectionResetError("stream ended")
        except (OSError, h11.ProtocolError):
            if self.closed:  # retired under us (another request failed over): an error to resume from
                raise DatastoreUnavailableError("connection closed") from None
            raise
        finally:
            self._busy.discard(conn)
            conn.close()

    def close(self) -> None:
        """Close every connection, idle or in use (requests on them fail, and fail over)."""
        self.closed = True
        self._close_idle()
        for conn in self._busy:
            conn.close()
        self._busy.clear()

    def _close_idle(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def _call(self, path: str, payload: dict[str, Any], token: str | None) -> dict[str, Any]:
        while self._idle and self._idle[-1].closed_by_peer():  # a proxy or etcd closed it while idle: not a failure
            self._idle.pop().close()
        conn = self._idle.pop() if self._idle else await self._connect()
        self._busy.add(conn)
        done = False
        try:
            status = await conn.send(path, json.dumps(payload).encode(), self._headers(token))
            body = await conn.body()
            done = True
        except (OSError, h11.ProtocolError):
            if self.closed:
                raise DatastoreUnavailableError("connection closed") from None
            raise
        finally:
            self._busy.discard(conn)
            if done and not self.closed and len(self._idle) < _IDLE_KEPT and conn.reusable():
                self._idle.append(conn)
            else:
                conn.close()
        if status != 200:
            raise _error(status, body)
        answer: dict[str, Any] = json.loads(body)
        return answer

    async def _connect(self) -> HttpConnection:
        if self.closed or self._invalid:
            raise DatastoreUnavailableError(self._invalid or "connection closed")
        if self._tls and self._context is None:
            self._context = self._tls_context()
        conn = await HttpConnection.open(self._host, self._port, self._context)
        if self.closed:
            conn.close()
            raise DatastoreUnavailableError("connection closed")
        self._busy.add(conn)
        return conn

    def _headers(self, token: str | None) -> list[tuple[str, str]]:
        return [("Authorization", token)] if token else []

    async def _authenticated(self, stale: str | None = None) -> str | None:
        """The auth token (``None`` without credentials), fetched on first use or when ``stale`` is current."""
        user, password = self._options.username, self._options.password
        if not (user and password):
            return None
        async with self._auth_lock:
            if self._token is None or self._token == stale:
                try:
                    answer = await self._call("/v3/auth/authenticate",
                                              {"name": user, "password": password.reveal()}, None)
                except GatewayError as exc:
                    self._close_idle()  # nothing more to say to this member with these credentials
                    if exc.status >= 500:
                        raise
                    raise DefiniteError(f"etcd {self.url}: authenticate as {user!r}: {exc}") from None
                self._token = str(answer.get("token", ""))
            return self._token

    def _tls_context(self) -> ssl.SSLContext:
        """Verification against the CA (the system bundle by default) and this endpoint's host name; the client
        certificate when both files are given. Files are read at every new member, so renewed ones are used."""
        import ssl

        from flannel.tls_memory import client_context, shrink_tls_read_buffer

        shrink_tls_read_buffer()
        options = self._options
        try:
            # What ssl.create_default_context builds (certificates and host names verified), with server names
            # encoded without the idna codec (flannel.tls_memory).
            context = client_context()
            context.load_verify_locations(cafile=options.cafile or SYSTEM_CA_BUNDLE)
            if options.certfile and options.keyfile:
                context.load_cert_chain(options.certfile, options.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise DatastoreUnavailableError(f"cannot read etcd TLS file: {exc}") from None
        return context


def _error(status: int, body: bytes | bytearray) -> GatewayError:
    """etcd's JSON error (``{"error", "message", "code"}``) or, failing that, the HTTP status."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        answer = json.loads(body)
        if isinstance(answer, dict):
            detail = answer.get("error") or answer
            if isinstance(detail, dict):  # a streamed error wraps it once more
                return GatewayError(status, int(detail.get("code", 0)), str(detail.get("message", "")))
            return GatewayError(status, int(answer.get("code", 0)), str(answer.get("message") or detail))
    return GatewayError(status, 0, f"HTTP {status}")
