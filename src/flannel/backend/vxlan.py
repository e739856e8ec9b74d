"""The vxlan backend (spec §10.2): devices, lease registration, and the loop that programs peers.

Beyond upstream (⚠ #1070, #2554): a deleted device is recreated with the MAC already advertised and every
entry is re-added; a periodic reconcile repairs any drift between the kernel and the leases; and one
undecodable lease is skipped on its own instead of disturbing other peers.

The device's ``dev`` is the external interface's index, and the kernel deletes a vxlan device whose lower
device goes away. So the network follows the external interface (``external.py``): when it is re-created
with a new index, the device is rebuilt on the new index with the same MAC, VNI and local address, and the
entries are re-added; while it is down or gone nothing is repaired, and its return kicks a reconcile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass

from flannel import metrics
from flannel.backend.base import BackendContext, ExternalInterface, LeasedNetwork
from flannel.backend.external import ExternalLink
from flannel.backend.peer_events import apply_lease_events
from flannel.backend.reconcile_loop import ReconcileLoop
from flannel.backend.route_plane import apply_ops
from flannel.backend.vxlan_config import VXLAN_OVERHEAD, VXLANConfig, parse_vxlan_config, v6_device_mtu
from flannel.backend.vxlan_device import VXLANDeviceSpec, ensure_address, ensure_device
from flannel.backend.vxlan_plane import VXLANPlane
from flannel.config import NetworkConfig
from flannel.errors import FlannelError
from flannel.gojson import compact
from flannel.lease import Lease, LeaseAttrs, LeaseEvent
from flannel.netlink import LinkEvent, Netlink
from flannel.netlink.transport import drain
from flannel.subnet.lease_guard import LeaseGuard
from flannel.subnet.lease_tracker import LeaseTracker
from flannel.subnet.manager import WatchResult

log = logging.getLogger(__name__)


@dataclass
class _Device:
    """A device this node owns, and how to rebuild it exactly as advertised."""

    spec: VXLANDeviceSpec
    plane: VXLANPlane


class VXLANBackend:
    """Creates the vxlan devices and registers this node's lease."""

    def __init__(self, ctx: BackendContext, config: NetworkConfig) -> None:
        self.ctx = ctx
        self.cfg: VXLANConfig = parse_vxlan_config(config.backend)

    async def register_network(self, config: NetworkConfig) -> VXLANNetwork:
        ext = self.ctx.ext_iface
        mtu = (self.cfg.mtu or ext.mtu) - VXLAN_OVERHEAD
        nl = Netlink()
        specs: dict[int, VXLANDeviceSpec] = {}
        data: dict[int, str] = {}
        # Kube mode keeps the MACs the node advertised before (its backend-data annotations), so that peers'
        # entries stay valid across a restart that has to recreate the device (spec §10.2).
        stored = getattr(self.ctx.subnet_manager, "stored_vtep_macs", None)
        mac4, mac6 = stored() if stored is not None else (None, None)
        if config.enable_ipv4:
            specs[socket.AF_INET] = self._spec(self.cfg.device_name, ext.iface_addr, mtu, mac4)
        if config.enable_ipv6:
            specs[socket.AF_INET6] = self._spec(self.cfg.v6_device_name, ext.iface_v6_addr,
                                                v6_device_mtu(mtu, ext.mtu), mac6)
        links = {}
        for fam, spec in specs.items():
            link = ensure_device(nl, spec)
            links[fam] = link
            # The advertised MAC is the kernel's, so a recreated device keeps the one peers have programmed.
            specs[fam] = spec = dataclasses.replace(spec, mac=link.mac)
            data[fam] = compact({"VNI": self.cfg.vni, "VtepMAC": link.mac})
        attrs = LeaseAttrs(
            public_ip=ext.ext_addr if config.enable_ipv4 and ext.ext_addr else LeaseAttrs().public_ip,
            public_ipv6=ext.ext_v6_addr if config.enable_ipv6 else None,
            backend_type="vxlan",
            backend_data=data.get(socket.AF_INET),
            backend_v6_data=data.get(socket.AF_INET6),
        )
        lease = await self.ctx.subnet_manager.acquire_lease(attrs)
        devices: list[_Device] = []
        for fam, spec in specs.items():
            subnet = lease.subnet if fam == socket.AF_INET else lease.ipv6_subnet
            cluster = config.network if fam == socket.AF_INET else config.ipv6_network
            if subnet is None or cluster is None:
                raise FlannelError(f"lease {lease.key} has no subnet for the enabled family of {spec.name}")
            link = links[fam]
            ensure_address(nl, link, subnet.network_address, config.network)
            after = nl.link_by_name(spec.name)
            if after is None or after.mac != spec.mac:
                raise FlannelError(f"{spec.name}'s mac address wanted: {spec.mac}, but got: {after and after.mac}")
            plane = VXLANPlane(nl=nl, family=fam, dev_name=spec.name, cluster=cluster, own_subnet=subnet,
                               direct_routing=self.cfg.direct_routing, dev_index=link.index)
            if self.cfg.nexthop_objects:
                plane.use_nexthops()
            devices.append(_Device(spec=spec, plane=plane))
        return VXLANNetwork(nl, lease, mtu, devices, config, self.ctx.reconcile_interval, ext=ext)

    def _spec(self, name: str, local: object, mtu: int, mac: str | None = None) -> VXLANDeviceSpec:
        # ⚠ upstream sets local to the public IP, which breaks behind NAT; the interface address is what the
        # kernel can actually send from. Peers still address us by the public IP in our lease.
        return VXLANDeviceSpec(name=name, vni=self.cfg.vni, underlay_index=self.ctx.ext_iface.index,
                               local=local, port=self.cfg.port, learning=self.cfg.learning,  # type: ignore[arg-type]
                               gbp=self.cfg.gbp, mtu=mtu, mac=mac)


class VXLANNetwork(LeasedNetwork):
    """The running vxlan network: applies lease events and keeps the kernel reconciled."""

    def __init__(self, nl: Netlink, lease: Lease, mtu: int, devices: list[_Device], config: NetworkConfig,
                 reconcile_interval: float, ext: ExternalInterface | None = None) -> None:
        self.nl = nl
        super().__init__(lease, mtu)
        self.devices = devices
        self.config = config
        self.reconcile_interval = reconcile_interval
        self.tracker = LeaseTracker(lease, LeaseGuard.for_network(config, lease, "vxlan", vtep_macs=True))
        self.synced = False
        self.ext = ExternalLink(ext) if ext is not None else None
        """The underlay the devices sit on (None: left as it was at start-up)."""

    @property
    def dev_names(self) -> dict[int, str]:
        """Device names by index, for readable log lines."""
        return {d.plane.dev_index: d.spec.name for d in self.devices}

    @property
    def peers(self) -> int:
        """Number of remote leases currently programmed (on any family)."""
        return len({k for d in self.devices for k in d.plane.desired})

    def handle_events(self, events: list[LeaseEvent]) -> None:
        """Apply lease events to every plane. Idempotent: replaying an event changes nothing."""
        apply_lease_events(self.nl, events, "vxlan", [d.plane for d in self.devices], self.dev_names)

    def reconcile(self) -> int:
        """Make the kernel match the leases: recreate missing devices, repair drift. Returns repairs made."""
        return int(drain(self.reconcile_steps()))

    def reconcile_steps(self) -> Generator[None, None, int]:
        """``reconcile`` one kernel table at a time: it pauses (yields) before each table's dump, so that the
        reconcile loop can let lease events through meanwhile. Each step compares and repairs against the
        leases as they are when it runs, so an event handled in between is never undone."""
        repairs = 0
        if not self.follow_external():
            return 0
        for dev in self.devices:
            plane = dev.plane
            link = self.nl.link_by_name(dev.spec.name)
            lower = link.vxlan.underlay_index if link is not None and link.vxlan is not None else None
            if (link is None or link.index != plane.dev_index or link.mac != dev.spec.mac
                    or (lower and dev.spec.underlay_index and lower != dev.spec.underlay_index)):
                # Also when it was recreated or re-addressed behind our back: peers send to the MAC we advertised.
                what = "is missing" if link is None else (
                    f"changed (index {link.index}, mac {link.mac}, dev index {lower})")
                log.warning("device %s %s; recreating it with mac %s", dev.spec.name, what, dev.spec.mac)
                link = ensure_device(self.nl, dev.spec)
                plane.dev_index = link.index
                repairs += 1
                metrics.RECONCILE_REPAIRS.labels("link_add").inc()
            ensure_address(self.nl, link, plane.own_subnet.network_address, self.config.network)
            if not self.synced or (self.ext is not None and not self.ext.up):
                continue  # until the first snapshot, "not desired" does not mean "stale"; a down underlay
                # refuses DirectRouting routes, and tunnel entries carry nothing until it is up (it kicks then)
            for drift_of in plane.drift_steps():
                yield
                drift = yield from drift_of()
                if drift:
                    reasons = [r for r, _ in drift]
                    ops = [op for _, op in drift]
                    apply_ops(self.nl, ops, reasons, names=self.dev_names)
                    repairs += len(drift)
        return repairs

    def follow_external(self) -> bool:
        """Find the external interface again; when it has a new index, rebuild the devices on it (the kernel
        deleted them with the old one). False while it is gone: a vxlan device cannot be made without it."""
        if self.ext is None:
            return True
        old = self.ext.refresh(self.nl)
        if old is not None:
            for dev in self.devices:
                dev.spec = dataclasses.replace(dev.spec, underlay_index=self.ext.index)
                log.warning("device %s follows %s to index %d (was %d)", dev.spec.name, self.ext.iface.name,
                            self.ext.index, old)
        return self.ext.present

    def kicks(self, ev: LinkEvent) -> bool:
        """Which monitor events call for an immediate reconcile: one of our devices deleted, or any change of
        the external interface (down, up, re-created, addresses)."""
        if ev.kind == "del" and any(ev.name == d.spec.name for d in self.devices):
            return True
        return self.ext is not None and self.ext.concerns(ev)

    async def run(self, results: AsyncIterator[WatchResult]) -> None:
        metrics.KNOWN_PEERS.set_function(lambda: len(self.tracker.leases))
        loop = ReconcileLoop(self.reconcile, self.reconcile_interval, steps=self.reconcile_steps)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(loop.kick_on_link_events(self.kicks, addresses=self.ext is not None),
                           name="vxlan-link-monitor")
            tg.create_task(loop.run(), name="vxlan-reconcile")
            async for result in results:
                self.handle_events(self.tracker.apply(result))
                if result.snapshot is not None and not self.synced:
                    self.synced = True
                    loop.kick()
