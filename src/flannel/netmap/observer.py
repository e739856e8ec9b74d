"""flanneld's own view of the fabric, kept fresh for the network map and the probe metrics.

One subsystem (``run``) that, every ``interval`` seconds, probes every peer over the overlay
(``flannel.probe``), compares the kernel with the leases (``flannel.ctl.drift``: the same comparison
``flannelctl status`` makes, itself the backend's reconcile logic with its repairs only described) and checks
the leases for conflicts (``lease_guard.find_collisions``, the rules each node's guard applies). The results go
to the metrics (``flannel_probe_*``, ``flannel_drift_entries``, ``flannel_lease_conflicts``) and to
``document()``, which the map server answers ``/map.json`` with.

The leases come from the daemon's own lease watch, tapped (``tap``) on its way to the backend: no second watch
on the store, and the map shows exactly what this flanneld knows. Nothing here changes any state: the
observer reads the kernel and sends echoes, that is all.

Bounded: the probes of one round run at most ``probe.DEFAULT_CONCURRENCY`` at once, one round at a time, and a
round that outlasts the interval delays the next rather than piling up. The drift check is one dump each of
routes, neighbours and FDB entries over netlink (milliseconds at hundreds of peers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from flannel import metrics, probe
from flannel.backoff import RepeatLimiter, repeats
from flannel.config import NetworkConfig
from flannel.lease import Lease
from flannel.netmap.expiry import LeaseExpiry, Lookup
from flannel.netmap.model import DriftEntry, Inputs, build
from flannel.readiness import READINESS
from flannel.subnet.lease_guard import Family, find_collisions
from flannel.subnet.lease_tracker import LeaseTracker
from flannel.subnet.manager import WatchResult

log = logging.getLogger(__name__)

MAP_PROBE_INTERVAL = 5.0
"""Seconds between rounds when only ``--map-port`` asks for them (``--probe-interval`` 0)."""
PAGE_REFRESH = 2.0
"""Seconds between the page's fetches of ``/map.json``."""
LOG_INTERVAL = 300.0


def families(config: NetworkConfig, own: Lease) -> list[Family]:
    """The guard's families over the whole listing (own lease included, so no own subnet to protect)."""
    out = []
    if config.enable_ipv4 and config.network is not None:
        out.append(Family(v6=False, network=config.network, own=None, subnet_len=config.subnet_len or None))
    if config.enable_ipv6 and config.ipv6_network is not None:
        out.append(Family(v6=True, network=config.ipv6_network, own=None,
                          subnet_len=config.ipv6_subnet_len or None))
    return out


class Observer:
    """Probes, drift and conflicts of this node's view, refreshed every ``interval`` seconds."""

    def __init__(self, config: NetworkConfig, own: Lease, interval: float, drift: bool = True,
                 lease_ttl: float = 0.0, ttl_lookup: Lookup | None = None) -> None:
        """``ttl_lookup`` (etcd mode: ``EtcdSubnetManager.remaining_ttl``) and ``lease_ttl`` (the TTL nodes grant)
        give the peers' lease expiry (``expiry.py``); without them (kube mode) it is "n/a"."""
        self.config = config
        self.own = own
        self.interval = interval
        self.check_drift = drift
        self.tracker = LeaseTracker(own)
        self.probes: dict[tuple[str, int], probe.ProbeResult] = {}
        self.drift: list[DriftEntry] = []
        self.drift_checked = False
        self.drift_reason = "not checked yet"
        self.conflicts: list[tuple[str, str, str]] = []
        self.expiry = LeaseExpiry(lease_ttl, ttl_lookup)
        self._log = RepeatLimiter(LOG_INTERVAL)

    async def tap(self, results: AsyncIterator[WatchResult]) -> AsyncIterator[WatchResult]:
        """Pass the lease watch through unchanged, keeping a copy of the leases it carries."""
        async for result in results:
            self.tracker.apply(result)
            self.expiry.saw(result)
            yield result

    def targets(self) -> list[probe.Target]:
        """The probe targets of every remote lease, one per family the network has."""
        return [t for lease in self.tracker.leases for t in probe.lease_targets(self.config, lease)]

    async def run(self) -> None:
        """Refresh forever (a supervised subsystem: cancelled at shutdown)."""
        while True:
            started = time.monotonic()
            try:
                await self.refresh()
            except OSError as exc:  # out of descriptors or buffers: weather; try again next round
                self._warn(f"network map refresh failed: {exc}")
            await asyncio.sleep(max(self.interval - (time.monotonic() - started), 0.5))

    async def refresh(self) -> None:
        """One round: probes, then drift and conflicts, then the metrics."""
        try:
            results = await probe.probe_all(self.targets())
        except probe.ProbeUnavailable as exc:
            self._warn(f"peer probes disabled: {exc}")
            results = []
        fresh = {(r.peer, r.family): r for r in results}
        for peer, fam in self.probes.keys() - fresh.keys():
            for gauge in (metrics.PROBE_REACHABLE, metrics.PROBE_RTT, metrics.PROBE_PATH_MTU):
                gauge.remove(peer, f"ipv{fam}")
        self.probes = fresh
        for r in results:
            labels = (r.peer, f"ipv{r.family}")
            metrics.PROBES.labels("reachable" if r.reachable else r.state).inc()
            if r.no_target:  # neither reachable nor not: no sample, so FlannelPeerUnreachable stays quiet
                metrics.PROBE_REACHABLE.remove(*labels)
            else:
                metrics.PROBE_REACHABLE.labels(*labels).set(1 if r.reachable else 0)
            if r.reachable:
                metrics.PROBE_RTT.labels(*labels).set(r.rtt_seconds or 0.0)
                metrics.PROBE_PATH_MTU.labels(*labels).set(r.path_mtu_bytes or 0)
            else:
                metrics.PROBE_RTT.remove(*labels)
                metrics.PROBE_PATH_MTU.remove(*labels)
        metrics.PROBE_LAST.set(time.time())
        leases = self.tracker.leases
        if self.check_drift:
            self._check_drift(leases)
        own = [self.own]
        collisions = find_collisions(families(self.config, self.own), own + sorted(leases, key=lambda x: x.revision),
                                     vtep_macs=self.config.backend_type.lower() == "vxlan")
        self.conflicts = [(lease.key, reason, why) for lease, reason, why in collisions]
        metrics.LEASE_CONFLICTS.set(len(self.conflicts))
        await self.expiry.resolve()

    def _check_drift(self, leases: list[Lease]) -> None:
        from flannel.ctl import drift
        from flannel.netlink import Netlink

        try:
            with Netlink() as nl:
                found = drift.check(nl, self.config, self.own, leases)
        except (drift.DriftUnchecked, OSError) as exc:
            self.drift, self.drift_checked, self.drift_reason = [], False, str(exc)
            return
        self.drift = [DriftEntry(d.what, d.fix) for d in found]
        self.drift_checked, self.drift_reason = True, ""
        metrics.DRIFT_ENTRIES.set(len(self.drift))

    def _warn(self, message: str) -> None:
        held = self._log.check(message)
        if held is not None:
            log.warning("%s%s", message, repeats(held))

    def document(self) -> dict[str, Any]:
        """The ``/map.json`` document, as of now."""
        expiry = metrics.LEASE_EXPIRY.labels().get()
        return build(Inputs(
            own=self.own, own_expiry=expiry, peers=self.tracker.leases,
            network=str(self.config.network) if self.config.network else "", backend_type=self.config.backend_type,
            ready=READINESS.ready, ready_reason=READINESS.explain(),
            probes={peer: r for (peer, fam), r in self.probes.items() if fam == 4},
            probes_v6={peer: r for (peer, fam), r in self.probes.items() if fam == 6},
            drift_checked=self.drift_checked, drift_reason=self.drift_reason, drift=self.drift,
            conflicts=self.conflicts, probe_interval=self.interval, refresh=PAGE_REFRESH,
            peer_expiry={lease.key: self.expiry.expiry(lease) for lease in self.tracker.leases}
            if self.expiry.supported else None))
