"""The etcd subnet manager (spec §6): config, allocation, and the all-leases watch over a ``KVStore``.

Keys and values are exactly what Go flanneld reads and writes, so Python and Go nodes share one etcd.
Renewal and the own-lease watch live in ``lease_keeper``. Where upstream has a known bug (spec §17) we
keep the wire format and fix the behaviour:

* a lost creation race is retried (§17.3);
* a reservation (a key without an etcd lease) is reused without attaching a TTL and is never handed to
  another node (§17.4);
* one undecodable watch event is skipped with a warning instead of wiping every route (§17.5);
* listing and watching use ``<prefix>/subnets/`` (with the slash), so ``<prefix>/subnetsXYZ`` keys are
  not mistaken for leases (§6.6).
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import time
from collections.abc import AsyncIterator, Callable, Sequence
from ipaddress import IPv4Network, IPv6Network

from flannel import metrics
from flannel.backoff import Backoff, RepeatLimiter, repeats
from flannel.config import NetworkConfig, check_network_config, compatible_subnet, parse_network_config
from flannel.errors import ConfigError, DatastoreUnavailableError, FlannelError, LeaseDecodeError
from flannel.lease import UNSET_IPV4, Lease, LeaseAttrs, make_subnet_key, parse_subnet_key_numbers
from flannel.subnet.allocate import overlaps_any, pick_subnets
from flannel.subnet.kvstore import KV, CompactedError, KVStore, WatchEvent, WatchEventType
from flannel.subnet.lease_keeper import EtcdManagerTimings, LeaseKeeper
from flannel.subnet.manager import WatchResult
from flannel.sysrand import Chooser, SystemChooser

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/coreos.com/network"
RACE_RETRIES = 10
LOST_LOG_INTERVAL = 60.0
"""Seconds between two log lines about the same lost connection to etcd."""
CONFIG_NOT_FOUND = "flannel config not found in etcd store. Did you create your config using etcdv3 API?"


def join_key(*parts: str) -> str:
    """Join and clean key paths as Go's ``path.Join`` does (duplicate and trailing slashes removed)."""
    joined = posixpath.normpath(posixpath.join(*parts))
    return "/" + joined.lstrip("/") if joined.startswith("//") else joined


class EtcdSubnetManager:
    """``SubnetManager`` on etcd (v3 API), wire-compatible with Go flanneld v0.28.9."""

    def __init__(
        self,
        store: KVStore,
        prefix: str = DEFAULT_PREFIX,
        *,
        previous_subnet: IPv4Network | None = None,
        previous_ipv6_subnet: IPv6Network | None = None,
        renew_margin_minutes: float = 60,
        ttl_seconds: int = 86400,
        rng: Chooser | None = None,
        clock: Callable[[], float] = time.time,
        timings: EtcdManagerTimings | None = None,
        on_lease_changed: Callable[[Lease], None] | None = None,
    ) -> None:
        if renew_margin_minutes * 60.0 >= ttl_seconds - 1:
            margin = f"{renew_margin_minutes:g} min"
            raise ValueError(f"renew margin ({margin}) must be shorter than the lease TTL ({ttl_seconds}s)")
        self.store = store
        self.config_key = join_key(prefix, "config")
        self.subnets_prefix = join_key(prefix, "subnets")
        self.previous_subnet = previous_subnet
        self.previous_ipv6_subnet = previous_ipv6_subnet
        self.renew_margin = renew_margin_minutes * 60.0
        self.ttl = ttl_seconds
        self.rng: Chooser = rng or SystemChooser()
        self.clock = clock
        self.timings = timings or EtcdManagerTimings()
        self.on_lease_changed = on_lease_changed
        self.own_lease: Lease | None = None
        """The lease this node holds, as last acquired or re-acquired."""
        self.own_kv: KV | None = None
        """The record of ``own_lease`` as this node last wrote it (revisions and etcd lease included)."""
        self._first_listing: tuple[list[Lease], int] | None = None
        """The listing the first acquisition read, handed to the first watch as its snapshot (see there)."""
        self._watched = False

    def subnet_key(self, v4: IPv4Network | None, v6: IPv6Network | None) -> str:
        """The full etcd key of a lease, e.g. ``/coreos.com/network/subnets/10.5.52.0-24``."""
        return join_key(self.subnets_prefix, make_subnet_key(v4, v6))

    async def get_network_config(self) -> NetworkConfig:
        kv = await self.store.get(self.config_key)
        if kv is None:
            raise ConfigError(CONFIG_NOT_FOUND)
        try:
            return check_network_config(parse_network_config(kv.value))
        except ConfigError as exc:
            raise ConfigError(f"{self.config_key}: {exc}", exc.field) from None

    async def remaining_ttl(self, lease_key: str) -> float | None:
        """Seconds left on the etcd lease of a subnet record (``10.244.3.0-24``), for the network map; None for a
        reservation or a record that is gone. Two requests: the record (for its lease id) and ``LeaseTimeToLive``."""
        kv = await self.store.get(join_key(self.subnets_prefix, lease_key))
        if kv is None or not kv.lease_id:
            return None
        ttl = await self.store.time_to_live(kv.lease_id)
        return float(ttl) if ttl > 0 else None

    async def list_leases(self) -> tuple[list[Lease], int]:
        """Every decodable lease under ``<prefix>/subnets/`` and the revision of the listing (§6.2)."""
        leases, _, revision = await self._list()
        return leases, revision

    async def _list(self) -> tuple[list[Lease], list[Lease], int]:
        """Decodable leases, placeholders for subnet keys whose value is unreadable, and the revision.

        Upstream asks etcd for each key's TimeToLive here; remote expirations are never used (only this
        node's own, which the lease keeper tracks), so we skip thousands of round trips and leave them 0.
        Unreadable keys still occupy their subnet: allocation must never hand it out.
        """
        leases: list[Lease] = []
        unreadable: list[Lease] = []

        def each(kv: KV) -> None:  # decoded as read: the raw records of a long listing are never all held
            lease = self._decode(kv)
            if lease is not None:
                leases.append(lease)
            elif (subnets := parse_subnet_key_numbers(kv.key)) is not None:
                unreadable.append(Lease.from_ints(*subnets, revision=kv.mod_revision))

        revision = await self.store.scan_prefix(self.subnets_prefix + "/", each)
        return leases, unreadable, revision

    def _decode(self, kv: KV) -> Lease | None:
        """The lease stored at ``kv``, or ``None`` (with a warning naming the key) when it cannot be read."""
        subnets = parse_subnet_key_numbers(kv.key)  # without the IPv4 network object (issue #16)
        if subnets is None:
            log.warning("skipping %s: not a subnet key", kv.key)
            return None
        try:
            attrs = LeaseAttrs.from_json(kv.value)
        except LeaseDecodeError as exc:
            log.warning("skipping lease %s: %s", kv.key, exc)
            return None
        return Lease.from_ints(*subnets, attrs, 0.0, kv.mod_revision, reserved=kv.lease_id == 0)

    async def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        """Get this node a lease (§6.3): reuse by public IP, else the previous subnet, else a free one."""
        for attempt in range(1, RACE_RETRIES + 1):
            cfg = await self.get_network_config()
            if not cfg.enable_ipv4:
                raise ConfigError(
                    "IPv6-only networks are not supported with etcd: subnet keys need an IPv4 part",
                    "EnableIPv4",
                )
            leases, unreadable, revision = await self._list()
            lease = await self._try_acquire(cfg, leases, unreadable, attrs)
            if lease is not None:
                self.own_lease = lease
                if not self._watched:
                    self._first_listing = (leases, revision)
                return lease
            log.info("subnet taken by another node meanwhile; retrying (attempt %d of %d)", attempt, RACE_RETRIES)
        raise FlannelError("max retries reached trying to acquire a subnet")

    async def _try_acquire(
        self, cfg: NetworkConfig, leases: list[Lease], unreadable: list[Lease], attrs: LeaseAttrs
    ) -> Lease | None:
        """One attempt; ``None`` when another node created the chosen key first."""
        mine = [lease for lease in leases if attrs.public_ip != UNSET_IPV4 and lease.attrs.public_ip == attrs.public_ip]
        for lease in mine:
            key = self.subnet_key(lease.subnet, lease.ipv6_subnet)
            if compatible_subnet(cfg, lease.subnet, lease.ipv6_subnet):
                return await self._reuse(lease, attrs)
            if lease.reserved:
                log.warning("reservation %s for %s does not fit the network config; ignoring it", key, attrs.public_ip)
                continue
            log.info("deleting lease %s of this node: it does not fit the network config", key)
            await self.store.delete(key)
            leases.remove(lease)
        taken = leases + unreadable
        previous = self._previous(cfg, taken)
        chosen = previous or pick_subnets(cfg, taken, self.rng)
        created = await self.create(chosen[0], chosen[1], attrs)
        if created is None and previous is not None:
            log.info("previous subnet %s was taken meanwhile; choosing another", previous[0])
            self.previous_subnet = self.previous_ipv6_subnet = None
        return created

    async def _reuse(self, lease: Lease, attrs: LeaseAttrs) -> Lease | None:
        """Re-publish a lease that already carries our public IP; a reservation stays without TTL.

        The write is conditioned on the record being the one just listed (``None`` when it changed: the
        caller lists again), and the etcd lease of the previous run is revoked rather than left in etcd
        for a day: a node restarted 50 times would otherwise leave 50 of them.
        """
        key = self.subnet_key(lease.subnet, lease.ipv6_subnet)
        kv = await self.store.get(key)
        if kv is None or kv.mod_revision != lease.revision:
            return None
        value = attrs.to_json()
        res = await self.store.replace(key, value, None if lease.reserved else self.ttl, kv.mod_revision)
        if res is None:
            return None
        self.own_kv = KV(key, value.encode(), res.revision, res.lease_id, kv.create_revision)
        if kv.lease_id and kv.lease_id != res.lease_id:
            await self.store.revoke(kv.lease_id)
        if lease.reserved:
            log.info("reusing reservation %s", key)
            return Lease(lease.subnet, lease.ipv6_subnet, attrs, 0.0, res.revision, reserved=True)
        log.info("reusing lease %s", key)
        return Lease(lease.subnet, lease.ipv6_subnet, attrs, self.clock() + res.ttl, res.revision)

    def _previous(self, cfg: NetworkConfig, leases: Sequence[Lease]) -> tuple[IPv4Network, IPv6Network | None] | None:
        """The subnet(s) from the previous subnet file, when still free and config-compatible."""
        v4 = self.previous_subnet
        if v4 is None:
            return None
        v6 = self.previous_ipv6_subnet if cfg.enable_ipv6 else None
        holder = overlaps_any(v4, v6, leases)
        if holder is not None:
            log.error("previous subnet %s is held by lease %s; not reusing it", v4, holder.key)
            return None
        if not compatible_subnet(cfg, v4, v6):
            log.error(
                "previous subnet %s%s does not fit the network config; not reusing it",
                v4,
                f" {v6}" if v6 else "",
            )
            return None
        return v4, v6

    async def create(self, v4: IPv4Network, v6: IPv6Network | None, attrs: LeaseAttrs) -> Lease | None:
        """Atomically create the lease key with a fresh TTL; ``None`` when the key already exists."""
        key = self.subnet_key(v4, v6)
        value = attrs.to_json()
        res = await self.store.create(key, value, self.ttl)
        if res is None:
            return None
        self.own_kv = KV(key, value.encode(), res.revision, res.lease_id, res.revision)
        log.info("allocated lease %s", key)
        return Lease(v4, v6, attrs, self.clock() + res.ttl, res.revision)

    async def watch_leases(self) -> AsyncIterator[WatchResult]:
        """A snapshot, then incremental events (§6.5).

        A lost watch resumes from the last revision seen, so nothing is missed and nothing is re-listed;
        only compaction (the revision is gone) forces a fresh listing and snapshot. Every retry backs off,
        and the back-off resets only once events flow again.
        """
        backoff = Backoff(self.timings.backoff_initial, self.timings.backoff_max)
        quiet = RepeatLimiter(LOST_LOG_INTERVAL)  # an outage of hours is a line a minute, not one per retry
        revision: int | None = None
        lost = False
        while True:
            try:
                if revision is None:
                    # At start-up the acquisition has just listed every lease: that listing and a watch from
                    # its revision on miss nothing (our own write comes as an event), and listing and decoding
                    # thousands of leases a second time was a fifth of the time to the first programmed peer.
                    first, self._first_listing, self._watched = self._first_listing, None, True
                    leases, revision = first if first is not None else await self.list_leases()
                    snapshot = tuple(leases)
                    # Nothing in this frame may keep the listed leases past the yield: as peers change, the
                    # backend lets go of them, and 10 minutes of churn held 4 MiB of stale leases here.
                    del first, leases
                    yield WatchResult(snapshot=snapshot)
                    del snapshot
                watch = self.store.watch(self.subnets_prefix + "/", revision + 1, prefix=True)
                async with contextlib.aclosing(watch):
                    async for batch in watch:
                        if lost:  # the first answer (etcd's "created") of a re-opened watch: it is back
                            metrics.WATCH_RECONNECTS.inc()
                            log.info("lease watch on %s resumed", self.subnets_prefix)
                            quiet.reset()
                            lost = False
                        if not batch:
                            continue
                        backoff.reset()
                        revision = max(revision, *(ev.kv.mod_revision for ev in batch))
                        events = [e for ev in batch if (e := self._event(ev)) is not None]
                        if events:
                            metrics.EVENT_LATENCY.received()
                            yield WatchResult(events=tuple(events))
            except CompactedError as exc:
                metrics.WATCH_ERRORS.labels("compacted").inc()
                lost = True
                log.warning("lease watch on %s: %s; re-listing in %.1fs", self.subnets_prefix, exc, backoff.next_delay)
                revision = None
                await backoff.sleep()
            except DatastoreUnavailableError as exc:
                metrics.WATCH_ERRORS.labels("unavailable").inc()
                lost = True
                held = quiet.check("lost")
                if held is not None:
                    log.warning("lease watch on %s lost (%s); retrying every %.1fs at most%s", self.subnets_prefix,
                                exc, backoff.next_delay, repeats(held))
                await backoff.sleep()

    def _event(self, ev: WatchEvent) -> tuple[bool, Lease] | None:
        """The lease event for one watch event; ``None`` (with a warning naming the key) if undecodable."""
        if ev.type is WatchEventType.DELETE:
            subnets = parse_subnet_key_numbers(ev.kv.key)
            if subnets is None:
                log.warning("ignoring deletion of %s: not a subnet key", ev.kv.key)
                return None
            return False, Lease.from_ints(*subnets, revision=ev.kv.mod_revision)
        lease = self._decode(ev.kv)
        return None if lease is None else (True, lease)

    async def complete_lease(self, lease: Lease) -> None:
        """Renew the own lease and re-acquire it if it disappears; runs until cancelled (§6.4).

        Raises ``LeaseRevokedError`` when the lease was lost and its subnet cannot be had again
        (``LeaseLostError`` when another node holds it now).
        """
        key = self.subnet_key(lease.subnet, lease.ipv6_subnet)
        held = self.own_kv if self.own_kv is not None and self.own_kv.key == key else None
        if held is None:  # a lease this manager did not acquire itself: learn the record from etcd
            kv = await self.store.get(key)
            held = kv if kv is not None else KV(key, b"", 0)
        await LeaseKeeper(self, lease, held).run()

    async def close(self) -> None:
        await self.store.close()
