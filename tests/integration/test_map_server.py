"""The network map's server over real sockets: a second instance of the bounded health server that answers the
page and its JSON, and nothing of the health port's (inside a fresh network namespace, like the health tests)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from flannel import netmap
from flannel.daemon.health import MAX_CONNECTIONS, HealthServer, start_health_server
from tests.integration.test_health_server import inside, request  # noqa: F401  (the fixture is used by name)
from tests.netns import NetNS, netns_fixture  # noqa: F401

pytestmark = pytest.mark.root

PORT = 10256  # request() of the health tests connects there


@pytest.fixture
async def map_server(inside: NetNS) -> AsyncIterator[HealthServer]:  # noqa: F811
    s = await start_health_server("127.0.0.1", PORT, netmap.handler(lambda: {"version": 1, "nodes": []}),
                                  what="network map")
    yield s
    await s.close()


async def test_the_map_port_serves_the_page_and_its_json_only(map_server: HealthServer) -> None:
    code, headers, body = await request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert code == 200 and headers["content-type"] == "text/html; charset=utf-8" and body == netmap.page()
    code, headers, body = await request(b"GET /map.json?t=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert code == 200 and headers["content-type"] == "application/json" and json.loads(body)["version"] == 1
    for path in (b"/healthz", b"/metrics", b"/readyz"):
        assert (await request(b"GET " + path + b" HTTP/1.1\r\n\r\n"))[0] == 404


async def test_the_map_server_is_bounded_like_the_health_server(map_server: HealthServer) -> None:
    assert MAX_CONNECTIONS == 64 and map_server.address == "127.0.0.1:10256"
    code, _, _ = await request(b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * (20 << 10) + b"\r\n\r\n")
    assert code == 431  # the same head limit
