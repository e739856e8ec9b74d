"""``KubeClient`` against tiny scripted HTTP servers: framing, watch decoding, connection reuse, time-outs, headers.

The scripted servers send exactly the bytes a test needs (lines split across chunks, a connection closed at
the worst moment), which the fake API server, being well-behaved, never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from flannel.kube.client import KubeClient
from flannel.kube.config import KubeClientConfig
from flannel.kube.errors import GoneError, KubeApiError, KubeUnavailableError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server on 127.0.0.1 running ``handler`` per connection; yields its URL and the requests it read."""
    requests: list[bytes] = []
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer, requests)
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # stopped at teardown; a cancelled handler would make Python 3.11's streams log a traceback
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", requests
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def read_request(reader: asyncio.StreamReader, requests: list[bytes]) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    request = head + (await reader.readexactly(length) if length else b"")
    requests.append(request)
    return request


def json_response(obj: object, status: str = "200 OK", extra: str = "") -> bytes:
    body = json.dumps(obj).encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(kind: str, name: str, rv: int) -> bytes:
    return json.dumps({"type": kind, "object": {"metadata": {"name": name, "resourceVersion": str(rv)}}}).encode()


def client(url: str, **kwargs: Any) -> KubeClient:
    return KubeClient(KubeClientConfig(server=url, **kwargs), request_timeout=2)


async def serve_watch(body_pieces: list[bytes]) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: list[bytes]) -> None:
        await read_request(reader, requests)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in body_pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)

    return handler


async def watch_all(c: KubeClient, rv: str = "5") -> list[tuple[str, str]]:
    return [(kind, obj["metadata"]["name"]) async for kind, obj in c.watch_nodes(rv, timeout_seconds=5)]


async def test_watch_decodes_events_split_across_and_packed_into_chunks() -> None:
    a, b, c_ = event("ADDED", "a", 6), event("MODIFIED", "b", 7), event("DELETED", "c", 8)
    pieces = [chunk(a[:10]), chunk(a[10:] + b"\n" + b + b"\n" + c_[:5]), chunk(c_[5:]), chunk(b"\n"), b"0\r\n\r\n"]
    async with scripted(await serve_watch(pieces)) as (url, requests), client(url) as c:
        assert await watch_all(c) == [("ADDED", "a"), ("MODIFIED", "b"), ("DELETED", "c")]
    line = requests[0].split(b"\r\n")[0].decode()
    assert line == ("GET /api/v1/nodes?allowWatchBookmarks=true&resourceVersion=5&timeoutSeconds=5&watch=true "
                    "HTTP/1.1")


@pytest.mark.parametrize(("code", "reason", "error"), [(410, "Expired", GoneError),
                                                       (500, "InternalError", KubeUnavailableError)])
async def test_watch_error_event_raises_the_typed_error(code: int, reason: str, error: type[Exception]) -> None:
    status = {"kind": "Status", "status": "Failure", "message": "too old resource version: 5 (9)", "reason": reason,
              "code": code}
    error_line = json.dumps({"type": "ERROR", "object": status}).encode() + b"\n"
    pieces = [chunk(event("ADDED", "a", 6) + b"\n"), chunk(error_line), b"0\r\n\r\n"]
    seen = []
    async with scripted(await serve_watch(pieces)) as (url, _), client(url) as c:
        with pytest.raises(error, match=r"WATCH /api/v1/nodes\?resourceVersion=5: .*too old resource version"):
            async for kind, _obj in c.watch_nodes("5"):
                seen.append(kind)
    assert seen == ["ADDED"]


async def test_watch_answered_410_raises_gone() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: list[bytes]) -> None:
        await read_request(reader, requests)
        writer.write(json_response({"kind": "Status", "code": 410, "reason": "Gone", "message": "gone"}, "410 Gone"))

    async with scripted(handler) as (url, _), client(url) as c:
        with pytest.raises(GoneError, match="410 Gone: gone"):
            await watch_all(c)


async def test_undecodable_watch_line_raises_kube_unavailable() -> None:
    async with scripted(await serve_watch([chunk(b"{not json}\n")])) as (url, _), client(url) as c:
        with pytest.raises(KubeUnavailableError, match="undecodable watch event"):
            await watch_all(c)


async def test_watch_cut_mid_stream_raises_kube_unavailable() -> None:
    pieces = [chunk(event("ADDED", "a", 6) + b"\n"), b'40\r\n{"ty']
    async with scripted(await serve_watch(pieces)) as (url, _), client(url) as c:
        with pytest.raises(KubeUnavailableError, match="watch connection lost"):
            await watch_all(c)


async def test_body_without_length_is_read_to_the_end_of_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: list[bytes]) -> None:
        await read_request(reader, requests)
        writer.write(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"metadata": {"name": "n"}}')

    async with scripted(handler) as (url, _), client(url) as c:
        assert await c.get_node("n") == {"metadata": {"name": "n"}}
        assert await c.get_node("n") == {"metadata": {"name": "n"}}  # a new connection, not the closed one


async def test_idle_connection_closed_by_the_server_is_replaced_once() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: list[bytes]) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader, requests)
        writer.write(json_response({"n": connections}))
        await writer.drain()
        if connections == 1:
            await read_request(reader, requests)  # the second request arrives; the server closes instead

    async with scripted(handler) as (url, requests), client(url) as c:
        assert await c.get_node("a") == {"n": 1}
        assert await c.get_node("b") == {"n": 2}
    assert len(requests) == 3 and connections == 2


async def test_new_connection_closed_before_an_answer_is_not_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: list[bytes]) -> None:
        await read_request(reader, requests)

    async with scripted(handler) as (url, requests), client(url) as c:
        with pytest.raises(KubeUnavailableError, match="connection closed before a response arrived"):
            await c.patch_node_status("n", {"metadata": {}})
    assert len(requests) == 1


async def test_request_times_out_as_kube_unavailable() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: list[bytes]) -> None:
        await read_request(reader, requests)
        await asyncio.sleep(30)

    async with scripted(handler) as (url, _), KubeClient(KubeClientConfig(server=url), request_timeout=0.2) as c:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(KubeUnavailableError, match=r"GET /api/v1/nodes/n: no answer within 0\.2s"):
            await c.get_node("n")
        assert loop.time() - started < 2


async def test_patch_sends_the_patch_content_type_auth_and_path_prefix(tmp_path: Path) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: list[bytes]) -> None:
        while True:
            await read_request(reader, requests)
            writer.write(json_response({}))

    token_file = tmp_path / "token"
    token_file.write_text("tok-1\n")
    async with scripted(handler) as (url, requests), \
            client(url + "/k8s/clusters/c-1", token="initial", token_file=str(token_file)) as c:
        await c.patch_node_status("n 1", {"status": {"conditions": []}})
        await c.patch_node_status("n", {"metadata": {}}, patch_type="merge")
        replacement = tmp_path / "token.new"
        replacement.write_text("tok-2")
        replacement.rename(token_file)
        await c.get_node("n")
    heads = [r.split(b"\r\n\r\n")[0].decode().split("\r\n") for r in requests]
    assert heads[0][0] == "PATCH /k8s/clusters/c-1/api/v1/nodes/n%201/status HTTP/1.1"
    assert "Content-Type: application/strategic-merge-patch+json" in heads[0]
    assert "Content-Type: application/merge-patch+json" in heads[1]
    assert f"Host: {url.removeprefix('http://')}" in heads[0]
    assert any(h.startswith("User-Agent: flanneld/") for h in heads[0])
    assert requests[0].endswith(b'\r\n\r\n{"status":{"conditions":[]}}')
    assert "Content-Length: 28" in heads[0]
    assert [h for head in heads for h in head if h.startswith("Authorization")] == [
        "Authorization: Bearer tok-1", "Authorization: Bearer tok-1", "Authorization: Bearer tok-2"]


async def test_basic_auth_header() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: list[bytes]) -> None:
        await read_request(reader, requests)
        writer.write(json_response({}))

    async with scripted(handler) as (url, requests), client(url, username="admin", password="pw") as c:
        await c.get_pod("kube-flannel", "p")
    assert b"\r\nAuthorization: Basic YWRtaW46cHc=\r\n" in requests[0]
    assert requests[0].startswith(b"GET /api/v1/namespaces/kube-flannel/pods/p HTTP/1.1\r\n")


async def test_plain_text_error_answer_keeps_the_servers_words() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: list[bytes]) -> None:
        await read_request(reader, requests)
        body = b"Client sent an HTTP request to an HTTPS server.\n"
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    async with scripted(handler) as (url, _), client(url) as c:
        with pytest.raises(KubeApiError) as err:
            await c.get_node("n")
    assert type(err.value) is KubeApiError
    assert str(err.value) == ("GET /api/v1/nodes/n: 400 Bad Request: Client sent an HTTP request to an HTTPS "
                              "server.")


async def test_answer_that_is_not_json_is_kube_unavailable() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: list[bytes]) -> None:
        await read_request(reader, requests)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    async with scripted(handler) as (url, _), client(url) as c:
        with pytest.raises(KubeUnavailableError, match="answer is not JSON"):
            await c.get_node("n")


async def test_bad_arguments_are_refused_before_any_request() -> None:
    async with client("http://127.0.0.1:9") as c:
        with pytest.raises(ValueError, match="patch_type"):
            await c.patch_node_status("n", {}, patch_type="json")
        with pytest.raises(ValueError, match="limit"):
            c.list_nodes(limit=0)
        with pytest.raises(ValueError, match="invalid object name"):
            await c.get_node("..")
