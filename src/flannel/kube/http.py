"""Just enough HTTP/1.1 over asyncio streams for the Kubernetes API: keep-alive, Content-Length and chunked bodies.

A general HTTP library would cost more memory than all of flanneld's own state. The API server speaks plain
HTTP/1.1 (with ALPN ``http/1.1``), answers JSON, and streams watches as a chunked body of one JSON object per
line, so this module needs only: writing a request, reading a status line and headers, reading a body of known
length, reading a chunked body piece by piece (so a watch is never buffered whole), and keeping idle
connections for reuse. ``ssl`` is imported only when an https context is built, because flanneld's etcd mode
keeps the module out of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flannel.errors import ConfigError

if TYPE_CHECKING:
    import ssl

    from flannel.kube.config import KubeClientConfig

MAX_HEAD_LINES = 100
MAX_LINE = 16 * 1024 * 1024
"""Longest watch line (one JSON event) accepted; a node is a few KiB, so this only stops a runaway stream."""
KEEPALIVE_IDLE = 30
"""Seconds of silence before TCP keep-alive probes start (Go's dialer default), so a dead peer ends a watch."""


class ProtocolError(Exception):
    """The answer is not HTTP/1.1 as expected, or the connection ended in the middle of it."""


class ClosedBeforeResponse(ProtocolError):
    """The connection ended before a status line arrived: typically an idle keep-alive connection that the
    server had closed. A request on a reused connection that ends so is safe to send again."""


@dataclass
class Response:
    """A response's status line and headers; the body is read with ``Connection.read_body``/``iter_body``."""

    status: int
    phrase: str
    version: str
    headers: dict[str, str]
    """Lower-case names; repeated headers joined with ``", "``."""

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip() for t in self.headers.get("connection", "").lower().split(",")}
        return "keep-alive" in tokens if self.version == "HTTP/1.0" else "close" not in tokens

    @property
    def has_body(self) -> bool:
        return not (self.status in (204, 304) or 100 <= self.status < 200)


class Connection:
    """One HTTP/1.1 connection; requests on it are strictly one after another."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True

    async def send(self, head: bytes, body: bytes = b"") -> None:
        self.writer.write(head)
        if body:
            self.writer.write(body)
        await self.writer.drain()

    async def read_head(self) -> Response:
        """The next final response's status line and headers (1xx interim responses are skipped)."""
        while True:
            line = await self._line()
            if not line:
                raise ClosedBeforeResponse("connection closed before a response arrived")
            version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
            code, _, phrase = rest.partition(" ")
            if version not in ("HTTP/1.1", "HTTP/1.0") or not code.isdigit():
                raise ProtocolError(f"not an HTTP/1.1 status line: {line[:80]!r}")
            headers: dict[str, str] = {}
            for _ in range(MAX_HEAD_LINES):
                hline = await self._line()
                if hline in (b"\r\n", b"\n"):
                    break
                if not hline.endswith(b"\n"):
                    raise ProtocolError("connection closed in the response headers")
                name, sep, value = hline.decode("latin-1").partition(":")
                if not sep:
                    raise ProtocolError(f"malformed header line {hline[:80]!r}")
                key = name.strip().lower()
                headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
            else:
                raise ProtocolError("too many response headers")
            response = Response(int(code), phrase.strip(), version, headers)
            if not 100 <= response.status < 200:
                if not response.keep_alive:
                    self.reusable = False
                return response

    async def read_body(self, response: Response, max_bytes: int) -> bytearray:
        """The whole body (for ordinary requests; never for watches), gathered without a second full copy."""
        body = bytearray()
        async for piece in self.iter_body(response):
            if len(body) + len(piece) > max_bytes:
                self.reusable = False
                raise ProtocolError(f"response body larger than {max_bytes} bytes")
            body += piece
        return body  # json.loads takes a bytearray as it is

    async def iter_body(self, response: Response, deadline: float | None = None) -> AsyncIterator[bytes]:
        """The body piece by piece as it arrives; each read must finish by ``deadline`` (loop time) if given."""
        if not response.has_body:
            return
        if response.chunked:
            while True:
                size_line = await self._read(self._line(), deadline)
                if not size_line.endswith(b"\n"):
                    raise ProtocolError("connection closed in a chunked body")
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {size_line[:40]!r}") from None
                if size == 0:
                    while (await self._read(self._line(), deadline)) not in (b"\r\n", b"\n", b""):
                        pass  # trailers: ignored
                    return
                data = await self._read(self.reader.readexactly(size + 2), deadline)
                if not data.endswith(b"\r\n"):
                    raise ProtocolError("chunk not followed by CRLF")
                yield data[:-2]
        elif "content-length" in response.headers:
            try:
                remaining = int(response.headers["content-length"])
            except ValueError:
                raise ProtocolError("bad Content-Length") from None
            while remaining > 0:
                data = await self._read(self.reader.read(min(remaining, 262144)), deadline)
                if not data:
                    raise ProtocolError("connection closed before the end of the body")
                remaining -= len(data)
                yield data
        else:  # no framing: the body ends with the connection
            self.reusable = False
            while data := await self._read(self.reader.read(262144), deadline):
                yield data

    async def iter_lines(self, response: Response, deadline: float | None = None) -> AsyncIterator[bytes]:
        """The body split at newlines, one line at a time (empty lines skipped), never holding more than one
        line plus one chunk."""
        buf = bytearray()
        async for piece in self.iter_body(response, deadline):
            buf += piece
            start = 0
            while (end := buf.find(b"\n", start)) >= 0:
                line = bytes(buf[start:end]).strip()
                start = end + 1
                if line:
                    yield line
            del buf[:start]
            if len(buf) > MAX_LINE:
                raise ProtocolError(f"a line of the stream is longer than {MAX_LINE} bytes")
        if tail := bytes(buf).strip():
            yield tail

    def close(self) -> None:
        self.reusable = False
        if not self.writer.is_closing():
            self.writer.close()

    def abort(self) -> None:
        """Drop the connection at once (no FIN handshake): a read waiting on it ends with end-of-file."""
        self.reusable = False
        self.writer.transport.abort()

    @property
    def usable(self) -> bool:
        return self.reusable and not self.writer.is_closing() and not self.reader.at_eof()

    async def _line(self) -> bytes:
        try:
            return await self.reader.readline()
        except ValueError as exc:  # the stream's line limit was exceeded
            raise ProtocolError(f"response line too long: {exc}") from exc

    @staticmethod
    async def _read(aw: Awaitable[bytes], deadline: float | None) -> bytes:
        if deadline is None:
            return await aw
        async with asyncio.timeout_at(deadline):
            return await aw


class Endpoint:
    """One API server address plus its idle keep-alive connections."""

    def __init__(self, server: str, ssl_context: ssl.SSLContext | None, tls_server_name: str = "",
                 max_idle: int = 4) -> None:
        parts = urlsplit(server)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if parts.scheme == "https" else 80
        self.host_header = host if self.port == default else f"{host}:{self.port}"
        self.ssl_context = ssl_context
        self.server_hostname = (tls_server_name or self.host) if ssl_context is not None else None
        self.max_idle = max_idle
        self._idle: list[Connection] = []

    async def connect(self) -> Connection:
        """A new connection (TLS handshake included); the caller bounds the time."""
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.ssl_context, server_hostname=self.server_hostname
        )
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_IDLE)
        return Connection(reader, writer)

    def take_idle(self) -> Connection | None:
        """An idle connection that still looks open, or None."""
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                return conn
            conn.close()
        return None

    def release(self, conn: Connection) -> None:
        """Keep ``conn`` for the next request if it can carry one, else close it."""
        if conn.usable and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def build_ssl_context(cfg: KubeClientConfig) -> ssl.SSLContext:
    """The TLS context for ``cfg``: its CA (or the system CAs), its client certificate, HTTP/1.1 by ALPN.

    Imports ``ssl`` here and only here. Raises ``ConfigError`` naming the setting at fault.
    """
    try:
        import asyncio.sslproto as sslproto
        import ssl
    except ImportError as exc:
        raise ConfigError(f"{cfg.server}: https needs Python's ssl module, which this process has blocked",
                          field="server") from exc
    if getattr(sslproto, "ssl", None) is None:
        raise ConfigError(f"{cfg.server}: https needs Python's ssl module, but asyncio was imported while ssl was "
                          "blocked (see flannel.daemon.entry)", field="server")
    from flannel.tls_memory import client_context, shrink_tls_read_buffer

    shrink_tls_read_buffer()
    ctx = client_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if cfg.insecure_skip_tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif cfg.ca_file or cfg.ca_data:
        try:
            ctx.load_verify_locations(cafile=cfg.ca_file or None,
                                      cadata=cfg.ca_data.decode("ascii", "replace") if cfg.ca_data else None)
        except (ssl.SSLError, OSError, ValueError) as exc:
            what = cfg.ca_file or "certificate-authority-data"
            raise ConfigError(f"{cfg.source}: cannot load the CA certificate {what}: {exc}",
                              field="certificate-authority") from exc
    else:
        ctx.load_default_certs()
    if cfg.cert_file or cfg.cert_data:
        _load_client_cert(ctx, cfg)
    return ctx


def _load_client_cert(ctx: ssl.SSLContext, cfg: KubeClientConfig) -> None:
    """``SSLContext`` loads certificates only from files, so inline data goes through a private temp dir.

    ``tempfile`` is imported here: it loads ``shutil`` (with ``bz2`` and ``lzma``), 0.7 MiB that a client
    certificate given as a file, or a token, never needs (issue #16)."""
    import ssl
    import tempfile

    with tempfile.TemporaryDirectory(prefix="flannel-kube-") as tmp:
        cert, key = cfg.cert_file, cfg.key_file
        if not cert:
            cert = os.path.join(tmp, "cert.pem")
            _write_private(cert, cfg.cert_data)
        if not key and cfg.key_data:
            key = os.path.join(tmp, "key.pem")
            _write_private(key, cfg.key_data.reveal())
        try:
            ctx.load_cert_chain(cert, key or None)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{cfg.source}: cannot load the client certificate/key "
                              f"{cfg.cert_file or 'client-certificate-data'}: {exc}",
                              field="client-certificate") from exc


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
