"""The etcd subnet manager's logic over an in-memory ``KVStore``: allocation, reservations, races, watches,
renewal and re-acquisition. The real store is covered by tests/integration/test_etcd_*.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel.errors import (
    ConfigError,
    DatastoreUnavailableError,
    FlannelError,
    LeaseLostError,
    LeaseRevokedError,
    OutOfSubnetsError,
)
from flannel.lease import Lease, LeaseAttrs
from flannel.subnet.etcd_manager import CONFIG_NOT_FOUND, EtcdSubnetManager, join_key
from flannel.subnet.kvstore import KV, CompactedError, PutResult, WatchEvent, WatchEventType
from flannel.subnet.lease_keeper import EtcdManagerTimings
from flannel.subnet.lease_tracker import LeaseTracker
from flannel.subnet.manager import WatchResult
from tests.waiting import wait_until

P = "/coreos.com/network"
FAST = EtcdManagerTimings(renew_retry=0.05, backoff_initial=0.01, backoff_max=0.05)


class FakeStore:
    """An in-memory ``KVStore`` with etcd's revision semantics, fault injection and race hooks."""

    def __init__(self) -> None:
        self.data: dict[str, KV] = {}
        self.rev = 1
        self.compacted = 0
        self.leases: dict[int, tuple[int, float]] = {}
        self.history: list[WatchEvent] = []
        self.failing: set[str] = set()
        self.before_create: Callable[[str], None] | None = None
        self.puts: list[tuple[str, int | None]] = []
        self.revoked: list[int] = []
        self.opened: list[str] = []
        """The key (or prefix) of each watch opened, in order: a test waits on it for a watch to be in place."""
        self.closed = False
        self._ids = itertools.count(100)
        self._wake = asyncio.Event()
        self._broken = 0

    def _check(self, op: str) -> None:
        if op in self.failing:
            raise DatastoreUnavailableError(f"fake etcd: {op} failed")

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    def raw_put(self, key: str, value: str | bytes, lease_id: int = 0) -> int:
        self.rev += 1
        old = self.data.get(key)
        created = old.create_revision if old is not None else self.rev
        kv = KV(key, value.encode() if isinstance(value, str) else value, self.rev, lease_id, created)
        self.data[key] = kv
        self.history.append(WatchEvent(WatchEventType.PUT, kv))
        self._notify()
        return self.rev

    def raw_delete(self, key: str) -> bool:
        if key not in self.data:
            return False
        del self.data[key]
        self.rev += 1
        self.history.append(WatchEvent(WatchEventType.DELETE, KV(key, b"", self.rev)))
        self._notify()
        return True

    def compact(self) -> None:
        self.compacted = self.rev

    def break_watches(self) -> None:
        self._broken += 1
        self._notify()

    def _grant(self, ttl: int | None) -> tuple[int, int]:
        if not ttl:
            return 0, 0
        lease_id = next(self._ids)
        self.leases[lease_id] = (ttl, time.monotonic())
        return lease_id, ttl

    async def get(self, key: str) -> KV | None:
        self._check("get")
        return self.data.get(key)

    async def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        self._check("get_prefix")
        return [kv for k, kv in sorted(self.data.items()) if k.startswith(prefix)], self.rev

    async def scan_prefix(self, prefix: str, each: Callable[[KV], None]) -> int:
        kvs, revision = await self.get_prefix(prefix)
        for kv in kvs:
            each(kv)
        return revision

    async def put(self, key: str, value: str, ttl: int | None) -> PutResult:
        await asyncio.sleep(0)  # a real store always suspends
        self._check("put")
        self.puts.append((key, ttl))
        lease_id, granted = self._grant(ttl)
        return PutResult(self.raw_put(key, value, lease_id), lease_id, granted)

    async def create(self, key: str, value: str, ttl: int | None) -> PutResult | None:
        self._check("create")
        if self.before_create is not None:
            self.before_create(key)
        if key in self.data:
            return None
        lease_id, granted = self._grant(ttl)
        return PutResult(self.raw_put(key, value, lease_id), lease_id, granted)

    async def replace(self, key: str, value: str, ttl: int | None, mod_revision: int) -> PutResult | None:
        await asyncio.sleep(0)  # as put: a real store always suspends
        self._check("replace")
        current = self.data.get(key)
        if (current.mod_revision if current is not None else 0) != mod_revision:
            return None
        self.puts.append((key, ttl))
        lease_id, granted = self._grant(ttl)
        return PutResult(self.raw_put(key, value, lease_id), lease_id, granted)

    async def revoke(self, lease_id: int) -> None:
        self.revoked.append(lease_id)
        self.leases.pop(lease_id, None)
        for key in [k for k, kv in self.data.items() if kv.lease_id == lease_id and lease_id]:
            self.raw_delete(key)

    async def delete(self, key: str) -> bool:
        self._check("delete")
        return self.raw_delete(key)

    async def time_to_live(self, lease_id: int) -> int:
        self._check("time_to_live")
        if lease_id not in self.leases:
            return -1
        ttl, at = self.leases[lease_id]
        return max(int(ttl - (time.monotonic() - at)), -1)

    async def watch(self, key: str, start_revision: int, prefix: bool) -> AsyncGenerator[list[WatchEvent], None]:
        self._check("watch")
        if start_revision <= self.compacted:
            raise CompactedError(self.compacted)
        broken, pos = self._broken, start_revision  # from here on, a break_watches() ends this watch
        self.opened.append(key)
        yield []
        while True:
            wake = self._wake
            if self._broken != broken or "watch" in self.failing:
                raise DatastoreUnavailableError("fake etcd: watch lost")
            evs = [
                e
                for e in self.history
                if e.kv.mod_revision >= pos and (e.kv.key.startswith(key) if prefix else e.kv.key == key)
            ]
            if evs:
                pos = evs[-1].kv.mod_revision + 1
                yield evs
            else:
                await wake.wait()

    async def close(self) -> None:
        self.closed = True


def attrs(ip: str = "1.2.3.4") -> LeaseAttrs:
    return LeaseAttrs(public_ip=IPv4Address(ip))


def manager(store: FakeStore, **kw: object) -> EtcdSubnetManager:
    kw.setdefault("rng", random.Random(1))
    kw.setdefault("timings", FAST)
    return EtcdSubnetManager(store, P, **kw)  # type: ignore[arg-type]


@pytest.fixture
def store() -> FakeStore:
    s = FakeStore()
    s.raw_put(f"{P}/config", '{"Network":"10.5.0.0/16"}')
    return s


def subnet_keys(store: FakeStore) -> list[str]:
    return sorted(k for k in store.data if k.startswith(f"{P}/subnets/"))


async def next_result(it: AsyncIterator[WatchResult]) -> WatchResult:
    return await asyncio.wait_for(anext(it), 2)


# --- config ------------------------------------------------------------------------------------------


def test_keys_are_joined_like_go_path_join() -> None:
    assert join_key("/coreos.com/network/", "config") == "/coreos.com/network/config"
    assert join_key("//a//b/", "subnets") == "/a/b/subnets"
    assert EtcdSubnetManager(FakeStore(), "/x/").subnet_key(IPv4Network("10.1.5.0/24"), None) == (
        "/x/subnets/10.1.5.0-24"
    )


async def test_missing_config_gives_upstreams_message() -> None:
    with pytest.raises(ConfigError) as err:
        await manager(FakeStore()).get_network_config()
    assert str(err.value) == CONFIG_NOT_FOUND


async def test_bad_config_names_the_key_and_field(store: FakeStore) -> None:
    store.raw_put(f"{P}/config", '{"Network":"10.5.0.0/16","SubnetLen":31}')
    with pytest.raises(ConfigError) as err:
        await manager(store).get_network_config()
    assert str(err.value) == f"{P}/config: SubnetLen must be less than /31"
    assert err.value.field == "SubnetLen"


async def test_valid_config_is_checked_and_defaulted(store: FakeStore) -> None:
    cfg = await manager(store).get_network_config()
    assert (cfg.subnet_len, str(cfg.subnet_min), str(cfg.subnet_max)) == (24, "10.5.1.0", "10.5.255.0")


# --- acquisition -------------------------------------------------------------------------------------


async def test_fresh_lease_is_created_with_go_bytes_and_ttl(store: FakeStore) -> None:
    m = manager(store)
    lease = await m.acquire_lease(attrs())
    key = m.subnet_key(lease.subnet, None)
    assert subnet_keys(store) == [key]
    assert store.data[key].value == b'{"PublicIP":"1.2.3.4","PublicIPv6":null}'
    assert store.leases[store.data[key].lease_id][0] == 86400
    assert lease.expiration == pytest.approx(time.time() + 86400, abs=5)
    assert not lease.reserved and m.own_lease == lease


async def test_existing_lease_with_our_public_ip_is_reused(store: FakeStore) -> None:
    key = f"{P}/subnets/10.5.77.0-24"
    store.raw_put(key, '{"PublicIP":"1.2.3.4","PublicIPv6":null}', 5)
    lease = await manager(store).acquire_lease(attrs())
    assert lease.subnet == IPv4Network("10.5.77.0/24")
    assert store.puts == [(key, 86400)]


async def test_incompatible_own_lease_is_deleted_and_replaced(store: FakeStore) -> None:
    old = f"{P}/subnets/10.4.77.0-24"
    store.raw_put(old, '{"PublicIP":"1.2.3.4","PublicIPv6":null}', 5)
    lease = await manager(store).acquire_lease(attrs())
    assert old not in store.data
    assert lease.subnet is not None and lease.subnet.subnet_of(IPv4Network("10.5.0.0/16"))


async def test_reservation_is_reused_without_a_ttl(store: FakeStore) -> None:
    key = f"{P}/subnets/10.5.9.0-24"
    store.raw_put(key, '{"PublicIP":"1.2.3.4"}')
    lease = await manager(store).acquire_lease(attrs())
    assert lease.subnet == IPv4Network("10.5.9.0/24") and lease.reserved and lease.expiration == 0
    assert store.data[key].lease_id == 0
    assert store.data[key].value == b'{"PublicIP":"1.2.3.4","PublicIPv6":null}'


async def test_reservations_of_other_nodes_are_never_allocated(store: FakeStore) -> None:
    store.raw_put(f"{P}/config", '{"Network":"192.168.0.0/28"}')  # subnets .4, .8 and .12 (/30)
    store.raw_put(f"{P}/subnets/192.168.0.4-30", '{"PublicIP":"9.9.9.1"}')
    store.raw_put(f"{P}/subnets/192.168.0.12-30", '{"PublicIP":"9.9.9.2"}')
    for seed in range(5):
        m = manager(store, rng=random.Random(seed))
        lease = await m.acquire_lease(attrs())
        assert lease.subnet == IPv4Network("192.168.0.8/30")
        store.raw_delete(m.subnet_key(lease.subnet, None))


async def test_previous_subnet_is_preferred_when_free(store: FakeStore) -> None:
    lease = await manager(store, previous_subnet=IPv4Network("10.5.200.0/24")).acquire_lease(attrs())
    assert lease.subnet == IPv4Network("10.5.200.0/24")


async def test_previous_subnet_held_by_another_node_is_ignored(
    store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.raw_put(f"{P}/subnets/10.5.200.0-24", '{"PublicIP":"9.9.9.9"}', 0)
    lease = await manager(store, previous_subnet=IPv4Network("10.5.200.0/24")).acquire_lease(attrs())
    assert lease.subnet != IPv4Network("10.5.200.0/24")
    assert "previous subnet 10.5.200.0/24 is held by lease 10.5.200.0-24" in caplog.text


async def test_previous_subnet_outside_the_config_is_ignored(store: FakeStore) -> None:
    lease = await manager(store, previous_subnet=IPv4Network("10.9.1.0/24")).acquire_lease(attrs())
    assert lease.subnet is not None and lease.subnet.subnet_of(IPv4Network("10.5.0.0/16"))


async def test_lost_creation_race_is_retried_with_another_subnet(store: FakeStore) -> None:
    stolen: list[str] = []

    def thief(key: str) -> None:
        if not stolen:
            stolen.append(key)
            store.raw_put(key, '{"PublicIP":"6.6.6.6","PublicIPv6":null}', 0)

    store.before_create = thief
    lease = await manager(store, previous_subnet=IPv4Network("10.5.3.0/24")).acquire_lease(attrs())
    assert stolen == [f"{P}/subnets/10.5.3.0-24"]
    assert lease.subnet != IPv4Network("10.5.3.0/24")
    assert len(subnet_keys(store)) == 2


async def test_losing_every_race_gives_up_after_ten_attempts(store: FakeStore) -> None:
    attempts: list[str] = []

    def thief(key: str) -> None:
        attempts.append(key)
        store.raw_put(key, '{"PublicIP":"6.6.6.6"}', 0)

    store.before_create = thief
    with pytest.raises(FlannelError, match=r"^max retries reached trying to acquire a subnet$"):
        await manager(store).acquire_lease(attrs())
    assert len(attempts) == 10


async def test_out_of_subnets(store: FakeStore) -> None:
    store.raw_put(f"{P}/config", '{"Network":"192.168.0.0/28"}')
    for i in (4, 8, 12):
        store.raw_put(f"{P}/subnets/192.168.0.{i}-30", '{"PublicIP":"9.9.9.9"}', 0)
    with pytest.raises(OutOfSubnetsError, match=r"^out of subnets in 192\.168\.0\.4-192\.168\.0\.12 \(/30\)$"):
        await manager(store).acquire_lease(attrs("1.1.1.1"))


@pytest.mark.parametrize("seed", range(5))
async def test_key_with_an_unreadable_value_still_occupies_its_subnet(store: FakeStore, seed: int) -> None:
    store.raw_put(f"{P}/config", '{"Network":"192.168.0.0/28"}')
    store.raw_put(f"{P}/subnets/192.168.0.4-30", "not json", 0)
    store.raw_put(f"{P}/subnets/192.168.0.8-30", '{"PublicIP":"9.9.9.9","BackendData":' + "[" * 3000 + "]" * 3000 + "}")
    lease = await manager(store, rng=random.Random(seed)).acquire_lease(attrs("1.1.1.1"))
    assert lease.subnet == IPv4Network("192.168.0.12/30")


async def test_previous_subnet_with_an_unreadable_value_is_not_reused(store: FakeStore) -> None:
    store.raw_put(f"{P}/subnets/10.5.200.0-24", "garbage", 0)
    lease = await manager(store, previous_subnet=IPv4Network("10.5.200.0/24")).acquire_lease(attrs())
    assert lease.subnet != IPv4Network("10.5.200.0/24")


async def test_ipv6_only_is_refused_with_etcd(store: FakeStore) -> None:
    store.raw_put(f"{P}/config", '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56"}')
    with pytest.raises(ConfigError, match="IPv6-only"):
        await manager(store).acquire_lease(attrs())


async def test_dual_stack_lease_key_carries_both_subnets(store: FakeStore) -> None:
    store.raw_put(f"{P}/config", '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56"}')
    lease = await manager(store).acquire_lease(attrs())
    assert lease.ipv6_subnet is not None and lease.ipv6_subnet.prefixlen == 64
    assert subnet_keys(store) == [f"{P}/subnets/{lease.key}"]


async def test_listing_skips_undecodable_keys_and_values(store: FakeStore, caplog: pytest.LogCaptureFixture) -> None:
    store.raw_put(f"{P}/subnets/10.5.1.0-24", '{"PublicIP":"9.9.9.1"}', 0)
    store.raw_put(f"{P}/subnets/garbage", '{"PublicIP":"9.9.9.2"}', 0)
    store.raw_put(f"{P}/subnets/10.5.2.0-24", "not json", 0)
    leases, rev = await manager(store).list_leases()
    assert [lease.key for lease in leases] == ["10.5.1.0-24"] and rev == store.rev
    assert f"{P}/subnets/garbage" in caplog.text and f"{P}/subnets/10.5.2.0-24" in caplog.text


# --- the all-leases watch ----------------------------------------------------------------------------


async def test_watch_gives_a_snapshot_then_events(store: FakeStore) -> None:
    store.raw_put(f"{P}/subnets/10.5.1.0-24", '{"PublicIP":"9.9.9.1"}', 0)
    it = manager(store).watch_leases()
    first = await next_result(it)
    assert first.snapshot is not None and [lease.key for lease in first.snapshot] == ["10.5.1.0-24"]
    store.raw_put(f"{P}/subnets/10.5.2.0-24", '{"PublicIP":"9.9.9.2"}', 0)
    store.raw_delete(f"{P}/subnets/10.5.1.0-24")
    events: list[tuple[bool, Lease]] = []
    while len(events) < 2:
        events += (await next_result(it)).events
    assert [(added, lease.key) for added, lease in events] == [(True, "10.5.2.0-24"), (False, "10.5.1.0-24")]
    assert events[0][1].attrs.public_ip == IPv4Address("9.9.9.2")
    assert events[1][1].attrs == LeaseAttrs()
    await it.aclose()  # type: ignore[attr-defined]


async def test_first_watch_reuses_the_acquisitions_listing_and_misses_nothing_written_since(store: FakeStore) -> None:
    store.raw_put(f"{P}/subnets/10.5.1.0-24", '{"PublicIP":"9.9.9.1"}', 0)
    listings = 0
    get_prefix = store.get_prefix

    async def counting(prefix: str) -> tuple[list[KV], int]:
        nonlocal listings
        listings += 1
        return await get_prefix(prefix)

    store.get_prefix = counting  # type: ignore[method-assign]
    m = manager(store)
    own = await m.acquire_lease(LeaseAttrs(public_ip=IPv4Address("9.9.9.9")))
    store.raw_put(f"{P}/subnets/10.5.2.0-24", '{"PublicIP":"9.9.9.2"}', 0)  # between acquisition and watch
    it = m.watch_leases()
    first = await next_result(it)
    assert listings == 1, "the watch's snapshot is the acquisition's listing, not a second one"
    assert first.snapshot is not None and [lease.key for lease in first.snapshot] == ["10.5.1.0-24"]
    seen: list[str] = []
    while "10.5.2.0-24" not in seen:
        seen += [lease.key for _, lease in (await next_result(it)).events]
    assert seen == [own.key, "10.5.2.0-24"], "our own write, then the lease written in between, as events"
    await it.aclose()  # type: ignore[attr-defined]
    it = m.watch_leases()  # a later watch (say after a restart of the backend) lists afresh
    await next_result(it)
    assert listings == 2
    await it.aclose()  # type: ignore[attr-defined]


async def test_the_watch_keeps_no_listed_lease_once_its_snapshot_is_handed_over(store: FakeStore) -> None:
    """Peers that change are let go by the backend; a listing kept alive in the watch's frame held every
    original lease too (4 MiB after 10 minutes of churn with 5000 peers)."""
    store.raw_put(f"{P}/subnets/10.5.1.0-24", '{"PublicIP":"9.9.9.1"}', 0)
    m = manager(store)
    await m.acquire_lease(LeaseAttrs(public_ip=IPv4Address("9.9.9.9")))
    it = m.watch_leases()
    snapshot = (await next_result(it)).snapshot
    assert snapshot
    alive = list(snapshot)  # held here, so that their ids stay theirs
    listed = {id(lease) for lease in alive}
    del snapshot
    await next_result(it)  # our own lease as an event: the generator has run on past the snapshot

    def holds_listed(value: object) -> bool:
        if id(value) in listed:
            return True
        return isinstance(value, list | tuple) and any(holds_listed(v) for v in value)

    frame = it.ag_frame  # type: ignore[attr-defined]
    kept = [name for name, value in frame.f_locals.items() if holds_listed(value)]
    assert kept == []
    await it.aclose()  # type: ignore[attr-defined]


async def test_watch_skips_an_undecodable_event_and_keeps_the_others(
    store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    it = manager(store).watch_leases()
    await next_result(it)
    store.raw_put(f"{P}/subnets/10.5.3.0-24", "{broken", 0)
    store.raw_put(f"{P}/subnets/10.5.4.0-24", '{"PublicIP":"9.9.9.4"}', 0)
    result = await next_result(it)
    while not result.events:
        result = await next_result(it)
    assert [lease.key for _, lease in result.events] == ["10.5.4.0-24"]
    assert f"skipping lease {P}/subnets/10.5.3.0-24" in caplog.text
    await it.aclose()  # type: ignore[attr-defined]


async def test_watch_relists_after_compaction_but_resumes_after_a_lost_watch(store: FakeStore) -> None:
    tracker = LeaseTracker()
    it = manager(store).watch_leases()
    tracker.apply(await next_result(it))
    store.raw_put(f"{P}/subnets/10.5.5.0-24", '{"PublicIP":"9.9.9.5"}', 0)
    store.compact()
    store.break_watches()  # the watch resumes at an old revision → compacted → snapshot
    result = await next_result(it)
    while result.snapshot is None:
        tracker.apply(result)
        result = await next_result(it)
    assert [lease.key for lease in result.snapshot] == ["10.5.5.0-24"]
    opened = store.opened.count(f"{P}/subnets/")
    pending = asyncio.create_task(next_result(it))
    await wait_until(lambda: store.opened.count(f"{P}/subnets/") == opened + 1, "the watch after the snapshot")
    store.failing.add("get_prefix")
    store.break_watches()
    # Listing fails from now on: the watch can only be back by resuming from its last revision.
    await wait_until(lambda: store.opened.count(f"{P}/subnets/") == opened + 2, "the lost watch resumed")
    store.raw_put(f"{P}/subnets/10.5.6.0-24", '{"PublicIP":"9.9.9.6"}', 0)
    store.failing.clear()
    result = await pending
    # No re-list (listing is even failing): the watch resumed from the last revision and saw the put.
    assert result.snapshot is None
    assert [(added, lease.key) for added, lease in result.events] == [(True, "10.5.6.0-24")]
    await it.aclose()  # type: ignore[attr-defined]


# --- keeping the own lease ---------------------------------------------------------------------------


async def run_keeper(m: EtcdSubnetManager, lease: Lease) -> asyncio.Task[None]:
    task = asyncio.create_task(m.complete_lease(lease))
    await asyncio.sleep(0)  # one loop turn, not a wait on time: the keeper starts and sets up its first step
    return task


async def own_watch_open(store: FakeStore, key: str, times: int = 1) -> None:
    """Wait until the keeper's watch on its own key has been opened ``times`` times (it is in place)."""
    await wait_until(lambda: store.opened.count(key) >= times, f"watch on {key} opened {times} time(s)")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_lease_is_renewed_before_expiry_with_a_fresh_etcd_lease(store: FakeStore) -> None:
    m = manager(store, ttl_seconds=2, renew_margin_minutes=0.9 / 60)
    lease = await m.acquire_lease(attrs())
    lease = dataclasses.replace(lease, expiration=time.time() + 1)  # renew 0.1 s from now
    key = m.subnet_key(lease.subnet, None)
    first_lease_id = store.data[key].lease_id
    task = await run_keeper(m, lease)
    await wait_until(lambda: len([p for p in store.puts if p[0] == key]) >= 2)
    assert store.data[key].lease_id != first_lease_id
    assert store.data[key].value == b'{"PublicIP":"1.2.3.4","PublicIPv6":null}'
    await stop(task)


async def test_own_lease_watch_after_compaction_does_not_spin(store: FakeStore) -> None:
    m = manager(store)
    lease = await m.acquire_lease(attrs())
    store.raw_put(f"{P}/unrelated", "x")  # the store moves on past the own key's revision...
    store.compact()  # ...and forgets the history before now
    calls = 0
    original = store.get_prefix

    async def counting(prefix: str) -> tuple[list[KV], int]:
        nonlocal calls
        calls += 1
        return await original(prefix)

    store.get_prefix = counting  # type: ignore[method-assign]
    task = await run_keeper(m, lease)
    # A watch from the key's own (compacted) revision would fail and re-read forever, never getting here.
    await own_watch_open(store, m.subnet_key(lease.subnet, None))
    assert calls == 1, f"the own-lease watch re-read its key {calls} times before its watch was in place"
    await stop(task)


async def test_failed_renewal_is_logged_and_retried(store: FakeStore, caplog: pytest.LogCaptureFixture) -> None:
    m = manager(store, ttl_seconds=2, renew_margin_minutes=0.9 / 60)
    lease = dataclasses.replace(await m.acquire_lease(attrs()), expiration=time.time())  # renew at once
    store.failing.add("replace")
    task = await run_keeper(m, lease)
    await wait_until(lambda: caplog.text.count("Error renewing lease (trying again in 0.05s)") >= 2)
    store.failing.clear()
    await wait_until(lambda: len(store.puts) >= 1)
    await stop(task)


async def test_reservation_is_never_renewed(store: FakeStore) -> None:
    store.raw_put(f"{P}/subnets/10.5.9.0-24", '{"PublicIP":"1.2.3.4"}')
    m = manager(store, ttl_seconds=2, renew_margin_minutes=0.9 / 60)
    lease = await m.acquire_lease(attrs())
    key = m.subnet_key(lease.subnet, None)
    store.puts.clear()
    task = await run_keeper(m, lease)
    # A renewal would be due at once (a reservation has no expiry): it comes before the keeper's watch is even
    # in place. Then a later event the keeper must act on: our record overwritten, restored without a TTL.
    await own_watch_open(store, key)
    store.raw_put(key, "{not json")
    await wait_until(lambda: store.data[key].value == b'{"PublicIP":"1.2.3.4","PublicIPv6":null}', "restored")
    assert store.puts == [(key, None)]
    await stop(task)


async def test_deleted_own_lease_is_put_back_with_the_same_subnet(
    store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    changed: list[Lease] = []
    m = manager(store, on_lease_changed=changed.append)
    lease = await m.acquire_lease(attrs())
    key = m.subnet_key(lease.subnet, None)
    task = await run_keeper(m, lease)
    await own_watch_open(store, key)
    store.raw_delete(key)
    await wait_until(lambda: bool(changed), "the lease re-acquired")
    assert key in store.data and store.data[key].lease_id != 0
    assert changed[0].subnet == lease.subnet and m.own_lease == changed[0]
    assert "has been revoked" in caplog.text
    await stop(task)


async def test_own_lease_missing_at_start_is_put_back_rather_than_left_unrenewed(store: FakeStore) -> None:
    m = manager(store)
    lease = await m.acquire_lease(attrs())
    key = m.subnet_key(lease.subnet, None)
    store.raw_delete(key)
    task = await run_keeper(m, lease)
    await wait_until(lambda: key in store.data)
    await stop(task)


async def test_own_subnet_taken_by_another_node_raises_lease_revoked(store: FakeStore) -> None:
    m = manager(store)
    lease = await m.acquire_lease(attrs())
    key = m.subnet_key(lease.subnet, None)

    def thief(k: str) -> None:
        store.raw_put(k, '{"PublicIP":"6.6.6.6","PublicIPv6":null}', 0)

    store.before_create = thief
    task = await run_keeper(m, lease)
    await own_watch_open(store, key)
    store.raw_delete(key)
    with pytest.raises(LeaseRevokedError, match="held by another node"):
        await asyncio.wait_for(task, 2)


async def test_own_subnet_no_longer_in_the_config_raises_lease_revoked(store: FakeStore) -> None:
    m = manager(store)
    lease = await m.acquire_lease(attrs())
    task = await run_keeper(m, lease)
    await own_watch_open(store, m.subnet_key(lease.subnet, None))
    store.raw_put(f"{P}/config", '{"Network":"10.6.0.0/16"}')
    store.raw_delete(m.subnet_key(lease.subnet, None))
    with pytest.raises(LeaseRevokedError, match="no longer fits"):
        await asyncio.wait_for(task, 2)


async def test_own_watch_survives_a_lost_watch_and_a_put_reschedules(store: FakeStore) -> None:
    m = manager(store, ttl_seconds=3600, renew_margin_minutes=1)
    lease = await m.acquire_lease(attrs())
    key = m.subnet_key(lease.subnet, None)
    task = await run_keeper(m, lease)
    await own_watch_open(store, key)
    store.break_watches()
    await own_watch_open(store, key, times=2)  # the lost watch is back
    store.puts.clear()
    # Someone re-puts our key with a lease that is about to run out: the keeper must renew at once.
    short, _ = store._grant(1)
    store.raw_put(key, '{"PublicIP":"1.2.3.4","PublicIPv6":null}', short)
    await wait_until(lambda: store.puts == [(key, 3600)])
    await stop(task)


def test_renew_margin_must_be_shorter_than_the_ttl() -> None:
    with pytest.raises(ValueError, match="renew margin"):
        EtcdSubnetManager(FakeStore(), ttl_seconds=3600, renew_margin_minutes=60)


async def test_close_closes_the_store(store: FakeStore) -> None:
    await manager(store).close()
    assert store.closed


# --- never sharing a subnet, repairing the own record ------------------------------------------------------


OURS = b'{"PublicIP":"1.2.3.4","PublicIPv6":null}'


@pytest.mark.parametrize("garbage", ["{not json", '{"PublicIP":"6.6.6.6","PublicIPv6":null}'])
async def test_own_record_overwritten_in_place_is_restored_at_once(store: FakeStore, garbage: str) -> None:
    m = manager(store)
    lease = await m.acquire_lease(attrs())
    key = m.subnet_key(lease.subnet, None)
    task = await run_keeper(m, lease)
    created = store.data[key].create_revision
    store.raw_put(key, garbage)  # an etcdctl put over our key: same create revision, not our value
    await wait_until(lambda: store.data[key].value == OURS)
    assert store.data[key].create_revision == created and store.data[key].lease_id != 0
    assert not task.done()
    await stop(task)


async def test_renewal_never_overwrites_a_subnet_another_node_took(store: FakeStore) -> None:
    m = manager(store, ttl_seconds=2, renew_margin_minutes=0.9 / 60)
    lease = await m.acquire_lease(attrs())
    key = m.subnet_key(lease.subnet, None)
    store.raw_delete(key)  # our lease expired during an outage...
    store.raw_put(key, '{"PublicIP":"6.6.6.6","PublicIPv6":null}', store._grant(60)[0])  # ...another node took it
    taken = store.data[key]
    store.failing.update({"watch", "get_prefix"})  # the watch learns nothing: the renewal finds out alone
    task = await run_keeper(m, dataclasses.replace(lease, expiration=time.time()))  # renewal due at once
    with pytest.raises(LeaseLostError, match="held by another node"):
        await asyncio.wait_for(task, 2)
    assert store.data[key] == taken


async def test_renewal_releases_the_etcd_lease_it_replaces(store: FakeStore) -> None:
    m = manager(store, ttl_seconds=2, renew_margin_minutes=0.9 / 60)
    lease = await m.acquire_lease(attrs())
    key = m.subnet_key(lease.subnet, None)
    first = store.data[key].lease_id
    task = await run_keeper(m, dataclasses.replace(lease, expiration=time.time()))
    await wait_until(lambda: first in store.revoked)
    assert store.data[key].lease_id not in (0, first) and store.data[key].value == OURS
    await stop(task)


async def test_a_restart_reuses_its_lease_and_releases_the_previous_etcd_lease(store: FakeStore) -> None:
    lease = await manager(store).acquire_lease(attrs())
    key = join_key(P, "subnets", lease.key)
    before = store.data[key]
    again = await manager(store).acquire_lease(attrs())  # the next run of the same node
    assert again.subnet == lease.subnet
    assert before.lease_id in store.revoked and store.data[key].lease_id not in (0, before.lease_id)
    assert store.data[key].create_revision == before.create_revision
