"""Keeping this node's etcd lease (spec §6.4): renewal, the own-key watch, repair, re-acquisition.

Upstream renews with a plain put and exits when its key disappears. Here the keeper holds one fact, the
record it last wrote (``held``: value, etcd lease, revisions), and every change it sees on its key, or
fails to make, is compared with that:

* a renewal is a transaction conditioned on the key's last change still being ours, so a renewal can never
  overwrite a record someone else wrote meanwhile;
* the key overwritten in place (same create revision: garbage, another public IP) is our record damaged:
  it is restored at once;
* the key gone (deleted, or expired during a long outage) is put back with the same subnet, because
  running pods hold addresses from it;
* the key created anew by another node (a new create revision, another public IP) means the subnet went to
  someone else while we could not renew: the node must stop using it. ``LeaseLostError`` ends the daemon
  (exit 1), and the next start acquires a new subnet; two nodes never share one.

A datastore that is away is waited out: nothing here gives up because etcd does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from flannel import metrics
from flannel.backoff import Backoff, RepeatLimiter, repeats
from flannel.config import NetworkConfig, compatible_subnet
from flannel.errors import DatastoreUnavailableError, LeaseDecodeError, LeaseLostError, LeaseRevokedError
from flannel.lease import Lease, LeaseAttrs
from flannel.subnet.kvstore import KV, CompactedError, KVStore, PutResult, WatchEventType

log = logging.getLogger(__name__)

LOST_LOG_INTERVAL = 60.0
"""Seconds between two log lines about the same lost watch: a long outage costs a line a minute."""


@dataclass(frozen=True)
class EtcdManagerTimings:
    """Delays of the etcd manager; tests shrink them."""

    renew_retry: float = 60.0
    """Seconds before retrying a failed renewal (upstream: 1 min)."""
    backoff_initial: float = 0.1
    """First delay before re-watching after a lost watch."""
    backoff_max: float = 2.0
    """Cap of the doubling re-watch delay (upstream: 5 s): once etcd is back, the node is ready within it."""


@dataclass(frozen=True, slots=True)
class _Seen:
    """The own key as the watch saw it at ``revision``: ``kv`` is ``None`` when the key did not exist."""

    kv: KV | None
    revision: int
    fresh: bool = False
    """A read after a (re)connection rather than a watch event: it is the truth even when its revision is
    behind ours, as after etcd was restored from an older snapshot."""


class LeaseOwner(Protocol):
    """What the keeper reads and updates on the manager it works for (``EtcdSubnetManager``).

    Spelled out here so that the keeper does not import the manager that imports it.
    """

    store: KVStore
    renew_margin: float
    ttl: int
    clock: Callable[[], float]
    timings: EtcdManagerTimings
    on_lease_changed: Callable[[Lease], None] | None
    own_lease: Lease | None
    own_kv: KV | None

    async def get_network_config(self) -> NetworkConfig: ...


class LeaseKeeper:
    """Runs ``EtcdSubnetManager.complete_lease`` for one lease."""

    def __init__(self, manager: LeaseOwner, lease: Lease, held: KV) -> None:
        self._m = manager
        self._lease = lease
        self._key = held.key
        self._value = lease.attrs.to_json()
        self._held = held
        self._reserved = lease.reserved
        self._expiry = lease.expiration
        self._retry_at = 0.0
        metrics.LEASE_EXPIRY.set(self._expiry)

    async def run(self) -> None:
        """Keep the lease until cancelled; raises ``LeaseLostError``/``LeaseRevokedError`` when it is gone."""
        seen: asyncio.Queue[_Seen] = asyncio.Queue()
        watcher = asyncio.create_task(self._watch_own(seen), name=f"watch {self._key}")
        try:
            while True:
                delay = self._next_renewal() - self._m.clock()
                if delay > 0:
                    waiter = asyncio.ensure_future(seen.get())
                    done, _ = await asyncio.wait({waiter, watcher}, timeout=delay, return_when="FIRST_COMPLETED")
                    if watcher in done:
                        watcher.result()
                        raise RuntimeError("own-lease watch ended")
                    if waiter in done:
                        await self._step(waiter.result())
                        continue
                    waiter.cancel()
                await self._step(None)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    def _next_renewal(self) -> float:
        if self._reserved:  # a reservation never expires: nothing to renew
            return float("inf")
        return max(self._expiry - self._m.renew_margin, self._retry_at)

    async def _step(self, seen: _Seen | None) -> None:
        """Renew (``None``) or react to what the watch saw; a datastore failure postpones the renewal."""
        try:
            if seen is None:
                await self._renew()
            else:
                await self._observe(seen)
        except DatastoreUnavailableError as exc:
            retry = self._m.timings.renew_retry
            when = "1 min" if retry == 60 else f"{retry:g}s"
            log.error("Error renewing lease (trying again in %s): %s", when, exc)
            self._retry_at = self._m.clock() + retry

    async def _renew(self) -> None:
        """Renew on a fresh etcd lease, only if the key is still exactly as we left it."""
        held = self._held
        res = await self._m.store.replace(self._key, self._value, self._m.ttl, held.mod_revision)
        if res is None:
            log.warning("own lease %s changed since we wrote it; checking it before renewing", self._key)
            await self._resolve(await self._m.store.get(self._key))
            return
        await self._wrote(res, held.create_revision)
        log.info("renewed lease %s for %ds", self._key, res.ttl)

    async def _observe(self, seen: _Seen) -> None:
        """React to the key as the watch saw it; our own writes and stale events change nothing."""
        held = self._held
        if seen.kv is not None and (seen.kv.mod_revision, seen.kv.create_revision) == (
            held.mod_revision, held.create_revision
        ):
            return
        if not seen.fresh and seen.revision <= held.mod_revision:
            return
        self._retry_at = 0.0  # the store answers again: a postponed renewal may go ahead
        await self._resolve(seen.kv)

    async def _resolve(self, kv: KV | None) -> None:
        """Bring the key back to our record, or find out that the subnet is no longer ours."""
        for _ in range(10):  # each round lost a race against another writer; the next one sees its write
            if kv is None:
                log.warning("Lease for %s has been revoked (key gone); re-acquiring the same subnet", self._key)
                if await self._recreate():
                    return
            elif kv.value == self._value.encode() and (kv.lease_id == 0 or await self._alive(kv.lease_id)):
                self._adopt(kv)  # our record, re-written by someone (an operator, an older us): keep it
                return
            elif kv.create_revision == self._held.create_revision or self._ours(kv):
                what = "overwritten" if kv.create_revision == self._held.create_revision else "re-created"
                log.warning("own lease %s was %s with %r; restoring it", self._key, what, kv.value[:200])
                ttl = None if self._reserved else self._m.ttl
                res = await self._m.store.replace(self._key, self._value, ttl, kv.mod_revision)
                if res is not None:
                    metrics.OWN_LEASE_REPAIRS.inc()
                    await self._wrote(res, kv.create_revision)
                    return
            else:
                raise LeaseLostError(
                    f"lease {self._key} expired or was deleted and the subnet is now held by another node "
                    f"({kv.value[:200]!r}); stopping so that a restart acquires a new subnet"
                )
            kv = await self._m.store.get(self._key)
        raise DatastoreUnavailableError(f"{self._key} keeps changing under us; trying again later")

    async def _recreate(self) -> bool:
        """Create the key again with the same subnet; False when someone created it first."""
        cfg = await self._m.get_network_config()
        lost = self._lease
        if not compatible_subnet(cfg, lost.subnet, lost.ipv6_subnet):
            raise LeaseRevokedError(
                f"lease for {lost.key} was revoked and the subnet no longer fits the network config"
            )
        ttl = None if self._reserved else self._m.ttl
        res = await self._m.store.create(self._key, self._value, ttl)
        if res is None:
            return False
        await self._wrote(res, res.revision)
        log.info("re-acquired lease %s", self._key)
        self._m.own_lease = self._lease
        if self._m.on_lease_changed is not None:
            self._m.on_lease_changed(self._lease)
        return True

    async def _wrote(self, res: PutResult, create_revision: int) -> None:
        """Our write succeeded: it is the record we hold now, and the etcd lease it replaced is released."""
        old = self._held.lease_id
        self._held = KV(self._key, self._value.encode(), res.revision, res.lease_id, create_revision)
        self._m.own_kv = self._held
        self._reserved = res.lease_id == 0
        self._set_expiry(self._m.clock() + res.ttl if res.lease_id else 0.0)
        if old and old != res.lease_id:
            await self._m.store.revoke(old)  # else it lingers in etcd for a day with no key on it

    def _adopt(self, kv: KV) -> None:
        self._held = kv
        self._m.own_kv = kv
        self._reserved = kv.lease_id == 0

    async def _alive(self, lease_id: int) -> bool:
        """Whether the etcd lease of a record equal to ours still runs; learns the expiry when it does."""
        ttl = await self._m.store.time_to_live(lease_id)
        if ttl > 0:
            self._set_expiry(self._m.clock() + ttl)
        return ttl > 0

    def _set_expiry(self, at: float) -> None:
        self._expiry = at
        self._retry_at = 0.0
        metrics.LEASE_EXPIRY.set(at)

    def _ours(self, kv: KV) -> bool:
        """A record carrying our public IP: ours to take over (an operator re-created it for us)."""
        try:
            return LeaseAttrs.from_json(kv.value).public_ip == self._lease.attrs.public_ip
        except LeaseDecodeError:
            return False

    async def _watch_own(self, seen: asyncio.Queue[_Seen]) -> None:
        """Report every state of the own key: a fresh read after each (re)connection, then each change."""
        backoff = Backoff(self._m.timings.backoff_initial, self._m.timings.backoff_max)
        quiet = RepeatLimiter(LOST_LOG_INTERVAL)
        key = self._key
        while True:
            try:
                # Watch from the store's current revision, not the key's own (possibly day-old) one, which
                # etcd may have compacted away: that would fail at once and spin.
                kvs, revision = await self._m.store.get_prefix(key)
                kv = next((item for item in kvs if item.key == key), None)
                seen.put_nowait(_Seen(kv, revision, fresh=True))
                quiet.reset()
                watch = self._m.store.watch(key, revision + 1, prefix=False)
                async with contextlib.aclosing(watch):
                    async for batch in watch:
                        if batch:
                            backoff.reset()
                        for ev in batch:
                            gone = ev.type is WatchEventType.DELETE
                            seen.put_nowait(_Seen(None if gone else ev.kv, ev.kv.mod_revision))
            except CompactedError as exc:
                log.info("watch on own lease %s: %s; re-reading it in %.1fs", key, exc, backoff.next_delay)
                await backoff.sleep()
            except DatastoreUnavailableError as exc:
                held = quiet.check("lost")
                if held is not None:
                    log.warning("watch on own lease %s lost (%s); retrying every %.1fs at most%s", key, exc,
                                backoff.next_delay, repeats(held))
                await backoff.sleep()
