"""The HTTP health server (spec §12.1): ``/healthz``, ``/readyz`` and, beyond upstream, ``/metrics``.

Upstream runs Go's ``net/http`` server; here a small server on raw non-blocking sockets answers the same
paths with the same bodies and status codes, without pulling ``http.server`` (and its imports) into a daemon
that must fit 50 MiB. One request per connection (``Connection: close``): probes and scrapers open a fresh
connection anyway.

The port is often reachable from the whole cluster network (upstream's default address is 0.0.0.0), so the
server is bounded: at most ``MAX_CONNECTIONS`` at once, each with ``HEAD_TIMEOUT`` to send its request head
(at most ``MAX_HEAD`` bytes) and ``WRITE_TIMEOUT`` to take the answer. When a new connection finds every slot
taken, the oldest one still sending its head is dropped for it, so idle connections can neither exhaust the
process' file descriptors (a full fd table also breaks iptables-restore, etcd and netlink) nor lock a
kubelet probe out. A failing ``accept`` (EMFILE, ENFILE) pauses accepting instead of spinning, and both are
logged once per ``LOG_INTERVAL`` with a count.

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
import socket
import time
from collections.abc import Callable

from flannel import metrics
from flannel.backoff import RepeatLimiter, repeats
from flannel.errors import FlannelError
from flannel.readiness import READINESS

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 3.0
"""Seconds requests in progress get to finish at shutdown (upstream: ``server.Shutdown`` with 3 s)."""
MAX_CONNECTIONS = 64
"""Connections served at once; a kubelet probes every few seconds and a scraper every 15 s or so."""
HEAD_TIMEOUT = 5.0
"""Seconds a client gets to send its request head (probes send it at once); a stalled one is dropped."""
WRITE_TIMEOUT = 10.0
"""Seconds a client gets to take the whole answer (a ``/metrics`` body is tens of KiB)."""
MAX_HEAD = 16 << 10
"""Longest request head accepted; a longer one is answered 431 (Go allows 1 MiB, probes send ~100 bytes)."""
ACCEPT_PAUSE = 1.0
"""Seconds accepting pauses after it failed for want of resources (unless a connection of ours ends first)."""
LOG_INTERVAL = 60.0
"""Seconds between two log lines about the same overload or accept failure."""
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_CLIENT_GONE = (errno.ECONNABORTED, errno.EPROTO, errno.ECONNRESET, errno.EPERM)

TEXT = "text/plain; charset=utf-8"
Handler = Callable[[str], tuple[int, str, bytes]]
"""Answers a path with status, content type and body: another page set served by the same bounded server
(the network map, ``flannel.netmap``)."""
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address, as Go's ``net.JoinHostPort``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HealthServer:
    """Answers health and metrics requests; ``/readyz`` reports ``readiness.READINESS``."""

    def __init__(self, listeners: list[socket.socket], address: str, handler: Handler | None = None) -> None:
        self.address = address
        self._handler = handler
        self._listeners = listeners
        self._conns: set[asyncio.Task[None]] = set()
        self._reading: dict[asyncio.Task[None], None] = {}
        """Connections still sending their head, oldest first: the ones dropped when every slot is taken."""
        self._paused: list[socket.socket] = []
        self._resume_timer: asyncio.TimerHandle | None = None
        self._log = RepeatLimiter(LOG_INTERVAL)
        for lsock in listeners:
            self._listen(lsock)

    def mark_ready(self) -> None:
        """subnet.env is written; open problems (``readiness``) still make ``/readyz`` answer 503."""
        READINESS.mark_started()

    @property
    def connections(self) -> int:
        """Connections open right now (for tests and debugging)."""
        return len(self._conns)

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for a path (any method, as upstream's handlers)."""
        if self._handler is not None:
            return self._handler(path)
        if path == "/healthz":
            return 200, TEXT, b"flanneld is running"
        if path == "/readyz":
            return (200 if READINESS.ready else 503), TEXT, READINESS.explain().encode()
        if path == "/metrics":
            return 200, metrics.CONTENT_TYPE, metrics.render()
        return 404, TEXT, b"404 page not found\n"  # Go's http.NotFound

    def _listen(self, lsock: socket.socket) -> None:
        """Accept from ``lsock`` whenever it is readable (a plain reader callback: no task to cancel, so a
        connection accepted at the moment of shutdown can never be dropped on the floor unclosed)."""
        asyncio.get_running_loop().add_reader(lsock.fileno(), self._accept, lsock)

    def _accept(self, lsock: socket.socket) -> None:
        """One connection per call: the loop calls again while more wait, and in between a connection
        dropped to make room has closed its descriptor."""
        try:
            sock, _ = lsock.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in _CLIENT_GONE:  # the client gave up before we got to it
                return
            # EMFILE and the like: retrying at once would spin on the same error, so stop accepting until
            # one of our connections ends (which frees an fd), or a moment has passed.
            self._warn(f"cannot accept connections: {exc.strerror or exc}; pausing")
            self._pause(lsock)
            return
        self._admit(sock)

    def _pause(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(lsock.fileno())
        self._paused.append(lsock)
        if self._resume_timer is None:
            self._resume_timer = loop.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        """Accept again on every paused listener (a connection ended, or the pause ran out)."""
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        paused, self._paused = self._paused, []
        for lsock in paused:
            if lsock.fileno() >= 0:
                self._listen(lsock)

    def _admit(self, sock: socket.socket) -> None:
        if len(self._conns) >= MAX_CONNECTIONS:
            victim = next(iter(self._reading), None)
            if victim is None:  # every slot is busy writing an answer: refuse this one
                sock.close()
                self._warn(f"{MAX_CONNECTIONS} connections busy; refused a new one")
                return
            del self._reading[victim]
            victim.cancel()
            self._warn(f"{MAX_CONNECTIONS} connections open; dropped the one idle the longest")
        sock.setblocking(False)
        task = asyncio.create_task(self._serve(sock))
        self._conns.add(task)
        self._reading[task] = None
        task.add_done_callback(lambda t: self._ended(t, sock))

    def _ended(self, task: asyncio.Task[None], sock: socket.socket) -> None:
        self._conns.discard(task)
        self._reading.pop(task, None)
        sock.close()  # a task cancelled before it ran never closed it; closing twice is harmless
        if self._paused:
            self._resume()

    def _warn(self, message: str) -> None:
        held = self._log.check(message)
        if held is not None:
            log.warning("health server on %s: %s%s", self.address, message, repeats(held))

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                method, path, status = await _read_head(loop, sock)
            self._reading.pop(task, None)  # answering now: no longer the one to drop
            if status:
                code, ctype, body = status, TEXT, f"{status} {_REASONS[status]}".encode()
            else:
                code, ctype, body = self.respond(path)
            async with asyncio.timeout(WRITE_TIMEOUT):
                await loop.sock_sendall(sock, _response(code, ctype, body, head_only=method == "HEAD"))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        except (TimeoutError, ConnectionError, EOFError) as exc:
            log.debug("health server: dropped a connection: %r", exc)
        finally:
            sock.close()

    async def close(self) -> None:
        """Stop listening; let requests in progress finish for up to ``SHUTDOWN_TIMEOUT`` s, then drop them."""
        loop = asyncio.get_running_loop()
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        for lsock in self._listeners:
            if lsock.fileno() >= 0 and lsock not in self._paused:
                loop.remove_reader(lsock.fileno())
            lsock.close()
        pending = set(self._conns)
        if pending:
            _, late = await asyncio.wait(pending, timeout=SHUTDOWN_TIMEOUT)
            for t in late:
                t.cancel()
            if late:
                log.error("Shutdown healthz server error: %d requests still in progress after %gs",
                          len(late), SHUTDOWN_TIMEOUT)
                await asyncio.wait(late)


async def start_health_server(host: str, port: int, handler: Handler | None = None,
                              what: str = "healthz") -> HealthServer:
    """Listen on ``host:port``; a ``FlannelError`` naming the address when that is impossible (port in use).

    ``handler`` replaces the health paths with its own (``what`` names the server in logs and errors).
    """
    address = join_host_port(host, port)
    log.info("Start %s server on %s", what, address)
    try:
        listeners = await _listen(host, port)
    except OSError as exc:
        why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise FlannelError(f"cannot start the {what} server on {address}: {why}") from None
    return HealthServer(listeners, address, handler)


async def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host`` (every address it resolves to; an empty host: all of both families)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            lsock = socket.socket(family, kind, proto)
            listeners.append(lsock)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # 0.0.0.0 and :: side by side, as asyncio and Go do
                lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            lsock.bind(addr)
            lsock.listen(128)
            lsock.setblocking(False)
    except OSError:
        for lsock in listeners:
            lsock.close()
        raise
    return listeners


async def _read_head(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> tuple[str, str, int]:
    """``(method, path, 0)`` from a request head, or ``("", "", status)`` for a request to refuse.

    The path loses its query string; the headers are read and ignored (nothing here depends on them).
    """
    try:
        head = await _head_bytes(loop, sock)
    except ValueError:
        return "", "", 431
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return "", "", 400
    method, target = parts[0], parts[1]
    if target.startswith(("http://", "https://")):  # absolute form: keep only the path
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    return method, target.split("?", 1)[0].split("#", 1)[0], 0


async def _head_bytes(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The request line and headers, up to the blank line; ValueError past ``MAX_HEAD`` bytes, EOFError when
    the client closes first. Blank lines before the request line are tolerated (RFC 9112 §2.2)."""
    buf = b""
    while True:
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise EOFError("connection closed before the end of the request head")
        buf = (buf + chunk).lstrip(b"\r\n")
        for end in (b"\r\n\r\n", b"\n\n"):
            if (i := buf.find(end)) >= 0 and i <= MAX_HEAD:
                return buf[:i]
        if len(buf) > MAX_HEAD:
            raise ValueError("request head too long")


def _response(code: int, ctype: str, body: bytes, head_only: bool) -> bytes:
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    head = (f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Date: {date}\r\nConnection: close\r\n")
    if code == 404:
        head += "X-Content-Type-Options: nosniff\r\n"
    return (head + "\r\n").encode("latin-1") + (b"" if head_only else body)
