"""``EtcdStore`` over several endpoints: each verified against its own name, failover, and giving up cleanly.

The members here are separate single-member etcds on different loopback addresses (127.0.0.2, 127.0.0.3):
enough to prove connectivity and failover, which is what the store is responsible for; replication is etcd's.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from flannel.errors import DatastoreUnavailableError
from flannel.subnet.etcd_store import EtcdStore, EtcdStoreOptions
from tests.etcd_server import EtcdServer, free_port, start_etcd
from tests.waiting import wait_until

pytestmark = pytest.mark.etcd


@pytest.fixture
def members() -> Iterator[tuple[EtcdServer, EtcdServer]]:
    """Two TLS etcds on 127.0.0.2 and 127.0.0.3 from one CA, each certificate naming only its own address."""
    first = start_etcd(tls=True, host="127.0.0.2")
    try:
        second = start_etcd(tls=True, host="127.0.0.3", ca=first.tls)
    except BaseException:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture
def auth_members() -> Iterator[tuple[EtcdServer, EtcdServer]]:
    """Two plain-HTTP etcds on 127.0.0.2 and 127.0.0.3, both with authentication on (root / pw)."""
    first = start_etcd(host="127.0.0.2")
    try:
        second = start_etcd(host="127.0.0.3")
    except BaseException:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture
def hanging_endpoint() -> Iterator[str]:
    """An endpoint that accepts TCP connections (in the kernel's backlog) and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def tls_options(server: EtcdServer, *endpoints: str, timeout: float = 5) -> EtcdStoreOptions:
    assert server.tls is not None
    return EtcdStoreOptions(
        endpoints=endpoints,
        certfile=str(server.tls.client_cert),
        keyfile=str(server.tls.client_key),
        cafile=str(server.tls.ca),
        request_timeout=timeout,
    )


@pytest.fixture
async def member_store(members: tuple[EtcdServer, EtcdServer], store_cls: type[EtcdStore]) -> AsyncIterator[EtcdStore]:
    first, second = members
    s = store_cls(tls_options(second, first.endpoint, second.endpoint))  # files from the member left running
    yield s
    await s.close()


async def test_each_tls_endpoint_is_verified_against_its_own_address(store_cls: type[EtcdStore], prefix: str) -> None:
    server = start_etcd(tls=True, host="127.0.0.2")  # its certificate names 127.0.0.2 and nothing else
    try:
        dead = f"https://127.0.0.1:{free_port()}"
        s = await store_cls.open(tls_options(server, dead, server.endpoint))
        try:
            await s.put(f"{prefix}/k", "v", 30)
            kv = await s.get(f"{prefix}/k")
            assert kv is not None and kv.value == b"v"
            watch = s.watch(f"{prefix}/", kv.mod_revision, prefix=True)
            async with asyncio.timeout(5):
                assert [ev.kv.key for ev in await anext(watch) + await anext(watch)] == [f"{prefix}/k"]
            await watch.aclose()
        finally:
            await s.close()
    finally:
        server.stop()


async def test_stopping_the_current_etcd_fails_over_to_the_next(
    members: tuple[EtcdServer, EtcdServer], member_store: EtcdStore, prefix: str
) -> None:
    first, second = members
    key = f"{prefix}/k"
    await member_store.put(key, "on-first", None)
    second.etcdctl("put", key, "on-second")
    first.stop()
    kv = await member_store.get(key)
    assert kv is not None and kv.value == b"on-second"
    await member_store.put(key, "written-after-failover", None)
    assert second.etcdctl("get", key, "--print-value-only").strip() == "written-after-failover"


async def test_a_broken_watch_resumes_on_the_next_endpoint(
    members: tuple[EtcdServer, EtcdServer], member_store: EtcdStore, prefix: str
) -> None:
    first, second = members
    _, rev = await member_store.get_prefix(f"{prefix}/")
    watch = member_store.watch(f"{prefix}/", rev + 1, prefix=True)
    async with asyncio.timeout(5):
        assert await anext(watch) == []  # created on the first member
    first.stop()
    with pytest.raises(DatastoreUnavailableError, match=first.endpoint):
        async with asyncio.timeout(10):
            await anext(watch)

    def senders() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if "consume_request_iterator" in repr(t.get_coro())]

    # grpc's task feeding the broken stream's requests finishes (a leaked one would stay: the wait fails)
    await wait_until(lambda: not senders(), "grpc's request sender of the broken watch has finished", timeout=5)
    second.etcdctl("put", f"{prefix}/k", "v")
    watch = member_store.watch(f"{prefix}/", 1, prefix=True)  # what the manager does after the error
    async with asyncio.timeout(5):
        assert [ev.kv.key for ev in await anext(watch) + await anext(watch)] == [f"{prefix}/k"]
    await watch.aclose()


async def test_each_new_endpoint_is_authenticated(
    store_cls: type[EtcdStore], auth_members: tuple[EtcdServer, EtcdServer], prefix: str
) -> None:
    first, second = auth_members
    for server in auth_members:
        server.enable_auth("root", "pw")
    opts = EtcdStoreOptions(endpoints=(first.endpoint, second.endpoint), username="root", password="pw")
    s = await store_cls.open(opts)
    try:
        await s.put(f"{prefix}/k", "v", None)
        first.stop()
        await s.put(f"{prefix}/k", "v2", 30)  # etcd refuses writes without a valid token for this member
        assert second.etcdctl("get", f"{prefix}/k", "--print-value-only").strip() == "v2"
    finally:
        await s.close()


async def test_all_endpoints_dead_is_an_error_naming_each_within_the_timeout(store_cls: type[EtcdStore]) -> None:
    dead = (f"https://127.0.0.1:{free_port()}", f"http://127.0.0.2:{free_port('127.0.0.2')}", "no-such-host.invalid")
    s = await store_cls.open(EtcdStoreOptions(endpoints=dead, request_timeout=3))
    started = time.monotonic()
    try:
        with pytest.raises(DatastoreUnavailableError) as err:
            await s.get("/coreos.com/network/config")
        assert all(url in str(err.value) for url in dead), err.value
        assert "cannot resolve no-such-host.invalid" in str(err.value)
        with pytest.raises(DatastoreUnavailableError) as err:
            async with asyncio.timeout(10):
                await anext(s.watch("/x/", 1, prefix=True))
        assert all(url in str(err.value) for url in dead), err.value
    finally:
        await s.close()
    assert time.monotonic() - started < 6  # waiting out the 3 s request timeout even twice would exceed it


async def test_a_hanging_endpoint_costs_one_timeout_then_the_answering_one_is_kept(
    store_cls: type[EtcdStore],
    etcd: EtcdServer, hanging_endpoint: str, prefix: str
) -> None:
    s = store_cls(EtcdStoreOptions(endpoints=(hanging_endpoint, etcd.endpoint), request_timeout=1))
    try:
        started = time.monotonic()
        await s.put(f"{prefix}/k0", "v", None)
        assert 0.9 < time.monotonic() - started < 10
        started = time.monotonic()
        for i in range(1, 6):
            await s.put(f"{prefix}/k{i}", "v", None)
        # Had any of the five gone to the hanging endpoint first, it alone would have cost a 1 s timeout each.
        assert time.monotonic() - started < 4
        kvs, _ = await s.get_prefix(f"{prefix}/")
        assert len(kvs) == 6
    finally:
        await s.close()


async def test_host_names_are_resolved_again_when_reconnecting(
    store_cls: type[EtcdStore], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_etcd(host="127.0.0.2")
    try:
        port = server.client_port
        loop = asyncio.get_running_loop()
        address = {"etcd.test": "127.0.0.3"}  # nothing listens there yet: a member that moved
        real = loop.getaddrinfo

        async def fake_getaddrinfo(host: str, *args: object, **kwargs: object) -> object:
            return await real(address.get(host, host), *args, **kwargs)

        monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
        s = store_cls(EtcdStoreOptions(endpoints=(f"http://etcd.test:{port}",), request_timeout=2))
        try:
            with pytest.raises(DatastoreUnavailableError, match=f"etcd.test:{port}"):
                await s.get(f"{prefix}/k")
            address["etcd.test"] = "127.0.0.2"  # DNS now points at the running member
            await s.put(f"{prefix}/k", "v", None)
            assert server.etcdctl("get", f"{prefix}/k", "--print-value-only").strip() == "v"
        finally:
            await s.close()
    finally:
        server.stop()


async def test_requests_in_flight_on_a_retired_connection_move_on_and_watches_end_cleanly(
    store_cls: type[EtcdStore],
    auth_members: tuple[EtcdServer, EtcdServer], prefix: str
) -> None:
    first, second = auth_members  # authentication stays off here
    s = await store_cls.open(EtcdStoreOptions(endpoints=(first.endpoint, second.endpoint), request_timeout=5))
    try:
        watch = s.watch(f"{prefix}/", 1, prefix=True)
        async with asyncio.timeout(5):
            assert await anext(watch) == []
        pending = asyncio.ensure_future(anext(watch))
        gets = [asyncio.create_task(s.get_prefix(f"{prefix}/")) for _ in range(20)]
        await asyncio.sleep(0)  # not a wait on time: lets each get start, so that it is in flight on the first member
        conn = s._failover.current()  # as if another request had timed out on the first member
        await s._failover.failed(conn, DatastoreUnavailableError("forced"), "test")
        async with asyncio.timeout(10):
            assert all(kvs == [] for kvs, _ in await asyncio.gather(*gets))  # closed under them: retried
            with pytest.raises(DatastoreUnavailableError, match="connection closed"):
                await pending  # the watch's channel was closed: an error to resume from, not a cancellation
        assert s._failover.current().url == second.endpoint
    finally:
        await s.close()


async def test_a_revoked_auth_token_is_replaced_by_logging_in_again(
    store_cls: type[EtcdStore], etcd_auth: EtcdServer, prefix: str
) -> None:
    s = await store_cls.open(
        EtcdStoreOptions(endpoints=(etcd_auth.endpoint,), username="root", password="pw", request_timeout=5)
    )
    try:
        await s.put(f"{prefix}/k", "v", None)
        etcd_auth.etcdctl("user", "passwd", "root", "--interactive=false", stdin=b"pw\n")  # drops root's tokens
        if store_cls is EtcdStore:
            with pytest.raises(DatastoreUnavailableError, match="invalid auth token"):
                await s.get(f"{prefix}/k")  # the only endpoint: this request fails, the next one logs in again
        kv = await s.get(f"{prefix}/k")  # the gateway client logs in again within the first request
        assert kv is not None and kv.value == b"v"
    finally:
        await s.close()
