"""``EtcdStore`` against a real etcd: operations, watch and compaction, TLS, auth, endpoints, failures."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from flannel.errors import DatastoreUnavailableError
from flannel.subnet.etcd_store import (
    CompactedError,
    EtcdStore,
    EtcdStoreOptions,
    WatchEventType,
    parse_endpoint,
)
from tests.etcd_server import EtcdServer, free_port

pytestmark = pytest.mark.etcd


async def test_put_get_create_delete_and_ttl(store: EtcdStore, prefix: str, etcd: EtcdServer) -> None:
    key = f"{prefix}/subnets/10.1.5.0-24"
    first = await store.create(key, "v1", 60)
    assert first is not None and first.ttl == 60 and first.lease_id != 0
    assert await store.create(key, "v2", 60) is None  # lost race: key exists
    got = await store.get(key)
    assert got is not None and got.value == b"v1" and got.lease_id == first.lease_id
    assert 55 <= await store.time_to_live(first.lease_id) <= 60
    assert await store.time_to_live(0) == -1
    plain = await store.put(key, "v3", None)
    assert plain.lease_id == 0 and etcd.ttl_of(key) is None
    kvs, rev = await store.get_prefix(f"{prefix}/")
    assert [(kv.key, kv.value) for kv in kvs] == [(key, b"v3")] and rev >= plain.revision
    assert await store.delete(key) and not await store.delete(key)
    assert await store.get(key) is None


async def test_scan_prefix_hands_over_what_get_prefix_lists_at_the_same_revision(store: EtcdStore,
                                                                                 prefix: str) -> None:
    for i in range(5):
        await store.put(f"{prefix}/subnets/10.1.{i}.0-24", f"v{i}", None)
    await store.put(f"{prefix}-other", "not under the prefix", None)
    seen: list[tuple[str, bytes]] = []
    revision = await store.scan_prefix(f"{prefix}/", lambda kv: seen.append((kv.key, kv.value)))
    kvs, listed_at = await store.get_prefix(f"{prefix}/")
    assert seen == [(kv.key, kv.value) for kv in kvs] and len(seen) == 5
    assert revision == listed_at


async def test_a_lost_create_revokes_its_granted_lease(store: EtcdStore, prefix: str, etcd: EtcdServer) -> None:
    key = f"{prefix}/k"
    await store.put(key, "x", None)
    before = set(etcd.etcdctl("lease", "list").split()[3:])  # other tests' short leases may expire meanwhile
    assert await store.create(key, "y", 60) is None
    assert set(etcd.etcdctl("lease", "list").split()[3:]) <= before


async def test_watch_reports_puts_and_deletes_in_order(store: EtcdStore, prefix: str) -> None:
    _, rev = await store.get_prefix(f"{prefix}/")
    await store.put(f"{prefix}/a", "1", None)
    await store.delete(f"{prefix}/a")
    watch = store.watch(f"{prefix}/", rev + 1, prefix=True)
    seen: list[tuple[WatchEventType, str]] = []
    async with asyncio.timeout(5):
        async for batch in watch:
            seen += [(ev.type, ev.kv.key) for ev in batch]
            if len(seen) == 2:
                break
    await watch.aclose()
    assert seen == [(WatchEventType.PUT, f"{prefix}/a"), (WatchEventType.DELETE, f"{prefix}/a")]


async def test_watch_from_a_compacted_revision_raises_compacted(
    store: EtcdStore, prefix: str, etcd: EtcdServer
) -> None:
    first = await store.put(f"{prefix}/a", "1", None)
    await store.put(f"{prefix}/a", "2", None)
    compacted = etcd.compact()
    watch = store.watch(f"{prefix}/", first.revision, prefix=True)
    with pytest.raises(CompactedError) as err:
        async with asyncio.timeout(5):
            async for _ in watch:
                pass
    assert err.value.compact_revision == compacted


def test_endpoints_are_parsed_as_flanneld_takes_them() -> None:
    opts = EtcdStoreOptions.from_flag("http://127.0.0.1:2379, https://etcd.example:4001,10.0.0.1")
    assert opts.endpoints == ("http://127.0.0.1:2379", "https://etcd.example:4001", "10.0.0.1")
    assert [(e.scheme, e.host, e.port) for e in map(parse_endpoint, opts.endpoints)] == [
        ("http", "127.0.0.1", 2379),
        ("https", "etcd.example", 4001),
        ("", "10.0.0.1", 2379),
    ]
    with pytest.raises(ValueError, match="invalid etcd endpoint"):
        parse_endpoint("ftp://x:1")


async def test_plain_http_logs_the_insecure_warning(
    store_cls: type[EtcdStore], etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        s = await store_cls.open(EtcdStoreOptions(endpoints=(etcd.endpoint,)))
    await s.close()
    assert "no certificate provided: connecting to etcd with http. This is insecure" in caplog.text


async def test_tls_with_client_certificates(store_cls: type[EtcdStore], etcd_tls: EtcdServer, prefix: str) -> None:
    assert etcd_tls.tls is not None
    opts = EtcdStoreOptions(
        endpoints=(etcd_tls.endpoint,),
        certfile=str(etcd_tls.tls.client_cert),
        keyfile=str(etcd_tls.tls.client_key),
        cafile=str(etcd_tls.tls.ca),
        request_timeout=5,
    )
    s = await store_cls.open(opts)
    try:
        await s.put(f"{prefix}/k", "v", None)
        kv = await s.get(f"{prefix}/k")
        assert kv is not None and kv.value == b"v"
        watch = s.watch(f"{prefix}/", kv.mod_revision, prefix=True)
        async with asyncio.timeout(5):
            assert [ev.kv.key for ev in await anext(watch) + await anext(watch)] == [f"{prefix}/k"]
        await watch.aclose()
    finally:
        await s.close()


async def test_a_listing_larger_than_many_tls_records_arrives_whole(store_cls: type[EtcdStore],
                                                                    etcd_tls: EtcdServer, prefix: str) -> None:
    """TLS connections read through a 16 KiB buffer (``flannel.tls_memory``): a 400 KB listing spans dozens of
    TLS records and must arrive complete and in order."""
    import asyncio.sslproto

    assert etcd_tls.tls is not None
    opts = EtcdStoreOptions(endpoints=(etcd_tls.endpoint,), certfile=str(etcd_tls.tls.client_cert),
                            keyfile=str(etcd_tls.tls.client_key), cafile=str(etcd_tls.tls.ca), request_timeout=10)
    s = await store_cls.open(opts)
    try:
        values = {f"{prefix}/big/{i:04d}": f"{i:04d}" + "x" * 1000 for i in range(300)}
        for k, v in values.items():
            await s.put(k, v, None)
        kvs, _ = await s.get_prefix(f"{prefix}/big/")
        assert [(kv.key, kv.value.decode()) for kv in kvs] == sorted(values.items())
        if store_cls.__name__ == "EtcdGatewayStore":
            assert asyncio.sslproto.SSLProtocol.max_size == 16 * 1024
    finally:
        await s.close()


async def test_tls_server_without_a_client_certificate_is_unavailable(
    store_cls: type[EtcdStore], etcd_tls: EtcdServer
) -> None:
    assert etcd_tls.tls is not None
    opts = EtcdStoreOptions(endpoints=(etcd_tls.endpoint,), cafile=str(etcd_tls.tls.ca), request_timeout=2)
    s = await store_cls.open(opts)
    try:
        with pytest.raises(DatastoreUnavailableError, match=etcd_tls.endpoint):
            await s.get("/x")
    finally:
        await s.close()


async def test_username_and_password(store_cls: type[EtcdStore], etcd_auth: EtcdServer, prefix: str) -> None:
    opts = EtcdStoreOptions(endpoints=(etcd_auth.endpoint,), username="root", password="pw", request_timeout=5)
    s = await store_cls.open(opts)
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


async def test_wrong_password_is_a_clear_error(store_cls: type[EtcdStore], etcd_auth: EtcdServer) -> None:
    opts = EtcdStoreOptions(endpoints=(etcd_auth.endpoint,), username="root", password="nope", request_timeout=5)
    with pytest.raises(DatastoreUnavailableError, match="authenticate as 'root'"):
        await store_cls.open(opts)


async def test_no_credentials_on_an_auth_server_is_unavailable(
    store_cls: type[EtcdStore], etcd_auth: EtcdServer
) -> None:
    s = await store_cls.open(EtcdStoreOptions(endpoints=(etcd_auth.endpoint,), request_timeout=5))
    try:
        with pytest.raises(DatastoreUnavailableError, match="get /x"):
            await s.get("/x")
    finally:
        await s.close()


async def test_a_dead_first_endpoint_fails_over_to_the_next(
    store_cls: type[EtcdStore], etcd: EtcdServer, prefix: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    s = await store_cls.open(EtcdStoreOptions(endpoints=(dead, etcd.endpoint), request_timeout=5))
    try:
        for i in range(6):  # the first request fails over; every one must succeed
            await s.put(f"{prefix}/k{i}", "v", None)
        kvs, _ = await s.get_prefix(f"{prefix}/")
        assert len(kvs) == 6
    finally:
        await s.close()


async def test_unreachable_etcd_fails_fast_with_a_clear_message(store_cls: type[EtcdStore]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    s = await store_cls.open(EtcdStoreOptions(endpoints=(dead,), request_timeout=2))
    started = time.monotonic()
    try:
        with pytest.raises(DatastoreUnavailableError) as err:
            await s.get("/coreos.com/network/config")
        assert dead in str(err.value) and "get /coreos.com/network/config" in str(err.value)
        with pytest.raises(DatastoreUnavailableError):
            watch = s.watch("/x/", 1, prefix=True)
            async with asyncio.timeout(10):
                await anext(watch)
    finally:
        await s.close()
    assert time.monotonic() - started < 8


async def test_unresolvable_endpoint_is_a_clear_error(store_cls: type[EtcdStore]) -> None:
    with pytest.raises(DatastoreUnavailableError, match=r"cannot resolve no-such-host\.invalid"):
        await store_cls.open(EtcdStoreOptions(endpoints=("http://no-such-host.invalid:2379",)))


async def test_watch_sends_hasleader_like_the_go_clients_require_leader(store: EtcdStore, prefix: str) -> None:
    if not isinstance(store, EtcdStore):
        pytest.skip("spies on gRPC metadata; test_etcd_gateway proves the gateway's header on a leaderless member")
    client = store._failover.current().client
    assert client is not None
    _, _, service = client.services()
    real = service._stub.Watch
    sent: list[object] = []

    def spy(requests: object, metadata: object = None, **kw: object) -> object:
        sent.append(metadata)
        return real(requests, metadata=metadata, **kw)

    service._stub.Watch = spy
    watch = store.watch(f"{prefix}/", 1, prefix=True)
    async with asyncio.timeout(5):
        await anext(watch)
    await watch.aclose()
    assert sent == [(("hasleader", "true"),)]


async def test_store_connects_lazily_on_first_use(store_cls: type[EtcdStore], etcd: EtcdServer, prefix: str) -> None:
    s = store_cls(EtcdStoreOptions(endpoints=[etcd.endpoint, ""]))  # flag text split on "," may leave blanks
    try:
        await s.put(f"{prefix}/k", "v", None)
        assert (await s.get(f"{prefix}/k")) is not None
    finally:
        await s.close()

