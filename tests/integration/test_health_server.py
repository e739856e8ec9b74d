"""The health server over real sockets: upstream's paths, bodies and codes, /metrics, a busy port, shutdown.

The server and its clients run in this process, with the thread inside a fresh network namespace so that
nothing listens in the root namespace.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from flannel.daemon.health import SHUTDOWN_TIMEOUT, HealthServer, join_host_port, start_health_server
from flannel.errors import FlannelError
from flannel.netlink import nsenter
from flannel.readiness import READINESS
from tests.netns import NetNS, netns_fixture  # noqa: F401
from tests.waiting import wait_until

pytestmark = pytest.mark.root

PORT = 10256


@pytest.fixture
def inside(netns: NetNS) -> Iterator[NetNS]:
    """This thread (the event loop's) inside ``netns`` for the test."""
    with nsenter.entered(netns.name):
        yield netns


@pytest.fixture
async def server(inside: NetNS) -> AsyncIterator[HealthServer]:
    READINESS.reset()
    s = await start_health_server("127.0.0.1", PORT)
    yield s
    await s.close()
    READINESS.reset()


async def request(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request; return status, headers (lower-case names) and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert lines[0].startswith("HTTP/1.1 ")
    return int(lines[0].split()[1]), headers, body


def not_listening() -> bool:
    """True once a connection to the server's port is refused."""
    with socket.socket() as probe:
        try:
            probe.connect(("127.0.0.1", PORT))
        except ConnectionRefusedError:
            return True
    return False


async def get(path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await request(f"{method} {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: kube-probe/1.30\r\n\r\n".encode())


async def test_healthz_is_always_200_flanneld_is_running(server: HealthServer) -> None:
    code, headers, body = await get("/healthz")
    assert (code, body) == (200, b"flanneld is running")
    assert headers["content-type"] == "text/plain; charset=utf-8" and headers["content-length"] == "19"


async def test_readyz_is_503_until_marked_ready_then_200(server: HealthServer) -> None:
    assert (await get("/readyz"))[::2] == (503, b"flanneld is not ready yet")
    server.mark_ready()
    assert (await get("/readyz"))[::2] == (200, b"flanneld is ready")
    assert (await get("/readyz"))[::2] == (200, b"flanneld is ready")


async def test_readyz_is_503_with_the_reason_while_a_dependency_is_away(server: HealthServer) -> None:
    server.mark_ready()
    READINESS.problem("datastore", "etcd http://198.18.0.2:2379: connection refused")
    code, _, body = await get("/readyz")
    assert code == 503 and body.startswith(b"flanneld is not ready: datastore: etcd http://198.18.0.2:2379: ")
    metrics_body = (await get("/metrics"))[2].decode()
    assert "\nflannel_ready 0\n" in metrics_body
    READINESS.resolved("datastore")
    assert (await get("/readyz"))[::2] == (200, b"flanneld is ready")


async def test_other_paths_get_gos_404_page(server: HealthServer) -> None:
    for path in ("/", "/healthz/", "/ready", "/metricsx"):
        code, headers, body = await get(path)
        assert (code, body) == (404, b"404 page not found\n"), path
        assert headers["x-content-type-options"] == "nosniff"


async def test_query_strings_and_methods_do_not_matter_as_upstream(server: HealthServer) -> None:
    assert (await get("/healthz?verbose=1"))[::2] == (200, b"flanneld is running")
    assert (await get("/healthz", "POST"))[::2] == (200, b"flanneld is running")


async def test_head_gets_the_headers_without_the_body(server: HealthServer) -> None:
    code, headers, body = await get("/healthz", "HEAD")
    assert (code, headers["content-length"], body) == (200, "19", b"")


async def test_metrics_are_served_in_the_text_format(server: HealthServer) -> None:
    server.mark_ready()
    code, headers, body = await get("/metrics")
    assert code == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    assert "# TYPE flannel_lease_events_total counter\n" in text and "\nflannel_ready 1\n" in text
    assert int(headers["content-length"]) == len(body)


async def test_a_request_that_is_not_http_gets_400(server: HealthServer) -> None:
    code, _, body = await request(b"hello\r\n\r\n")
    assert (code, body) == (400, b"400 Bad Request")


async def test_an_oversized_request_head_gets_431(server: HealthServer) -> None:
    code, _, _ = await request(b"GET /healthz HTTP/1.1\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n")
    assert code == 431


async def test_a_busy_port_is_a_clear_error_naming_the_address(inside: NetNS) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", PORT))
    busy.listen()
    try:
        with pytest.raises(FlannelError, match=r"^cannot start the healthz server on 127\.0\.0\.1:10256: "
                                                r"address already in use$"):
            await start_health_server("127.0.0.1", PORT)
    finally:
        busy.close()


async def test_close_lets_a_request_in_progress_finish_then_stops_listening(server: HealthServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # half a request: the server is now waiting on it
    await writer.drain()
    await wait_until(lambda: server.connections == 1, "the server has accepted the connection")
    closing = asyncio.create_task(server.close())
    await wait_until(not_listening, "close() has stopped listening")
    assert not closing.done(), "close() waits for the request in progress"
    writer.write(b"\r\n")
    await writer.drain()
    assert (await asyncio.wait_for(reader.read(), 5)).endswith(b"flanneld is running")
    await asyncio.wait_for(closing, SHUTDOWN_TIMEOUT)
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", PORT)


async def test_close_drops_a_client_that_never_finishes_after_the_timeout(
        server: HealthServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("flannel.daemon.health.SHUTDOWN_TIMEOUT", 0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    await writer.drain()
    await wait_until(lambda: server.connections == 1, "the server has accepted the connection")
    with caplog.at_level(logging.ERROR, logger="flannel.daemon.health"):
        await asyncio.wait_for(server.close(), 2)
    assert "1 requests still in progress after 0.2s" in caplog.text
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == [], "one clean line, no traceback"
    assert server.connections == 0 and await asyncio.wait_for(reader.read(), 5) == b"", "dropped without an answer"
    writer.close()
    await writer.wait_closed()


async def test_ipv6_address_is_bracketed_and_served(inside: NetNS) -> None:
    assert join_host_port("::1", 1) == "[::1]:1" and join_host_port("0.0.0.0", 2) == "0.0.0.0:2"
    s = await start_health_server("::1", PORT)
    try:
        assert s.address == f"[::1]:{PORT}"
        reader, writer = await asyncio.open_connection("::1", PORT)
        writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 5)).endswith(b"flanneld is running")
        writer.close()
    finally:
        await s.close()
