"""An EC2 instance metadata service (IMDS) stand-in, served by the test process inside each host namespace.

moto serves no instance metadata, so the tests serve it themselves, at the standard ``169.254.169.254:80``,
on the loopback of the simulated host's own network namespace (never in the root namespace). The listening
socket is made by a short-lived thread that enters the namespace (``setns``), so one process serves every host
and the test can see each request. The protocol is AWS's published one:

* IMDSv2: ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` (1..21600) issues a token;
  a GET carries it in ``X-aws-ec2-metadata-token``. In ``v2`` mode a GET without a valid token gets 401, as
  on an instance with ``HttpTokens=required``.
* ``v1`` mode is an old service without the token API: the PUT gets 404 and GETs need no token.
* ``latest/meta-data/instance-id``, ``…/placement/region``, ``…/placement/availability-zone``, and
  ``…/iam/security-credentials/`` (404 unless a role is given, as on an instance without one).
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

IMDS_IP = "169.254.169.254"
CLONE_NEWNET = 0x40000000


@dataclass
class Instance:
    """What one host's metadata says, and what it was asked."""

    instance_id: str
    region: str
    mode: str = "v2"
    """``v2`` (tokens required) or ``v1`` (no token API)."""
    role: tuple[str, dict[str, str]] | None = None
    """An instance role: its name and the credential document served for it."""
    tokens: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, bool]] = field(default_factory=list)
    """(method, path, carried a valid token) of every request."""

    def answer(self, method: str, path: str, headers: Any) -> tuple[int, str]:
        token = headers.get("X-aws-ec2-metadata-token")
        valid = token is not None and token in self.tokens
        self.requests.append((method, path, valid))
        if method == "PUT":
            if path != "/latest/api/token" or self.mode == "v1":
                return 404, ""
            ttl = headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return 400, ""
            token = secrets.token_urlsafe(24)
            self.tokens.add(token)
            return 200, token
        if self.mode == "v2" and not valid:
            return 401, ""
        items = {
            "/latest/meta-data/instance-id": self.instance_id,
            "/latest/meta-data/placement/region": self.region,
            "/latest/meta-data/placement/availability-zone": self.region + "a",
        }
        if self.role is not None:
            name, doc = self.role
            items["/latest/meta-data/iam/security-credentials/"] = name
            items[f"/latest/meta-data/iam/security-credentials/{name}"] = json.dumps(doc)
        if items.get(path):
            return 200, items[path]
        return 404, ""


def _listen_in(netns: str, address: str, port: int) -> socket.socket:
    """A listening TCP socket made inside ``netns`` (by a thread that enters it; the caller's is untouched)."""
    out: list[socket.socket | BaseException] = []

    def enter() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(64)
            out.append(sock)
        except BaseException as exc:  # handed to the caller
            out.append(exc)

    thread = threading.Thread(target=enter)  # ends here: no thread is left in another namespace
    thread.start()
    thread.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


class MetadataStandIn:
    """Serves one ``Instance`` per host namespace; ``close()`` stops every server."""

    def __init__(self) -> None:
        self.instances: dict[str, Instance] = {}
        self._servers: list[ThreadingHTTPServer] = []

    def serve(self, netns: str, instance: Instance, address: str = IMDS_IP, port: int = 80) -> Instance:
        """Serve ``instance`` at ``address:port`` inside ``netns`` (the address must already be there)."""
        sock = _listen_in(netns, address, port)
        inst = instance

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                status, body = inst.answer(self.command, self.path, self.headers)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = _reply

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((address, port), Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._servers.append(server)
        self.instances[netns] = inst
        return inst

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()
