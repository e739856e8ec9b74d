"""HTTP/1.1 framing for the fake API server, written independently of ``flannel.kube.http``.

The fake must not share code with the client it tests, or a framing bug would be invisible. Answers are
framed as Go's net/http frames kube-apiserver's: a small body gets Content-Length, a larger one (over Go's
2 KiB buffer) is sent chunked, and a watch is chunked with one JSON event per chunk.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.kube_fake.objects import bad_request, reason_phrase

GO_BUFFER = 2048
CHUNK = 32 * 1024
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024


@dataclass
class Request:
    """One parsed request."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        return "close" not in self.headers.get("connection", "").lower()


class BadRequestLine(Exception):
    """The request cannot be parsed; the connection is answered 400 and closed."""


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on the connection, or None when the client closed it between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadRequestLine("connection closed in the request headers") from exc
    except asyncio.LimitOverrunError as exc:
        raise BadRequestLine("request headers too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequestLine(f"malformed request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or name != name.strip():
            raise BadRequestLine(f"malformed header {line[:80]!r}")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise BadRequestLine("chunked request bodies are not supported by the fake")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequestLine("bad Content-Length") from None
    if not 0 <= length <= MAX_BODY:
        raise BadRequestLine("bad Content-Length")
    body = await reader.readexactly(length) if length else b""
    split = urlsplit(parts[1])
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    return Request(parts[0], parts[1], unquote(split.path), query, headers, body)


def head_bytes(code: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {code} {reason_phrase(code)}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def common_headers(content_type: str = "application/json") -> list[tuple[str, str]]:
    return [
        ("Audit-Id", str(uuid.uuid4())),
        ("Cache-Control", "no-cache, private"),
        ("Content-Type", content_type),
        ("Date", email.utils.formatdate(usegmt=True)),
        ("X-Kubernetes-Pf-Flowschema-Uid", "fake"),
        ("X-Kubernetes-Pf-Prioritylevel-Uid", "fake"),
    ]


def write_json(writer: asyncio.StreamWriter, code: int, obj: Any, keep_alive: bool = True,
               extra_headers: list[tuple[str, str]] | None = None) -> None:
    """One complete JSON answer (Go's encoder ends it with a newline)."""
    body = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    headers = common_headers() + (extra_headers or [])
    if not keep_alive:
        headers.append(("Connection", "close"))
    if len(body) <= GO_BUFFER:
        headers.append(("Content-Length", str(len(body))))
        writer.write(head_bytes(code, headers) + body)
        return
    headers.append(("Transfer-Encoding", "chunked"))
    writer.write(head_bytes(code, headers))
    for at in range(0, len(body), CHUNK):
        write_chunk(writer, body[at:at + CHUNK])
    end_chunks(writer)


def write_text(writer: asyncio.StreamWriter, code: int, text: str) -> None:
    body = text.encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
               ("Connection", "close")]
    writer.write(head_bytes(code, headers) + body)


def write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))


def end_chunks(writer: asyncio.StreamWriter) -> None:
    writer.write(b"0\r\n\r\n")


def int_param(query: dict[str, str], key: str, default: int) -> int:
    """An integer query parameter; a malformed one is a 400, as kube-apiserver answers."""
    if key not in query:
        return default
    try:
        return int(query[key])
    except ValueError:
        raise bad_request(f"invalid value for {key}: {query[key]!r}") from None
