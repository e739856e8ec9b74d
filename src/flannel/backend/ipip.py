"""The ipip backend (spec §10.5): one IP-in-IP device, ``flannel.ipip``, and a route per peer.

Each remote subnet is routed ``via <remote PublicIP> dev flannel.ipip onlink``: the kernel encapsulates to
the gateway address. With ``DirectRouting`` a peer on the same segment is routed over the external interface
instead (still onlink), as host-gw would. The routes are the shared route network's (``route_network.py``):
the only ipip-specific parts are the device and the ``route_for`` hook.

The kernel needs ipip support (``CONFIG_NET_IPIP``, module ``ipip``). Without it the device cannot be made,
and flanneld stops at start-up with an error that says so, before it acquires a lease.
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from flannel.backend.base import BackendContext
from flannel.backend.route_network import RouteNetwork, RoutePlane
from flannel.backend.route_plane import PeerRoute, is_on_link
from flannel.backend.vxlan_device import ensure_address
from flannel.config import NetworkConfig
from flannel.errors import ConfigError, FlannelError
from flannel.gojson import fold
from flannel.lease import Lease, LeaseAttrs
from flannel.netlink import IptunSpec, Link, Netlink, NetlinkError
from flannel.netlink.links import ipip_describe

log = logging.getLogger(__name__)

DEVICE_NAME = "flannel.ipip"
IPIP_OVERHEAD = 20
"""The outer IPv4 header."""
NO_KERNEL_SUPPORT = "the kernel has no ipip support (CONFIG_NET_IPIP / module ipip)"
_NO_SUPPORT_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT})
_FIELDS = ["Type", "DirectRouting"]


@dataclass(frozen=True)
class IPIPConfig:
    """Settings of the ipip data plane."""

    direct_routing: bool = False
    """Route peers on the same segment over the external interface instead of the tunnel."""


def parse_ipip_config(backend: dict[str, Any]) -> IPIPConfig:
    """Read the ``Backend`` object (keys case-insensitive); raise ``ConfigError`` naming a bad key."""
    known = {f.lower() for f in _FIELDS}
    for key in backend:
        if key.lower() not in known:
            log.warning("ipip backend: ignoring unknown key Backend.%s", key)
    value = fold(backend, _FIELDS).get("DirectRouting", False)
    if value is None:
        value = False
    if not isinstance(value, bool):
        raise ConfigError(f"Backend.DirectRouting must be true or false, got {value!r}", "Backend.DirectRouting")
    return IPIPConfig(direct_routing=value)


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
        if config.enable_ipv6:
            raise ConfigError("the ipip backend supports IPv4 only; set EnableIPv6 to false", "EnableIPv6")
        if not config.enable_ipv4 or config.network is None:
            raise ConfigError("the ipip backend needs an IPv4 Network", "Network")
        if ctx.ext_iface.iface_addr is None or ctx.ext_iface.ext_addr is None:
            raise FlannelError(f"the ipip backend needs an IPv4 address on {ctx.ext_iface.name}")
        self.ctx = ctx

    async def register_network(self, config: NetworkConfig) -> RouteNetwork:
        ext = self.ctx.ext_iface
        mtu = ext.mtu - IPIP_OVERHEAD
        if mtu <= 0:
            raise FlannelError(f"the ipip device MTU would be {mtu} (interface {ext.name} MTU {ext.mtu})")
        nl = Netlink()
        try:
            link = ensure_ipip_device(nl, IptunSpec(name=DEVICE_NAME, local=ext.iface_addr, mtu=mtu))
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
        return RouteNetwork(nl, lease, mtu, "ipip", [plane], self.ctx.reconcile_interval,
                            names={link.index: DEVICE_NAME, ext.index: ext.name})
