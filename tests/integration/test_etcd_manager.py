"""``EtcdSubnetManager`` on a real etcd: the keys, values and TTLs a Go node would see, and our fixes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel.errors import ConfigError, OutOfSubnetsError
from flannel.lease import EventType, Lease, LeaseAttrs
from flannel.subnet.etcd_manager import CONFIG_NOT_FOUND, EtcdSubnetManager
from flannel.subnet.etcd_store import EtcdStore
from flannel.subnet.kvstore import WatchEvent
from flannel.subnet.lease_keeper import EtcdManagerTimings
from flannel.subnet.lease_tracker import LeaseTracker
from flannel.subnet.manager import WatchResult
from tests.etcd_server import EtcdServer
from tests.waiting import wait_until

pytestmark = pytest.mark.etcd

FAST = EtcdManagerTimings(renew_retry=0.2, backoff_initial=0.05, backoff_max=0.2)


def attrs(ip: str = "1.2.3.4") -> LeaseAttrs:
    return LeaseAttrs(public_ip=IPv4Address(ip))


def mgr(store: EtcdStore, prefix: str, **kw: object) -> EtcdSubnetManager:
    kw.setdefault("timings", FAST)
    return EtcdSubnetManager(store, prefix, **kw)  # type: ignore[arg-type]


def put_config(etcd: EtcdServer, prefix: str, cfg: str) -> None:
    etcd.etcdctl("put", f"{prefix}/config", cfg)


def confirmed_watches(store: EtcdStore) -> list[str]:
    """Spy on ``store.watch``: the keys whose watch etcd has confirmed (its first answer), in order."""
    confirmed: list[str] = []
    real = store.watch

    async def watch(key: str, start_revision: int, prefix: bool) -> AsyncGenerator[list[WatchEvent], None]:
        async with contextlib.aclosing(real(key, start_revision, prefix)) as stream:
            async for batch in stream:
                if key not in confirmed:
                    confirmed.append(key)
                yield batch

    store.watch = watch  # type: ignore[method-assign]
    return confirmed


def get_value(etcd: EtcdServer, key: str) -> str | None:
    out = etcd.etcdctl("get", key, "--print-value-only").strip()
    return out or None


async def test_missing_config(store: EtcdStore, prefix: str) -> None:
    with pytest.raises(ConfigError) as err:
        await mgr(store, prefix).get_network_config()
    assert str(err.value) == CONFIG_NOT_FOUND


async def test_malformed_config_names_key_and_field(store: EtcdStore, prefix: str, etcd: EtcdServer) -> None:
    put_config(etcd, prefix, '{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}')
    with pytest.raises(ConfigError) as err:
        await mgr(store, prefix).get_network_config()
    assert str(err.value) == f"{prefix}/config: SubnetMin is not in the range of the Network"
    assert err.value.field == "SubnetMin"
    put_config(etcd, prefix, "{not json")
    with pytest.raises(ConfigError, match=f"^{prefix}/config: "):
        await mgr(store, prefix).get_network_config()


async def test_valid_config(store: EtcdStore, prefix: str, etcd: EtcdServer) -> None:
    put_config(etcd, prefix, '{ "Network": "10.3.0.0/16", "Backend": { "Type": "vxlan" } }')
    cfg = await mgr(store, prefix).get_network_config()
    assert (str(cfg.network), cfg.subnet_len, cfg.backend_type) == ("10.3.0.0/16", 24, "vxlan")


async def test_lease_is_stored_as_go_stores_it(store: EtcdStore, etcd: EtcdServer) -> None:
    prefix = "/coreos.com/network"
    put_config(etcd, prefix, '{"Network":"10.1.0.0/16"}')
    m = mgr(store, prefix, previous_subnet=IPv4Network("10.1.5.0/24"))
    lease = await m.acquire_lease(attrs())
    key = "/coreos.com/network/subnets/10.1.5.0-24"
    assert lease.subnet == IPv4Network("10.1.5.0/24")
    assert get_value(etcd, key) == '{"PublicIP":"1.2.3.4","PublicIPv6":null}'
    ttl = etcd.ttl_of(key)
    assert ttl is not None and 86390 <= ttl <= 86400
    assert lease.expiration == pytest.approx(time.time() + 86400, abs=10)
    etcd.etcdctl("del", "--prefix", prefix)


async def test_restarted_node_gets_its_lease_back_by_public_ip(store: EtcdStore, prefix: str, etcd: EtcdServer) -> None:
    put_config(etcd, prefix, '{"Network":"10.3.0.0/16"}')
    first = await mgr(store, prefix).acquire_lease(attrs())
    other = await mgr(store, prefix).acquire_lease(attrs("5.6.7.8"))
    again = await mgr(store, prefix).acquire_lease(attrs())
    assert again.subnet == first.subnet != other.subnet
    assert again.revision > first.revision


async def test_previous_subnet_is_reused(store: EtcdStore, prefix: str, etcd: EtcdServer) -> None:
    put_config(etcd, prefix, '{"Network":"10.3.0.0/16"}')
    lease = await mgr(store, prefix, previous_subnet=IPv4Network("10.3.77.0/24")).acquire_lease(attrs())
    assert lease.subnet == IPv4Network("10.3.77.0/24")


async def test_config_change_forces_a_new_lease(store: EtcdStore, prefix: str, etcd: EtcdServer) -> None:
    put_config(etcd, prefix, '{"Network":"10.3.0.0/16"}')
    old = await mgr(store, prefix).acquire_lease(attrs())
    put_config(etcd, prefix, '{"Network":"10.4.0.0/16"}')
    new = await mgr(store, prefix).acquire_lease(attrs())
    assert new.subnet is not None and new.subnet.subnet_of(IPv4Network("10.4.0.0/16"))
    assert get_value(etcd, f"{prefix}/subnets/{old.key}") is None


async def test_concurrent_acquirers_get_distinct_subnets(
    store: EtcdStore, prefix: str, etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    put_config(etcd, prefix, '{"Network":"192.168.0.0/28"}')  # three /30 subnets
    # Same seed: both pick the same candidate first, so one of them must lose the race and retry.
    managers = [mgr(store, prefix, rng=random.Random(3)) for _ in range(3)]
    leases = await asyncio.gather(*(m.acquire_lease(attrs(f"9.9.9.{i}")) for i, m in enumerate(managers)))
    assert len({lease.subnet for lease in leases}) == 3
    assert "subnet taken by another node meanwhile; retrying" in caplog.text
    with pytest.raises(OutOfSubnetsError, match=r"^out of subnets in 192\.168\.0\.4-192\.168\.0\.12 \(/30\)$"):
        await mgr(store, prefix).acquire_lease(attrs("9.9.9.9"))


async def test_reservation_is_reused_without_ttl(store: EtcdStore, prefix: str, etcd: EtcdServer) -> None:
    put_config(etcd, prefix, '{"Network":"10.3.0.0/16"}')
    key = f"{prefix}/subnets/10.3.42.0-24"
    etcd.etcdctl("put", key, '{"PublicIP":"1.2.3.4"}')
    lease = await mgr(store, prefix).acquire_lease(attrs())
    assert lease.subnet == IPv4Network("10.3.42.0/24") and lease.reserved
    assert etcd.ttl_of(key) is None
    assert get_value(etcd, key) == '{"PublicIP":"1.2.3.4","PublicIPv6":null}'


async def test_remaining_ttl_reads_a_record_s_etcd_lease(store: EtcdStore, prefix: str, etcd: EtcdServer) -> None:
    """What the network map asks once per peer record listed at start (netmap/expiry.py)."""
    put_config(etcd, prefix, '{"Network":"10.3.0.0/16"}')
    m = mgr(store, prefix, ttl_seconds=600, renew_margin_minutes=1)
    lease = await m.acquire_lease(attrs())
    left = await m.remaining_ttl(lease.key)
    assert left is not None and 590 <= left <= 600
    etcd.etcdctl("put", f"{prefix}/subnets/10.3.42.0-24", '{"PublicIP":"1.2.3.5"}')
    assert await m.remaining_ttl("10.3.42.0-24") is None  # a reservation never expires
    assert await m.remaining_ttl("10.3.43.0-24") is None  # no such record


async def test_renewal_keeps_the_lease_past_its_ttl(
    store: EtcdStore, prefix: str, etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flannel")
    put_config(etcd, prefix, '{"Network":"10.3.0.0/16"}')
    m = mgr(store, prefix, ttl_seconds=3, renew_margin_minutes=1.5 / 60)
    lease = await m.acquire_lease(attrs())
    key = f"{prefix}/subnets/{lease.key}"
    first_lease = json.loads(etcd.etcdctl("get", key, "-w", "json"))["kvs"][0]["lease"]
    task = asyncio.create_task(m.complete_lease(lease))
    try:
        # The outcome is about time itself: the key must outlive the 3 s TTL it was written with. So wait for
        # that TTL to have run out (the lease's own expiry, as etcd granted it) with renewals made meanwhile.
        await wait_until(lambda: (time.time() > lease.expiration + 1 and caplog.text.count("renewed lease") >= 2)
                         or task.done(), "two renewals and the first TTL run out", timeout=60)
        assert not task.done()
        assert get_value(etcd, key) == '{"PublicIP":"1.2.3.4","PublicIPv6":null}'
        assert json.loads(etcd.etcdctl("get", key, "-w", "json"))["kvs"][0]["lease"] != first_lease
        assert (etcd.ttl_of(key) or 0) > 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_own_lease_deleted_by_hand_is_reacquired_with_the_same_subnet(
    store: EtcdStore, prefix: str, etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    put_config(etcd, prefix, '{"Network":"10.3.0.0/16"}')
    changed: list[Lease] = []
    m = mgr(store, prefix, on_lease_changed=changed.append)
    lease = await m.acquire_lease(attrs())
    key = f"{prefix}/subnets/{lease.key}"
    watching = confirmed_watches(store)
    task = asyncio.create_task(m.complete_lease(lease))
    try:
        await wait_until(lambda: key in watching, "etcd to confirm the keeper's watch on its key")
        etcd.etcdctl("del", key)
        await wait_until(lambda: bool(changed), "the lease re-acquired")
        assert changed[0].subnet == lease.subnet
        ttl = etcd.ttl_of(key)
        assert ttl is not None and ttl > 86000
        assert "has been revoked" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def next_result(it: AsyncIterator[WatchResult]) -> WatchResult:
    return await asyncio.wait_for(anext(it), 10)


async def test_watch_reports_other_leases_but_not_our_own(store: EtcdStore, prefix: str, etcd: EtcdServer) -> None:
    put_config(etcd, prefix, '{"Network":"10.3.0.0/16"}')
    m = mgr(store, prefix)
    own = await m.acquire_lease(attrs())
    tracker = LeaseTracker(own)
    it = m.watch_leases()
    assert tracker.apply(await next_result(it)) == []
    other = await mgr(store, prefix).acquire_lease(attrs("5.6.7.8"))
    await m.acquire_lease(attrs())  # our own renewal-like put: filtered out
    events = tracker.apply(await next_result(it))
    assert [(e.type, e.lease.subnet, e.lease.attrs.public_ip) for e in events] == [
        (EventType.ADDED, other.subnet, IPv4Address("5.6.7.8"))
    ]
    assert events[0].lease.expiration == 0.0  # remote expirations are not looked up: nothing uses them
    etcd.etcdctl("del", f"{prefix}/subnets/{other.key}")
    result = await next_result(it)
    while not result.events or result.events[0][0]:
        result = await next_result(it)
    assert [(e.type, e.lease.attrs.public_ip) for e in tracker.apply(result)] == [
        (EventType.REMOVED, IPv4Address("5.6.7.8"))
    ]
    await it.aclose()  # type: ignore[attr-defined]


async def test_watch_across_a_compaction(store: EtcdStore, prefix: str, etcd: EtcdServer) -> None:
    put_config(etcd, prefix, '{"Network":"10.3.0.0/16"}')
    m = mgr(store, prefix)
    it = m.watch_leases()
    assert (await next_result(it)).snapshot == ()
    # The watch resumes from after the snapshot's revision, which the compaction removes.
    a = await mgr(store, prefix).acquire_lease(attrs("5.5.5.1"))
    etcd.etcdctl("put", f"{prefix}/unrelated", "x")  # etcd keeps the compaction revision itself
    etcd.compact()
    result = await next_result(it)
    assert result.snapshot is not None and [lease.subnet for lease in result.snapshot] == [a.subnet]
    b = await mgr(store, prefix).acquire_lease(attrs("5.5.5.2"))
    result = await next_result(it)
    assert [(added, lease.subnet) for added, lease in result.events] == [(True, b.subnet)]
    await it.aclose()  # type: ignore[attr-defined]


async def test_malformed_lease_is_skipped_and_others_still_reported(
    store: EtcdStore, prefix: str, etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    put_config(etcd, prefix, '{"Network":"10.3.0.0/16"}')
    etcd.etcdctl("put", f"{prefix}/subnets/10.3.9.0-24", "{not json")
    it = mgr(store, prefix).watch_leases()
    caplog.set_level(logging.WARNING)
    assert (await next_result(it)).snapshot == ()
    assert f"skipping lease {prefix}/subnets/10.3.9.0-24" in caplog.text
    caplog.clear()
    etcd.etcdctl("put", f"{prefix}/subnets/10.3.10.0-24", "[1,2]")
    etcd.etcdctl("put", f"{prefix}/subnetsXYZ", "ignored: outside <prefix>/subnets/")
    good = await mgr(store, prefix).acquire_lease(attrs("5.5.5.3"))
    result = await next_result(it)
    assert [(added, lease.subnet) for added, lease in result.events] == [(True, good.subnet)]
    assert f"skipping lease {prefix}/subnets/10.3.10.0-24" in caplog.text
    await it.aclose()  # type: ignore[attr-defined]
