"""The running wireguard network: lease events become peers, and a reconcile keeps the devices as wanted.

Each device keeps the peer it wants per lease key (``WGDevice.desired``), so an event is a difference
against what was wanted before: replaying one changes nothing, a lease whose key changed has its old peer
removed (upstream only removes peers by the key of a *removed* lease, so a key change leaks the old one), and
a lease of another backend type or with unusable data never disturbs the others.

The reconcile (every ``--reconcile-interval``, and at once when one of the devices is deleted) reads each
device back and repairs what differs: the device itself (re-made and re-keyed; ``wireguard-go`` is started
again), its key and port, peers missing or changed by hand, peers no lease wants (only after the first
snapshot, before which "not wanted" does not mean "stale"), its addresses and its route.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from flannel import metrics
from flannel.backend.base import LeasedNetwork
from flannel.backend.reconcile_loop import ReconcileLoop
from flannel.backend.wireguard_device import stop_device
from flannel.backend.wireguard_key import b64
from flannel.backend.wireguard_model import DeviceChange, PeerSpec, endpoint_text
from flannel.backend.wireguard_peers import PeerRules, peers_for
from flannel.backend.wireguard_setup import WGDevice, configure_change, ensure_layer3
from flannel.backend.wireguard_uapi import UAPIError
from flannel.config import NetworkConfig
from flannel.errors import FlannelError, LeaseDecodeError
from flannel.lease import EventType, Lease, LeaseEvent
from flannel.netlink import LinkEvent, Netlink, NetlinkError
from flannel.secret import Secret
from flannel.subnet.lease_guard import LeaseGuard
from flannel.subnet.lease_tracker import LeaseTracker
from flannel.subnet.manager import WatchResult

log = logging.getLogger(__name__)

BACKEND_TYPE = "wireguard"
RESTART_POLL = 0.2
"""Seconds between looks at a ``wireguard-go`` that is starting (the reconcile itself never waits)."""


def peer_text(peer: PeerSpec) -> str:
    """``peer <key> endpoint <ep> allowed-ips <nets>``, as ``wg set`` would take it (no secret in it)."""
    ips = ",".join(sorted(str(n) for n in peer.allowed_ips))
    return f"peer {b64(peer.public_key)} endpoint {endpoint_text(peer.endpoint)} allowed-ips {ips}"


class WireGuardNetwork(LeasedNetwork):
    """Applies lease events to the devices' peers and keeps them reconciled."""

    def __init__(self, nl: Netlink, lease: Lease, mtu: int, devices: list[WGDevice], key: Secret[bytes],
                 rules: PeerRules, config: NetworkConfig, reconcile_interval: float,
                 remove_on_shutdown: bool = False) -> None:
        super().__init__(lease, mtu)
        self.nl = nl
        self.devices = devices
        self.key = key
        self.rules = rules
        self.reconcile_interval = reconcile_interval
        self.remove_on_shutdown = remove_on_shutdown
        self.tracker = LeaseTracker(lease, LeaseGuard.for_network(config, lease, BACKEND_TYPE))
        self.synced = False
        self._loop: ReconcileLoop | None = None

    # -- lease events --------------------------------------------------------------------------------

    def handle_events(self, events: list[LeaseEvent]) -> None:
        """Turn lease events into one peer change per device. Idempotent: replaying an event changes nothing."""
        sets: list[dict[bytes, PeerSpec]] = [{} for _ in self.devices]
        removes: list[set[bytes]] = [set() for _ in self.devices]
        for ev in events:
            lease = ev.lease
            (metrics.LEASE_ADDED if ev.type is EventType.ADDED else metrics.LEASE_REMOVED).inc()
            foreign = ev.type is EventType.ADDED and lease.attrs.backend_type != BACKEND_TYPE
            if foreign:
                log.info("ignoring non-%s lease %s (BackendType %r)", BACKEND_TYPE, lease.key,
                         lease.attrs.backend_type)
            wanted: tuple[PeerSpec | None, PeerSpec | None] = (None, None)
            if ev.type is EventType.ADDED and not foreign:
                try:
                    wanted = peers_for(self.rules, lease)
                except (LeaseDecodeError, ValueError) as exc:
                    log.warning("skipping lease %s: %s (its current peer is left as it is)", lease.key, exc)
                    continue
            for i, dev in enumerate(self.devices):
                new, old = wanted[dev.slot], dev.desired.get(lease.key)
                if new == old:
                    continue
                if new is None:
                    dev.desired.pop(lease.key, None)
                else:
                    dev.desired[lease.key] = new
                    sets[i][new.public_key] = new
                if old is not None and (new is None or old.public_key != new.public_key):
                    removes[i].add(old.public_key)
        for i, dev in enumerate(self.devices):
            still = {p.public_key for p in dev.desired.values()}
            self._send(dev, list(sets[i].values()), sorted(removes[i] - still), reasons=None)
        metrics.EVENT_LATENCY.programmed()

    def _send(self, dev: WGDevice, peers: list[PeerSpec], remove: list[bytes], reasons: list[str] | None) -> int:
        """Apply one peer change to ``dev`` and log it; a failure is logged and left to the reconcile."""
        if not peers and not remove:
            return 0
        try:
            dev.driver.set(DeviceChange(peers=tuple(peers), remove=tuple(remove)))
        except (UAPIError, NetlinkError, OSError) as exc:
            log.warning("programming %d peer(s) on %s failed (%s); the next reconcile retries",
                        len(peers) + len(remove), dev.name, exc)
            return 0
        level = logging.WARNING if reasons is not None else logging.INFO
        lines = [f"wg set {dev.name} {peer_text(p)}" for p in peers]
        lines += [f"wg set {dev.name} peer {b64(k)} remove" for k in remove]
        if reasons is not None:
            lines = [f"{line} (repair: {why})" for line, why in zip(lines, reasons, strict=True)]
            metrics.RECONCILE_REPAIRS.labels("wireguard_peer").inc(len(lines))
        log.log(level, "%s", "\n".join(lines))
        return len(lines)

    # -- reconcile -----------------------------------------------------------------------------------

    def reconcile(self) -> int:
        """Make every device match the leases; returns the repairs made."""
        return sum(self._reconcile_device(dev) for dev in self.devices)

    def _reconcile_device(self, dev: WGDevice) -> int:
        if dev.driver.starting:
            return self._remake(dev, "is starting")
        link = self.nl.link_by_name(dev.name)
        if link is None or not dev.driver.owns(link):
            return self._remake(dev, "is missing" if link is None else f"is of kind {link.kind!r}")
        repairs = 0
        if link.index != dev.index:
            log.warning("device %s was replaced (index %d, was %d)", dev.name, link.index, dev.index)
            dev.index = link.index
        if link.mtu != dev.mtu:
            self.nl.set_link_mtu(link.index, dev.mtu)
            log.warning("link set %s mtu %d (was %d) (repair)", dev.name, dev.mtu, link.mtu)
            repairs += 1
        state = dev.driver.get()
        if state.private_key != self.key or state.listen_port != dev.port:
            log.warning("device %s has %s; configuring it again", dev.name,
                        "another private key" if state.private_key != self.key else f"port {state.listen_port}")
            dev.driver.set(configure_change(self.key, dev.port, list(dev.desired.values())))
            metrics.RECONCILE_REPAIRS.labels("wireguard_device").inc()
            repairs += 1
        else:
            wanted = {p.public_key: p for p in dev.desired.values()}
            fix, why = [], []
            for key, peer in wanted.items():
                have = state.peers.get(key)
                diff = ["missing"] if have is None else peer.differs(have)
                if diff:
                    fix.append(peer)
                    why.append(", ".join(diff) if have is not None else "missing")
            stale = sorted(k for k in state.peers if k not in wanted) if self.synced else []
            repairs += self._send(dev, fix, stale, why + ["no lease has this key"] * len(stale))
        return repairs + ensure_layer3(self.nl, dev)

    def _remake(self, dev: WGDevice, what: str) -> int:
        """Make the device again with its key, port and every wanted peer (``wireguard-go``: over several rounds,
        the first starting it, a later one finding it ready)."""
        if not dev.driver.starting:
            link = self.nl.link_by_name(dev.name)
            if link is not None:
                log.warning("device %s %s; deleting it to make it again", dev.name, what)
                self.nl.delete_link(link.index)
            else:
                log.warning("device %s %s; making it again", dev.name, what)
        if not dev.driver.create():
            asyncio.get_running_loop().call_later(RESTART_POLL, self._kick)
            return 0
        link = self.nl.link_by_name(dev.name)
        if link is None:
            raise FlannelError(f"{dev.name} vanished right after it was made")
        dev.index = link.index
        if link.mtu != dev.mtu:
            self.nl.set_link_mtu(link.index, dev.mtu)
        dev.driver.set(configure_change(self.key, dev.port, list(dev.desired.values())))
        log.warning("device %s made again with %d peer(s)", dev.name, len(dev.desired))
        metrics.RECONCILE_REPAIRS.labels("link_add").inc()
        return 1 + ensure_layer3(self.nl, dev)

    def _kick(self) -> None:
        if self._loop is not None:
            self._loop.kick()

    def kicks(self, ev: LinkEvent) -> bool:
        """A deleted device is made again at once, not at the next periodic reconcile."""
        return ev.kind == "del" and any(ev.name == d.name for d in self.devices)

    # -- running -------------------------------------------------------------------------------------

    async def run(self, results: AsyncIterator[WatchResult]) -> None:
        metrics.KNOWN_PEERS.set_function(lambda: len(self.tracker.leases))
        loop = self._loop = ReconcileLoop(self.reconcile, self.reconcile_interval)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(loop.kick_on_link_events(self.kicks), name="wireguard-link-monitor")
                tg.create_task(loop.run(), name="wireguard-reconcile")
                async for result in results:
                    self.handle_events(self.tracker.apply(result))
                    if result.snapshot is not None and not self.synced:
                        self.synced = True
                        loop.kick()
        finally:
            if self.remove_on_shutdown:
                for dev in self.devices:
                    stop_device(self.nl, dev.name)
