"""The HTTP health server (spec §12.1): ``/healthz``, ``/readyz`` and, beyond upstream, ``/metrics``.

Upstream runs Go's ``net/http`` server; here a few dozen lines on ``asyncio.start_server`` answer the same
paths with the same bodies and status codes, without pulling ``http.server`` (and its imports) into a daemon
that must fit 50 MiB. One request per connection (``Connection: close``): probes and scrapers open a fresh
connection anyway, and it keeps the server trivially bounded.

It starts before the network config is read (spec §2 step 4), so ``/readyz`` answers 503 while flanneld
waits for the config or the lease; it flips to 200 once ``subnet.env`` is written, and back to 503 (with the
reason) while a dependency such as the datastore is away (``flannel.readiness``).
On shutdown it stops listening and gives requests in progress ``SHUTDOWN_TIMEOUT`` seconds, like upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time

from flannel import metrics
from flannel.errors import FlannelError
from flannel.readiness import READINESS

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 3.0
"""Seconds requests in progress get to finish at shutdown (upstream: ``server.Shutdown`` with 3 s)."""
REQUEST_TIMEOUT = 10.0
"""Seconds a client gets to send its request head; a stalled connection is dropped after that."""
MAX_HEAD = 16 << 10
"""Longest request head accepted; a longer one is answered 431 (Go allows 1 MiB, probes send ~100 bytes)."""

TEXT = "text/plain; charset=utf-8"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address, as Go's ``net.JoinHostPort``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HealthServer:
    """Answers health and metrics requests; ``/readyz`` reports ``readiness.READINESS``."""

    def __init__(self, server: asyncio.Server, address: str) -> None:
        self._server = server
        self.address = address
        self._conns: set[asyncio.Task[None]] = set()

    def mark_ready(self) -> None:
        """subnet.env is written; open problems (``readiness``) still make ``/readyz`` answer 503."""
        READINESS.mark_started()

    @property
    def ready(self) -> bool:
        return READINESS.ready

    @property
    def connections(self) -> int:
        """Connections accepted and not yet finished (requests in progress)."""
        return len(self._conns)

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for a path (any method, as upstream's handlers)."""
        if path == "/healthz":
            return 200, TEXT, b"flanneld is running"
        if path == "/readyz":
            return (200 if READINESS.ready else 503), TEXT, READINESS.explain().encode()
        if path == "/metrics":
            return 200, metrics.CONTENT_TYPE, metrics.render()
        return 404, TEXT, b"404 page not found\n"  # Go's http.NotFound

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                method, path, status = await _read_head(reader)
            if status:
                code, ctype, body = status, TEXT, f"{status} {_REASONS[status]}".encode()
            else:
                code, ctype, body = self.respond(path)
            writer.write(_response(code, ctype, body, head_only=method == "HEAD"))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("health server: dropped a connection: %r", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._conns.discard(task)

    async def close(self) -> None:
        """Stop listening; let requests in progress finish for up to ``SHUTDOWN_TIMEOUT`` s, then drop them."""
        self._server.close()
        pending = set(self._conns)
        if pending:
            _, late = await asyncio.wait(pending, timeout=SHUTDOWN_TIMEOUT)
            for t in late:
                t.cancel()
            if late:
                log.error("Shutdown healthz server error: %d requests still in progress after %gs",
                          len(late), SHUTDOWN_TIMEOUT)
                await asyncio.wait(late)
        await self._server.wait_closed()


async def start_health_server(host: str, port: int) -> HealthServer:
    """Listen on ``host:port``; a ``FlannelError`` naming the address when that is impossible (port in use)."""
    address = join_host_port(host, port)
    log.info("Start healthz server on %s", address)
    health: HealthServer | None = None

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert health is not None
        # close() cancels a request that outlives SHUTDOWN_TIMEOUT (and has logged it): an expected end, which
        # Python 3.11's streams would otherwise log again as an "Exception in callback" traceback.
        with contextlib.suppress(asyncio.CancelledError):
            await health._serve(reader, writer)

    try:
        server = await asyncio.start_server(on_connect, host or None, port, reuse_address=True)
    except OSError as exc:
        why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise FlannelError(f"cannot start the healthz server on {address}: {why}") from None
    health = HealthServer(server, address)
    return health


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, int]:
    """``(method, path, 0)`` from a request head, or ``("", "", status)`` for a request to refuse.

    The path loses its query string; the headers are read and ignored (nothing here depends on them).
    """
    try:
        head = await _head_bytes(reader)
    except ValueError:
        return "", "", 431
    line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return "", "", 400
    method, target = parts[0], parts[1]
    if target.startswith(("http://", "https://")):  # absolute form: keep only the path
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    return method, target.split("?", 1)[0].split("#", 1)[0], 0


async def _head_bytes(reader: asyncio.StreamReader) -> bytes:
    """The request line and headers, up to the blank line; ValueError past ``MAX_HEAD`` bytes."""
    lines: list[bytes] = []
    size = 0
    while True:
        line = await reader.readline()
        if not line:
            raise asyncio.IncompleteReadError(b"".join(lines), None)
        size += len(line)
        if size > MAX_HEAD:
            raise ValueError("request head too long")
        if line in (b"\r\n", b"\n"):
            if lines:
                return b"".join(lines)
            continue  # tolerated blank lines before the request line (RFC 9112 §2.2)
        lines.append(line)


def _response(code: int, ctype: str, body: bytes, head_only: bool) -> bytes:
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    head = (f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Date: {date}\r\nConnection: close\r\n")
    if code == 404:
        head += "X-Content-Type-Options: nosniff\r\n"
    return (head + "\r\n").encode("latin-1") + (b"" if head_only else body)
