"""A small threaded HTTP server for the fakes: bound inside a network namespace or on the loopback.

The fakes run in the test process (their state is plain Python the tests inspect and change), but listen
where the simulated hosts reach them: a socket stays in the namespace of the thread that created it, so the
listening socket is made with the thread inside the namespace (``flannel.netlink.nsenter.entered``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from flannel.netlink.nsenter import entered


@dataclass
class Request:
    """One request as the fake sees it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Header names lower-cased."""
    body: bytes
    host: str = ""


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


Handler = Callable[[Request], Response]


class FakeServer:
    """Serves ``handler`` on ``address:port`` (port 0: any), inside ``netns`` when given."""

    def __init__(self, handler: Handler, address: str, port: int = 0, netns: str | None = None) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        outer = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                req = Request(self.command, parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)),
                              {k.lower(): v for k, v in self.headers.items()}, body, self.headers.get("Host", ""))
                outer.requests.append(req)
                try:
                    resp = outer.handler(req)
                except Exception as exc:  # a bug in the fake must show, not hang the client
                    resp = Response(500, f"fake error: {exc!r}".encode(), {"Content-Type": "text/plain"})
                self.send_response(resp.status)
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(resp.body)))
                self.end_headers()
                self.wfile.write(resp.body)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

            def log_message(self, format: str, *args: object) -> None:
                pass

        with entered(netns) if netns else contextlib.nullcontext():
            self.httpd = ThreadingHTTPServer((address, port), _H, bind_and_activate=False)
            self.httpd.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.httpd.server_bind()
            self.httpd.server_activate()
        self.httpd.daemon_threads = True
        self.address = address
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


@contextlib.contextmanager
def serving(handler: Handler, address: str = "127.0.0.1", port: int = 0,
            netns: str | None = None) -> Iterator[FakeServer]:
    """A ``FakeServer`` for the body of a ``with``."""
    server = FakeServer(handler, address, port, netns)
    try:
        yield server
    finally:
        server.close()


def text(body: str, status: int = 200) -> Response:
    return Response(status, body.encode(), {"Content-Type": "text/plain"})
