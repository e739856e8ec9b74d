"""The udp backend (spec §10.4): a TUN device ``flannel0`` and a userspace forwarder on UDP port 8285.

Wire-compatible with upstream: a plain datagram is one inner IPv4 packet, the destination port is our own
``Port`` (so every node must use the same one), and upstream's leases (``PublicIP`` only) are routed like
any other. Beyond upstream: datagrams from unknown sources are dropped, every datagram is checked, the device
and its route are reconciled (a deleted ``flannel0`` is re-created), and peers that advertise
``{"Offload":1}`` in their lease's ``BackendData`` exchange whole segmentation super-packets (see
``udp_packet``). ``"Offload": false`` in the Backend section turns that off and leaves a node that speaks only
upstream's format.

Like upstream, the udp backend processes every lease, whatever its ``BackendType``.

The socket is bound to the external interface's address, not to its index, so it rides out a flap or a
re-creation of the interface: it stays bound while the address is away (sends fail and are counted) and
receives again as soon as the address is back. The network still follows the interface (``external.py``)
so that coming back with *another* address, which the socket can never receive on, is logged as an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from flannel import metrics
from flannel.backend.backend_config import bool_key, int_key, read_section
from flannel.backend.base import BackendContext, ExternalInterface, LeasedNetwork, require_ipv4_only
from flannel.backend.external import ExternalLink
from flannel.backend.reconcile_loop import ReconcileLoop
from flannel.backend.route_plane import is_peer_subnet
from flannel.backend.udp_forwarder import Forwarder, Peer, PeerTable
from flannel.backend.udp_packet import MAX_UDP_PAYLOAD, OFFLOAD_HDR_LEN, OFFLOAD_VERSION
from flannel.backend.udp_tun import TunDevice, open_tun
from flannel.backend.vxlan_device import ensure_address
from flannel.config import NetworkConfig
from flannel.errors import FlannelError
from flannel.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.netlink import Link, LinkEvent, Netlink, RouteReplace
from flannel.netlink.consts import RT_SCOPE_UNIVERSE
from flannel.subnet.lease_guard import LeaseGuard
from flannel.subnet.lease_tracker import LeaseTracker
from flannel.subnet.manager import WatchResult

log = logging.getLogger(__name__)

DEFAULT_PORT = 8285
UDP_OVERHEAD = 28
"""Outer IPv4 and UDP headers."""
OFFLOAD_DATA = json.dumps({"Offload": OFFLOAD_VERSION}, separators=(",", ":"))
SOCKET_BUFFER = 4 << 20
"""Socket buffer bytes each way: a few dozen 64 KiB super-packets of slack for bursts."""
GSO_MAX_SIZE = MAX_UDP_PAYLOAD - OFFLOAD_HDR_LEN
"""Cap on the super-packets ``flannel0`` is handed, so that one fits a UDP datagram with the offload header.
(No cap on the segment count: capping it makes the kernel cut up every full-size super-packet.)"""
GSO_MAX_SEGS = 65535
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0
"""From ``<linux/in.h>`` (Python's ``socket`` only exposes them on some builds)."""


@dataclass(frozen=True)
class UDPConfig:
    """Settings of the udp data plane."""

    port: int = DEFAULT_PORT
    """UDP port to listen on and send to; must be the same on every node."""
    offload: bool = True
    """Exchange whole super-packets with peers that advertise it (plain upstream format with the others)."""


def parse_udp_config(backend: dict[str, Any]) -> UDPConfig:
    """Read the ``Backend`` object (keys case-insensitive); raise ``ConfigError`` naming a bad key."""
    raw = read_section("udp", backend, ["Port", "Offload"])
    return UDPConfig(port=int_key(raw, "Port", DEFAULT_PORT, 1, 65535), offload=bool_key(raw, "Offload", True))


def peer_offload(lease: Lease) -> bool:
    """Whether a lease advertises the offload header. Anything else (absent, another backend's data, or
    malformed) means the plain format, which every node speaks: a bad BackendData costs speed, not routes."""
    text = lease.attrs.backend_data
    if not text:
        return False
    try:
        data = json.loads(text)
    except ValueError:
        log.warning("lease %s: BackendData is not valid JSON; using the plain udp format with it", lease.key)
        return False
    version = data.get("Offload") if isinstance(data, dict) else None
    return isinstance(version, int) and not isinstance(version, bool) and version >= OFFLOAD_VERSION


class UDPBackend:
    """Checks the config; registration acquires the lease, then builds the device and the socket."""

    def __init__(self, ctx: BackendContext, config: NetworkConfig) -> None:
        self.cfg = parse_udp_config(config.backend)
        require_ipv4_only("udp", ctx, config)
        self.ctx = ctx

    async def register_network(self, config: NetworkConfig) -> UDPNetwork:
        ext = self.ctx.ext_iface
        assert ext.ext_addr is not None and ext.iface_addr is not None and config.network is not None
        mtu = ext.mtu - UDP_OVERHEAD
        attrs = LeaseAttrs(public_ip=ext.ext_addr, backend_data=OFFLOAD_DATA if self.cfg.offload else None)
        lease = await self.ctx.subnet_manager.acquire_lease(attrs)
        if lease.subnet is None:
            raise FlannelError(f"lease {lease.key} has no IPv4 subnet")
        sock = bind_socket(ext.iface_addr, self.cfg.port)
        network = UDPNetwork(Netlink(), lease, mtu, config.network, sock, self.cfg, self.ctx.reconcile_interval,
                             ext=ext)
        network.tracker.guard = LeaseGuard.for_network(config, lease)  # udp programs every lease, whatever its type
        try:
            network.setup_device()
        except BaseException:
            network.close()
            raise
        return network


def bind_socket(addr: IPv4Address, port: int) -> socket.socket:
    """The forwarder's socket, bound to the interface address (not the public IP), as upstream."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for opt, forced in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
            try:
                sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        # Super-packets are larger than the underlay MTU: let the kernel fragment them instead of refusing.
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        sock.bind((str(addr), port))
    except OSError as exc:
        sock.close()
        raise FlannelError(f"failed to bind the udp backend socket to {addr}:{port}: {exc}") from None
    return sock


class UDPNetwork(LeasedNetwork):
    """The running udp network: the forwarder, its peer table, and the device kept as it should be."""

    def __init__(self, nl: Netlink, lease: Lease, mtu: int, cluster: IPv4Network, sock: socket.socket,
                 cfg: UDPConfig, reconcile_interval: float, ext: ExternalInterface | None = None) -> None:
        super().__init__(lease, mtu)
        assert lease.subnet is not None
        self.nl = nl
        self.cluster = cluster
        self.own_subnet: IPv4Network = lease.subnet
        self.cfg = cfg
        self.reconcile_interval = reconcile_interval
        self.table = PeerTable()
        self.tracker = LeaseTracker(lease)
        self.tun: TunDevice | None = None
        self.sock = sock
        self.forwarder: Forwarder | None = None
        self._loop: ReconcileLoop | None = None
        self.ext = ExternalLink(ext) if ext is not None else None
        """Followed only to say when it comes back with another address than the socket's."""

    @property
    def tun_addr(self) -> IPv4Address:
        """The device's address: the lease's network address, as a /32."""
        return self.own_subnet.network_address

    def setup_device(self) -> Link:
        """Open the TUN (if not open) and give it its MTU, address, link state and the route to the cluster."""
        if self.tun is None:
            self.tun = open_tun(offload=self.cfg.offload)
            log.info("opened TUN device %s%s", self.tun.name, " with offloads" if self.cfg.offload else "")
        link = self.nl.link_by_name(self.tun.name)
        if link is None:
            raise FlannelError(f"TUN device {self.tun.name} vanished right after creation")
        if link.mtu != self.mtu:
            self.nl.set_link_mtu(link.index, self.mtu)
            log.info("link set %s mtu %d", link.name, self.mtu)
        if self.cfg.offload:
            self.nl.set_link_gso_limits(link.index, GSO_MAX_SIZE, GSO_MAX_SEGS)
        ensure_address(self.nl, link, self.tun_addr, self.cluster)
        route = RouteReplace(dst=self.cluster, gateway=None, oif=link.index, scope=RT_SCOPE_UNIVERSE)
        err = self.nl.apply([route])[0]
        if err is not None:
            raise err
        log.info("route replace %s dev %s", self.cluster, link.name)
        return link

    def handle_events(self, events: list[LeaseEvent]) -> None:
        """Update the peer table. Idempotent: replaying an event changes nothing."""
        for ev in events:
            lease = ev.lease
            (metrics.LEASE_REMOVED if ev.type is EventType.REMOVED else metrics.LEASE_ADDED).inc()
            if ev.type is EventType.REMOVED:
                if self.table.remove(lease.key) is not None:
                    log.info("udp peer del %s (lease %s)", lease.subnet, lease.key)
                continue
            subnet, public = lease.subnet, lease.attrs.public_ip
            if subnet is None or int(public) == 0:
                continue
            if not is_peer_subnet(subnet, self.cluster, self.own_subnet):
                log.warning("skipping lease %s: subnet %s is not a peer subnet of the network %s", lease.key,
                            subnet, self.cluster)
                continue
            peer = Peer(key=lease.key, network=int(subnet.network_address), prefixlen=subnet.prefixlen,
                        addr=(str(public), self.cfg.port), offload=self.cfg.offload and peer_offload(lease))
            if self.table.get(lease.key) != peer:
                self.table.set(peer)
                log.info("udp peer add %s via %s:%d%s (lease %s)", subnet, public, self.cfg.port,
                         " offload" if peer.offload else "", lease.key)

    def reconcile(self) -> int:
        """Re-create a deleted device and restore its settings and route; returns the repairs made."""
        assert self.tun is not None and self.forwarder is not None
        if self.ext is not None:
            self.ext.refresh(self.nl)
        link = self.nl.link_by_name(self.tun.name)
        if link is None or link.kind not in ("tun", "") or self.forwarder.broken:
            log.warning("TUN device %s is %s; re-creating it", self.tun.name,
                        "missing" if link is None else "unusable")
            metrics.RECONCILE_REPAIRS.labels("link_add").inc()
            self.forwarder.reopen_tun(lambda: open_tun(offload=self.cfg.offload))
            self.tun = self.forwarder.tun
            self.setup_device()
            return 1
        repairs = 0
        if link.mtu != self.mtu or not link.up or not any(
                a.address == self.tun_addr and a.prefixlen == 32 for a in self.nl.addresses(link.index)):
            log.warning("TUN device %s lost its settings (mtu %d, up %s); restoring them", link.name, link.mtu,
                        link.up)
            repairs += 1
        if not any(r.dst == self.cluster for r in self.nl.routes(oif=link.index)):
            log.warning("route %s dev %s is missing; re-adding it", self.cluster, link.name)
            repairs += 1
        if repairs:
            metrics.RECONCILE_REPAIRS.labels("udp_device").inc(repairs)
            self.setup_device()
        return repairs

    async def run(self, results: AsyncIterator[WatchResult]) -> None:
        assert self.tun is not None
        loop = ReconcileLoop(self.reconcile, self.reconcile_interval)
        self._loop = loop
        self.forwarder = Forwarder(self.tun, self.sock, self.tun_addr, self.table, self._tun_lost)
        self.forwarder.attach(asyncio.get_running_loop())
        metrics.KNOWN_PEERS.set_function(lambda: len(self.table))
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(loop.kick_on_link_events(self._kicks, addresses=self.ext is not None),
                               name="udp-link-monitor")
                tg.create_task(loop.run(), name="udp-reconcile")
                async for result in results:
                    self.handle_events(self.tracker.apply(result))
                    metrics.EVENT_LATENCY.programmed()
        finally:
            self.forwarder.detach()

    def _kicks(self, ev: LinkEvent) -> bool:
        """A deleted TUN device is re-created at once; a change of the external interface is looked at."""
        if ev.kind == "del" and self.tun is not None and ev.name == self.tun.name:
            return True
        return self.ext is not None and self.ext.concerns(ev)

    def _tun_lost(self, exc: OSError) -> None:
        log.warning("TUN device %s failed (%s); re-creating it", self.tun.name if self.tun else "?", exc)
        if self._loop is not None:
            self._loop.kick()

    def close(self) -> None:
        """Release the socket, the device and the netlink socket (the device disappears with its descriptor)."""
        if self.tun is not None:
            self.tun.close()
        self.sock.close()
        self.nl.close()
