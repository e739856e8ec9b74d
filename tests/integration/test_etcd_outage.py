"""The etcd subnet manager rides out its datastore: etcd stopped and started again under a live manager.

A real etcd is stopped (SIGTERM and SIGKILL) while the manager renews and watches; the manager must keep
running, say why it is not ready, and recover by itself when etcd returns: renew its own lease and see
the leases written meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from flannel.errors import DatastoreUnavailableError
from flannel.lease import Lease, LeaseAttrs
from flannel.readiness import READINESS
from flannel.subnet.etcd_manager import EtcdSubnetManager
from flannel.subnet.etcd_store import EtcdStore, EtcdStoreOptions
from flannel.subnet.lease_keeper import EtcdManagerTimings
from flannel.subnet.manager import WatchResult
from tests.etcd_server import EtcdServer, make_tls_files, start_etcd
from tests.waiting import wait_until

pytestmark = pytest.mark.etcd

PREFIX = "/coreos.com/network"
FAST = EtcdManagerTimings(renew_retry=0.2, backoff_initial=0.05, backoff_max=0.5)


@pytest.fixture
def own_etcd() -> Iterator[EtcdServer]:
    """An etcd of this test alone, since the test stops it."""
    server = start_etcd()
    server.etcdctl("put", f"{PREFIX}/config", '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}')
    yield server
    server.stop()


@pytest.fixture
async def manager(own_etcd: EtcdServer, store_cls: type[EtcdStore]) -> AsyncIterator[EtcdSubnetManager]:
    READINESS.reset()
    READINESS.mark_started()
    store = store_cls(EtcdStoreOptions(endpoints=(own_etcd.endpoint,), request_timeout=1.0))
    # A 30 s TTL renewed 25 s before expiry: a renewal every 5 s, several of them inside an outage.
    m = EtcdSubnetManager(store, PREFIX, ttl_seconds=30, renew_margin_minutes=25 / 60, timings=FAST)
    yield m
    await m.close()
    READINESS.reset()


def lease_keys(results: list[WatchResult]) -> set[str]:
    keys: set[str] = set()
    for r in results:
        if r.snapshot is not None:
            keys = {lease.key for lease in r.snapshot}
        for added, lease in r.events:
            (keys.add if added else keys.discard)(lease.key)
    return keys


@contextlib.asynccontextmanager
async def running(manager: EtcdSubnetManager, lease: Lease) -> AsyncIterator[list[WatchResult]]:
    """The manager's two long-running loops on ``lease`` (renewal, lease watch); neither may end meanwhile."""
    results: list[WatchResult] = []

    async def watch() -> None:
        async for r in manager.watch_leases():
            results.append(r)

    loops = [asyncio.create_task(manager.complete_lease(lease)), asyncio.create_task(watch())]
    try:
        yield results
        assert not any(t.done() for t in loops), loops
    finally:
        for t in loops:
            t.cancel()
        await asyncio.gather(*loops, return_exceptions=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_manager_rides_out_etcd_stopped_and_restarted(
    manager: EtcdSubnetManager, own_etcd: EtcdServer, sig: signal.Signals, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flannel")
    lease = await manager.acquire_lease(LeaseAttrs(public_ip=IPv4Address("198.18.0.11"), backend_type="vxlan"))
    async with running(manager, lease) as results:
        await wait_until(lambda: lease.key in lease_keys(results), "our lease in the watch", timeout=30)

        own_etcd.halt(sig)
        await wait_until(lambda: not READINESS.ready, "not ready without etcd", timeout=30)
        assert "datastore" in READINESS.explain()
        # Through several failed renewals (the first is due 5 s after the lease was written) both loops run on.
        await wait_until(lambda: caplog.text.count("Error renewing lease") >= 3, "three failed renewals", timeout=60)
        assert f"lease watch on {PREFIX}/subnets lost" in caplog.text

        own_etcd.restart()
        own_etcd.etcdctl("put", f"{PREFIX}/subnets/10.5.99.0-24", '{"PublicIP":"198.18.0.99","BackendType":"vxlan"}')
        await wait_until(lambda: "10.5.99.0-24" in lease_keys(results), "the lease written meanwhile", timeout=30)
        await wait_until(lambda: READINESS.ready, "ready again", timeout=30)
        key = f"{PREFIX}/subnets/{lease.key}"
        await wait_until(lambda: (own_etcd.ttl_of(key) or 0) > 0, "our lease renewed", timeout=30)


async def test_manager_follows_etcd_restored_from_an_older_snapshot(
    manager: EtcdSubnetManager, own_etcd: EtcdServer, tmp_path: Path
) -> None:
    """Restored etcd is behind in revisions and content: leases written after the snapshot are gone, deleted
    ones are back, and our own lease (acquired after the snapshot) must be put back by us."""
    old = f"{PREFIX}/subnets/10.5.98.0-24"
    own_etcd.etcdctl("put", old, '{"PublicIP":"198.18.0.98","BackendType":"vxlan"}')
    snapshot = tmp_path / "snap.db"
    own_etcd.etcdctl("snapshot", "save", str(snapshot))
    lease = await manager.acquire_lease(LeaseAttrs(public_ip=IPv4Address("198.18.0.11"), backend_type="vxlan"))
    own_etcd.etcdctl("del", old)
    own_etcd.etcdctl("put", f"{PREFIX}/subnets/10.5.97.0-24", '{"PublicIP":"198.18.0.97","BackendType":"vxlan"}')
    for _ in range(20):  # move the revision well past the snapshot's
        own_etcd.etcdctl("put", f"{PREFIX}/unrelated", "x")
    async with running(manager, lease) as results:
        await wait_until(lambda: lease_keys(results) == {lease.key, "10.5.97.0-24"}, "the leases before", timeout=30)
        own_etcd.restore(snapshot)
        await wait_until(lambda: lease_keys(results) == {lease.key, "10.5.98.0-24"}, "the snapshot's leases",
                         timeout=30)
        key = f"{PREFIX}/subnets/{lease.key}"
        await wait_until(lambda: (own_etcd.ttl_of(key) or 0) > 0, "our lease put back", timeout=30)


async def test_an_auth_error_that_fixes_itself_is_waited_out(own_etcd: EtcdServer, store_cls: type[EtcdStore]) -> None:
    """A wrong password (an operator rotating it, the node's secret updated first) is a datastore problem that
    the node reports and waits out; once etcd takes the password, the manager gets its lease."""
    own_etcd.enable_auth("root", "old")
    READINESS.reset()
    READINESS.mark_started()
    store = store_cls(EtcdStoreOptions(endpoints=(own_etcd.endpoint,), username="root", password="new",
                                       request_timeout=1.0))
    m = EtcdSubnetManager(store, PREFIX, timings=FAST)
    attrs = LeaseAttrs(public_ip=IPv4Address("198.18.0.11"), backend_type="vxlan")

    async def acquire_with_retries() -> str:
        while True:
            try:
                return (await m.acquire_lease(attrs)).key
            except DatastoreUnavailableError:
                await asyncio.sleep(0.1)  # the daemon's start-up retry, shortened

    acquiring = asyncio.create_task(acquire_with_retries())
    try:
        await wait_until(lambda: "authenticate as 'root'" in READINESS.explain())
        assert not acquiring.done()
        own_etcd.etcdctl("user", "passwd", "root", "--interactive=false", stdin=b"new\n")
        own_etcd.user = ("root", "new")
        key = await asyncio.wait_for(acquiring, 20)
        assert READINESS.ready
        assert own_etcd.etcdctl("get", f"{PREFIX}/subnets/{key}", "--print-value-only").strip()
    finally:
        acquiring.cancel()
        await asyncio.gather(acquiring, return_exceptions=True)
        await m.close()
        READINESS.reset()


async def test_a_tls_error_that_fixes_itself_is_waited_out(tmp_path: Path, store_cls: type[EtcdStore]) -> None:
    """A client certificate etcd does not accept (signed by another CA, as in a botched rotation) makes the
    store unreachable and the node unready; once the right files are in place, the next dial uses them."""
    server = start_etcd(tls=True)
    try:
        assert server.tls is not None
        stranger = make_tls_files(tmp_path)  # another CA: etcd refuses its client certificate
        cert, key = tmp_path / "client.pem", tmp_path / "client-key.pem"
        assert (cert, key) == (stranger.client_cert, stranger.client_key)
        READINESS.reset()
        READINESS.mark_started()
        store = store_cls(EtcdStoreOptions(endpoints=(server.endpoint,), certfile=str(cert), keyfile=str(key),
                                           cafile=str(server.tls.ca), request_timeout=1.0))
        try:
            with pytest.raises(DatastoreUnavailableError):
                await store.get("/x")
            assert "datastore" in READINESS.explain()
            cert.write_bytes(server.tls.client_cert.read_bytes())  # the rotation completes
            key.write_bytes(server.tls.client_key.read_bytes())
            assert await store.get("/x") is None
            assert READINESS.ready
        finally:
            await store.close()
            READINESS.reset()
    finally:
        server.stop()
