"""``flannelctl status`` reads flanneld's ``/readyz``: the reason flanneld gives for being unready reaches the
operator. flanneld's real health server runs in a test namespace, with test_health_server.py's fixtures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flannel.ctl.status import probe_readyz
from flannel.daemon.health import HealthServer
from flannel.netlink import nsenter
from flannel.readiness import READINESS
from tests.integration.test_health_server import PORT, inside, server  # noqa: F401  (fixtures)
from tests.netns import NetNS, netns_fixture  # noqa: F401

pytestmark = pytest.mark.root


async def probe(ns: NetNS, port: int = PORT) -> dict[str, Any]:
    """``probe_readyz`` from a worker thread (the loop must keep serving), moved into ``ns`` as well."""

    def run() -> dict[str, Any]:
        with nsenter.entered(ns.name):
            return probe_readyz("127.0.0.1", port)

    return await asyncio.to_thread(run)


async def test_unready_reason_and_ready(inside: NetNS, server: HealthServer) -> None:  # noqa: F811
    assert await probe(inside) == {"url": f"http://127.0.0.1:{PORT}/readyz", "ready": False, "status": 503,
                                   "reason": "flanneld is not ready yet"}
    server.mark_ready()
    READINESS.problem("datastore", "etcd http://198.18.0.2:2379: connection refused")
    doc = await probe(inside)
    assert doc["ready"] is False and doc["reason"].startswith("flanneld is not ready: datastore: etcd http://")
    READINESS.resolved("datastore")
    assert (await probe(inside))["ready"] is True


async def test_nothing_listening_means_not_running(inside: NetNS) -> None:  # noqa: F811
    doc = await probe(inside, PORT + 1)
    assert doc["ready"] is None and doc["reason"].startswith("nothing listens there")
