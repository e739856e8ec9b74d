"""What only the JSON-gateway etcd client does: paged listings, and the ``hasleader`` header on a real cluster.

Everything the two clients share runs against both in ``test_etcd_store``, ``test_etcd_manager``,
``test_etcd_failover`` and ``test_etcd_outage`` (the ``store_cls`` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flannel.errors import DatastoreUnavailableError
from flannel.subnet import etcd_gateway
from flannel.subnet.etcd_options import EtcdStoreOptions
from tests.etcd_server import ETCD, ETCDCTL, EtcdServer, free_port, start_etcd

pytestmark = pytest.mark.etcd


@pytest.fixture
def leaderless_member() -> Iterator[str]:
    """The client URL of one member of a two-member cluster whose other member is stopped: no quorum, no leader."""
    tmp = Path(tempfile.mkdtemp(prefix="flannel-etcd-pair-"))
    ports = [(free_port(), free_port()) for _ in range(2)]
    cluster = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
    procs = [subprocess.Popen(
        [ETCD, f"--name=m{i}", f"--data-dir={tmp / str(i)}", f"--listen-client-urls=http://127.0.0.1:{client}",
         f"--advertise-client-urls=http://127.0.0.1:{client}", f"--listen-peer-urls=http://127.0.0.1:{peer}",
         f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}", f"--initial-cluster={cluster}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, (client, peer) in enumerate(ports)]
    url = f"http://127.0.0.1:{ports[0][0]}"
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([ETCDCTL, f"--endpoints={url}", "put", "/x", "1"], capture_output=True,
                             env={"ETCDCTL_API": "3"}).returncode:
            assert time.monotonic() < deadline, "the two-member cluster did not come up"
            time.sleep(0.2)
        procs[1].kill()
        procs[1].wait(10)
        yield url
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


async def test_a_watch_on_a_member_without_a_leader_is_refused_like_go_clients_require(
    leaderless_member: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway passes ``Grpc-Metadata-Hasleader`` on as gRPC metadata: etcd refuses the watch ("no leader",
    unavailable) instead of accepting it and staying silent, and the store reports that endpoint as failed.
    Without the header the same member accepts the watch."""
    s = etcd_gateway.EtcdGatewayStore(EtcdStoreOptions(endpoints=(leaderless_member,), request_timeout=3))

    async def first_answer() -> list[object]:
        async with contextlib.aclosing(s.watch("/x", 1, prefix=False)) as watch:
            return list(await anext(watch))

    try:
        refusal = ""
        deadline = time.monotonic() + 20  # until the member notices that its leader is gone
        while not refusal and time.monotonic() < deadline:
            try:
                await first_answer()
                await asyncio.sleep(0.5)
            except DatastoreUnavailableError as exc:
                refusal = str(exc)
        assert "no leader" in refusal and leaderless_member in refusal
        monkeypatch.setattr(etcd_gateway, "_HASLEADER", [])
        assert await first_answer() is not None  # accepted: the refusal above was the header's doing
    finally:
        await s.close()

async def five_keys_in_pages_of_two(etcd: EtcdServer, prefix: str,
                                    monkeypatch: pytest.MonkeyPatch) -> etcd_gateway.EtcdGatewayStore:
    """A gateway store listing in pages of 2 keys, and ``<prefix>/k0``..``k4`` (values ``v0``..``v4``) in etcd."""
    monkeypatch.setattr(etcd_gateway, "LIST_PAGE", 2)
    s = await etcd_gateway.EtcdGatewayStore.open(EtcdStoreOptions(endpoints=(etcd.endpoint,), request_timeout=5))
    for i in range(5):
        await s.put(f"{prefix}/k{i}", f"v{i}", None)
    return s


async def test_the_gateway_client_lists_in_pages_of_one_snapshot(
    etcd: EtcdServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await five_keys_in_pages_of_two(etcd, prefix, monkeypatch)
    try:
        later = f"{prefix}/k5"
        real = s._call

        async def call_then_write(path: str, payload: dict[str, object], what: str) -> dict[str, object]:
            answer = await real(path, payload, what)
            if "revision" not in payload:
                etcd.etcdctl("put", later, "after the first page")  # not in the snapshot being listed
            return answer

        s._call = call_then_write  # type: ignore[method-assign]
        kvs, rev = await s.get_prefix(f"{prefix}/")
        assert [(kv.key, kv.value) for kv in kvs] == [(f"{prefix}/k{i}", f"v{i}".encode()) for i in range(5)]
        assert (await s.get(later)) is not None and rev == kvs[-1].mod_revision
    finally:
        await s.close()


async def test_a_listing_asks_for_the_next_page_before_decoding_this_one_and_drops_it_on_failure(
    etcd: EtcdServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd prepares page n+1 while page n is decoded; a decoder failure abandons the page asked for cleanly."""
    s = await five_keys_in_pages_of_two(etcd, prefix, monkeypatch)
    try:
        real = s._call
        asked: list[object] = []

        async def recording(path: str, payload: dict[str, object], what: str) -> dict[str, object]:
            asked.append(payload["key"])
            return await real(path, payload, what)

        s._call = recording  # type: ignore[method-assign]
        seen: list[tuple[str, int]] = []
        await s.scan_prefix(f"{prefix}/", lambda kv: seen.append((kv.key, len(asked))))
        assert [key for key, _ in seen] == [f"{prefix}/k{i}" for i in range(5)]
        assert [pages for _, pages in seen] == [2, 2, 3, 3, 3]  # pages asked for when each key was decoded

        def fail_at_k2(kv: object) -> None:
            if str(getattr(kv, "key", "")).endswith("k2"):
                raise ValueError("decoder failure")

        with pytest.raises(ValueError, match="decoder failure"):
            await s.scan_prefix(f"{prefix}/", fail_at_k2)
        kvs, _ = await s.get_prefix(f"{prefix}/")  # the store is unharmed by the abandoned request
        assert len(kvs) == 5
    finally:
        await s.close()


async def test_a_kept_connection_that_etcd_closed_meanwhile_is_not_a_failure(prefix: str) -> None:
    """etcd restarted while the store's keep-alive connections sat idle: the next request opens a fresh one
    instead of failing on a dead one (with one endpoint, that failure would be the request's error)."""
    server = start_etcd()
    try:
        s = await etcd_gateway.EtcdGatewayStore.open(EtcdStoreOptions(endpoints=(server.endpoint,), request_timeout=5))
        try:
            await s.put(f"{prefix}/k", "v", None)  # leaves a connection in the pool
            server.halt()
            server.restart()
            await asyncio.sleep(0.2)  # the event loop sees the closed connection, as a running daemon's would
            kv = await s.get(f"{prefix}/k")
            assert kv is not None and kv.value == b"v"
        finally:
            await s.close()
    finally:
        server.stop()
