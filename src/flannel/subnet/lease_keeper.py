"""Keeping this node's etcd lease alive (spec §6.4): renewal, the own-key watch, and re-acquisition.

Upstream renews shortly before expiry and shuts the daemon down (exit 0) when its key disappears; if the
key is already missing when the watch starts it silently stops renewing (§17.7). Here a lost key is put
back, preferring — in fact requiring — the same subnet, because running pods hold addresses from it. Only
when the subnet cannot be had again does ``LeaseRevokedError`` end the daemon, with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flannel import metrics
from flannel.backoff import Backoff
from flannel.config import compatible_subnet
from flannel.errors import DatastoreUnavailableError, LeaseDecodeError, LeaseRevokedError
from flannel.lease import Lease, LeaseAttrs
from flannel.subnet.kvstore import KV, CompactedError, PutResult, WatchEventType

if TYPE_CHECKING:
    from flannel.subnet.etcd_manager import EtcdSubnetManager

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EtcdManagerTimings:
    """Delays of the etcd manager; tests shrink them."""

    renew_retry: float = 60.0
    """Seconds before retrying a failed renewal (upstream: 1 min)."""
    backoff_initial: float = 0.1
    """First delay before re-watching after a lost watch."""
    backoff_max: float = 5.0
    """Cap of the doubling re-watch delay."""


class _Expiry:
    """When the own key expires: learnt by the own-key watch, used by the renewal loop."""

    def __init__(self, lease: Lease) -> None:
        self.at = lease.expiration
        self.reserved = lease.reserved
        self.changed = asyncio.Event()
        metrics.LEASE_EXPIRY.set(self.at)

    def set(self, at: float, reserved: bool) -> None:
        self.at, self.reserved = at, reserved
        metrics.LEASE_EXPIRY.set(at)
        self.changed.set()


class LeaseKeeper:
    """Runs ``EtcdSubnetManager.complete_lease`` for one lease."""

    def __init__(self, manager: EtcdSubnetManager, lease: Lease) -> None:
        self._m = manager
        self._lease = lease

    async def run(self) -> None:
        """Keep the lease; when it is lost, get the same subnet back and keep that. Never returns."""
        while True:
            reason = await self._keep()
            lease = self._lease
            log.warning("Lease for %s has been revoked (%s); re-acquiring the same subnet", lease.key, reason)
            self._lease = await self._reacquire(lease)
            self._m.own_lease = self._lease
            log.info("re-acquired lease %s", self._lease.key)
            if self._m.on_lease_changed is not None:
                self._m.on_lease_changed(self._lease)

    async def _keep(self) -> str:
        """Renew and watch the current lease until its key is gone; return why it went."""
        expiry = _Expiry(self._lease)
        key = self._m.subnet_key(self._lease.subnet, self._lease.ipv6_subnet)
        renew = asyncio.create_task(self._renew_loop(key, expiry), name=f"renew {key}")
        watch = asyncio.create_task(self._watch_own(key, expiry), name=f"watch {key}")
        try:
            await asyncio.wait({renew, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch.done():
                return watch.result()
            renew.result()  # raises what ended the renewal loop
            raise RuntimeError("lease renewal loop ended")
        finally:
            for task in (renew, watch):
                task.cancel()
            await asyncio.gather(renew, watch, return_exceptions=True)

    async def _renew_loop(self, key: str, expiry: _Expiry) -> None:
        """Renew at expiration − margin with a new etcd lease and a plain put, as upstream does."""
        value = self._lease.attrs.to_json()
        retry = self._m.timings.renew_retry
        while True:
            expiry.changed.clear()
            if expiry.reserved:  # a reservation never expires: nothing to renew
                await expiry.changed.wait()
                continue
            delay = expiry.at - self._m.renew_margin - self._m.clock()
            if delay > 0:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that races the event
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await expiry.changed.wait()
                    continue  # the watch learnt a new expiry: reschedule
            try:
                res = await self._m.store.put(key, value, self._m.ttl)
            except DatastoreUnavailableError as exc:
                when = "1 min" if retry == 60 else f"{retry:g}s"
                log.error("Error renewing lease (trying again in %s): %s", when, exc)
                await asyncio.sleep(retry)
                continue
            expiry.set(self._m.clock() + res.ttl, reserved=False)
            log.info("renewed lease %s for %ds", key, res.ttl)

    async def _watch_own(self, key: str, expiry: _Expiry) -> str:
        """Follow the own key; return when it is deleted, expired, or found missing."""
        backoff = Backoff(self._m.timings.backoff_initial, self._m.timings.backoff_max)
        while True:
            try:
                # Watch from the store's current revision, not the key's own (possibly day-old) one, which
                # etcd may have compacted away: that would fail at once and spin.
                kvs, revision = await self._m.store.get_prefix(key)
                kv = next((item for item in kvs if item.key == key), None)
                if kv is None:
                    return "key not found"
                await self._note(kv, expiry)
                watch = self._m.store.watch(key, revision + 1, prefix=False)
                async with contextlib.aclosing(watch):
                    async for batch in watch:
                        if batch:
                            backoff.reset()
                        for ev in batch:
                            if ev.type is WatchEventType.DELETE:
                                return "deleted or expired"
                            await self._note(ev.kv, expiry)
            except CompactedError as exc:
                log.info("watch on own lease %s: %s; re-reading it in %.1fs", key, exc, backoff.next_delay)
                await backoff.sleep()
            except DatastoreUnavailableError as exc:
                log.warning("watch on own lease %s lost (%s); retrying in %.1fs", key, exc, backoff.next_delay)
                await backoff.sleep()

    async def _note(self, kv: KV, expiry: _Expiry) -> None:
        """Learn the key's expiry from its etcd lease; a key without one is a reservation."""
        if kv.lease_id == 0:
            expiry.set(0.0, reserved=True)
            return
        ttl = await self._m.store.time_to_live(kv.lease_id)
        expiry.set(self._m.clock() + max(ttl, 0), reserved=False)

    async def _reacquire(self, lost: Lease) -> Lease:
        """Put the lost lease back with a fresh TTL if its subnet is still ours to take."""
        backoff = Backoff(self._m.timings.backoff_initial, self._m.timings.backoff_max)
        while True:
            try:
                return await self._try_reacquire(lost)
            except DatastoreUnavailableError as exc:
                log.warning("re-acquiring %s failed (%s); retrying in %.1fs", lost.key, exc, backoff.next_delay)
                await backoff.sleep()

    async def _try_reacquire(self, lost: Lease) -> Lease:
        cfg = await self._m.get_network_config()
        if not compatible_subnet(cfg, lost.subnet, lost.ipv6_subnet):
            raise LeaseRevokedError(
                f"lease for {lost.key} was revoked and the subnet no longer fits the network config"
            )
        key = self._m.subnet_key(lost.subnet, lost.ipv6_subnet)
        value = lost.attrs.to_json()
        res: PutResult | None = await self._m.store.create(key, value, self._m.ttl)
        if res is None:
            # Someone wrote the key first. If it carries our public IP (our own renewal raced the
            # deletion, or an operator re-created it for us), it is ours: take it over.
            holder = await self._m.store.get(key)
            if holder is None or not self._ours(holder, lost.attrs):
                raise LeaseRevokedError(f"lease for {lost.key} was revoked and the subnet is now held by another node")
            res = await self._m.store.put(key, value, None if holder.lease_id == 0 else self._m.ttl)
        reserved = res.lease_id == 0
        expiration = 0.0 if reserved else self._m.clock() + res.ttl
        return Lease(lost.subnet, lost.ipv6_subnet, lost.attrs, expiration, res.revision, reserved)

    @staticmethod
    def _ours(kv: KV, attrs: LeaseAttrs) -> bool:
        try:
            return LeaseAttrs.from_json(kv.value).public_ip == attrs.public_ip
        except LeaseDecodeError:
            return False
