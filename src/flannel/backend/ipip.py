"""The ipip backend (spec §10.5): one IP-in-IP device, ``flannel.ipip``, and a route per peer.

Each remote subnet is routed ``via <remote PublicIP> dev flannel.ipip onlink``: the kernel encapsulates to
the gateway address. With ``DirectRouting`` a peer on the same segment is routed over the external interface
instead (still onlink), as host-gw would. The routes are the shared route network's (``route_network.py``):
the only ipip-specific parts are the device and the ``route_for`` hook.

The kernel needs ipip support (``CONFIG_NET_IPIP``, module ``ipip``). Without it the device cannot be made,
and flanneld stops at start-up with an error that says so, before it acquires a lease.

Beyond upstream, as for vxlan: a deleted (or replaced) ``flannel.ipip`` is rebuilt at runtime, at once on
the kernel's link event and otherwise by the periodic reconcile, with the same local address, MTU and /32
address; the peer routes, which the kernel dropped with the old device, are then re-added via the new one.
The device has no underlay link of its own, so it survives the external interface's re-creation; the
DirectRouting routes through that interface follow its new index (``external.py``, via the route network).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from flannel.backend.backend_config import bool_key, read_section
from flannel.backend.base import BackendContext, ExternalInterface, require_ipv4_only
from flannel.backend.route_network import RouteNetwork, RoutePlane
from flannel.backend.route_plane import PeerRoute, is_on_link
from flannel.backend.vxlan_device import ensure_address
from flannel.config import NetworkConfig
from flannel.errors import FlannelError
from flannel.lease import Lease, LeaseAttrs
from flannel.netlink import IptunSpec, Link, Netlink, NetlinkError
from flannel.netlink.links import ipip_describe
from flannel.subnet.lease_guard import LeaseGuard

log = logging.getLogger(__name__)

DEVICE_NAME = "flannel.ipip"
IPIP_OVERHEAD = 20
"""The outer IPv4 header."""
NO_KERNEL_SUPPORT = "the kernel has no ipip support (CONFIG_NET_IPIP / module ipip)"
_NO_SUPPORT_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT})
_FIELDS = ["DirectRouting"]


@dataclass(frozen=True)
class IPIPConfig:
    """Settings of the ipip data plane."""

    direct_routing: bool = False
    """Route peers on the same segment over the external interface instead of the tunnel."""


def parse_ipip_config(backend: Mapping[str, Any]) -> IPIPConfig:
    """Read the ``Backend`` object (keys case-insensitive); raise ``ConfigError`` naming a bad key."""
    raw = read_section("ipip", backend, _FIELDS)
    return IPIPConfig(direct_routing=bool_key(raw, "DirectRouting"))


@dataclass
class IPIPRoutePlane(RoutePlane):
    """IPv4 routes to peers: through the tunnel device, or (DirectRouting, peer on-link) the external one."""

    nl: Netlink | None = None
    """For the DirectRouting on-link test."""
    tunnel_index: int = 0
    """``flannel.ipip``'s index."""
    direct_routing: bool = False

    def route_for(self, lease: Lease) -> PeerRoute | None:
        plain = super().route_for(lease)  # the checks, and the route via the public IP on the external iface
        if plain is None:
            return None
        if self.direct_routing and self.nl is not None and is_on_link(self.nl, plain.gateway):
            return PeerRoute(dst=plain.dst, gateway=plain.gateway, oif=self.oif, onlink=True)
        return PeerRoute(dst=plain.dst, gateway=plain.gateway, oif=self.tunnel_index, onlink=True)


def ensure_ipip_device(nl: Netlink, spec: IptunSpec) -> Link:
    """Adopt a matching ``flannel.ipip`` or (re)create it; fail clearly when the kernel cannot make one."""
    link = nl.link_by_name(spec.name)
    if link is not None:
        if link.kind != "ipip" or link.iptun is None:
            raise FlannelError(f"{spec.name} exists but is of type {link.kind or 'unknown'!r}, not ipip; "
                               "flanneld does not delete it: remove it by hand")
        info = link.iptun
        if info.local != spec.local or info.remote is not None:
            log.warning("existing device %s has local %s remote %s, want local %s remote any; recreating it",
                        spec.name, info.local or "any", info.remote or "any", spec.local)
            nl.delete_link(link.index)
            log.info("link del %s", spec.name)
        else:
            if link.mtu != spec.mtu:
                nl.set_link_mtu(link.index, spec.mtu)
                log.info("link set %s mtu %d (was %d)", spec.name, spec.mtu, link.mtu)
            log.info("adopting existing ipip device %s", spec.name)
            return nl.link_by_name(spec.name) or link
    try:
        link = nl.create_ipip(spec)
    except NetlinkError as exc:
        if exc.errno in _NO_SUPPORT_ERRNOS:
            raise FlannelError(f"{NO_KERNEL_SUPPORT}: {exc}") from None
        raise FlannelError(f"failed to create the ipip device: {exc}") from None
    log.info("%s", ipip_describe(spec))
    return link


class IPIPBackend:
    """Checks the config, creates the device, registers the lease; the route network does the rest."""

    def __init__(self, ctx: BackendContext, config: NetworkConfig) -> None:
        self.cfg = parse_ipip_config(config.backend)
        require_ipv4_only("ipip", ctx, config)
        self.ctx = ctx

    async def register_network(self, config: NetworkConfig) -> IPIPNetwork:
        ext = self.ctx.ext_iface
        mtu = ext.mtu - IPIP_OVERHEAD
        if mtu <= 0:
            raise FlannelError(f"the ipip device MTU would be {mtu} (interface {ext.name} MTU {ext.mtu})")
        nl = Netlink()
        spec = IptunSpec(name=DEVICE_NAME, local=ext.iface_addr, mtu=mtu)
        try:
            link = ensure_ipip_device(nl, spec)
            attrs = LeaseAttrs(public_ip=ext.ext_addr or IPv4Address(0), backend_type="ipip")
            lease = await self.ctx.subnet_manager.acquire_lease(attrs)
            if lease.subnet is None or config.network is None:
                raise FlannelError(f"lease {lease.key} has no IPv4 subnet")
            ensure_address(nl, link, lease.subnet.network_address, config.network)
        except BaseException:
            nl.close()
            raise
        plane = IPIPRoutePlane(family=socket.AF_INET, cluster=config.network, own_subnet=lease.subnet,
                               oif=ext.index, nl=nl, tunnel_index=link.index,
                               direct_routing=self.cfg.direct_routing)
        network = IPIPNetwork(nl, lease, mtu, plane, spec, self.ctx.reconcile_interval, ext.name, ext=ext)
        network.tracker.guard = LeaseGuard.for_network(config, lease, "ipip")
        return network


def device_fault(link: Link | None, spec: IptunSpec, index: int) -> str | None:
    """Why the kernel's ``flannel.ipip`` is not the device the routes were made for; None when it is.

    A new index means the device was deleted and made again (by someone else): the routes died with the old
    one. A changed local address or MTU is repaired in place or by recreation, as at start-up.
    """
    if link is None:
        return "is missing"
    if link.index != index:
        return f"was replaced (index {link.index}, was {index})"
    if link.kind != "ipip" or link.iptun is None:
        return f"is of type {link.kind or 'unknown'!r}"
    if link.iptun.local != spec.local or link.iptun.remote is not None:
        return f"has local {link.iptun.local or 'any'} remote {link.iptun.remote or 'any'}"
    if link.mtu != spec.mtu:
        return f"has mtu {link.mtu}"
    return None


def repoint(plane: IPIPRoutePlane, index: int) -> int:
    """Make the tunnel routes, wanted and future, go via the device's new ``index``; returns how many moved.

    DirectRouting routes, on the external interface, stay as they are.
    """
    old, plane.tunnel_index = plane.tunnel_index, index
    moved = 0
    for key, route in list(plane.desired.items()):
        if route.oif == old and old != index:
            plane.desired[key] = dataclasses.replace(route, oif=index)
            moved += 1
    return moved


class IPIPNetwork(RouteNetwork):
    """The shared route network, plus keeping ``flannel.ipip`` itself in place."""

    def __init__(self, nl: Netlink, lease: Lease, mtu: int, plane: IPIPRoutePlane, spec: IptunSpec,
                 reconcile_interval: float, ext_name: str, ext: ExternalInterface | None = None) -> None:
        super().__init__(nl, lease, mtu, "ipip", [plane], reconcile_interval,
                         names={plane.tunnel_index: spec.name, plane.oif: ext_name}, ext=ext)
        if not isinstance(plane.own_subnet, IPv4Network) or not isinstance(plane.cluster, IPv4Network):
            raise FlannelError("the ipip backend is IPv4 only")
        self.plane = plane
        self.spec = spec
        """How to make the device again: its name, local address and MTU."""
        self.address = plane.own_subnet.network_address
        """The device's own /32: the lease's network address."""
        self.cluster = plane.cluster

    def reconcile(self) -> int:
        """Rebuild the device if it is gone or changed, then repair the routes; returns the repairs made."""
        try:
            repairs = self.ensure_device()
        except FlannelError as exc:  # e.g. another kind of device took the name: never deleted, tried again
            log.warning("cannot repair %s, retrying in %gs: %s", self.spec.name, self.reconcile_interval, exc)
            return 0
        return repairs + super().reconcile()

    def ensure_device(self) -> int:
        """Rebuild or adopt the device when ``device_fault`` finds one, and keep its /32 address and link up."""
        link = self.nl.link_by_name(self.spec.name)
        fault = device_fault(link, self.spec, self.plane.tunnel_index)
        repairs = 0
        if link is None or fault is not None:
            log.warning("device %s %s; repairing it (local %s, mtu %d)", self.spec.name, fault, self.spec.local,
                        self.spec.mtu)
            link = ensure_ipip_device(self.nl, self.spec)
            self.names.pop(self.plane.tunnel_index, None)
            self.names[link.index] = self.spec.name
            moved = repoint(self.plane, link.index)
            if moved:
                log.info("%d peer route(s) now go via %s (index %d)", moved, self.spec.name, link.index)
            repairs = 1
        ensure_address(self.nl, link, self.address, self.cluster)
        return repairs

    def watched_links(self) -> set[str]:
        """A deleted ``flannel.ipip`` is repaired at once, not at the next periodic reconcile."""
        return {self.spec.name}
