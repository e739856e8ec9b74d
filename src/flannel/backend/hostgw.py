"""The host-gw backend (spec §10.3): each remote subnet routed via the remote host's public IP.

All the work is the shared route network (``route_network.py``); this module only checks that host-gw can
work here (no NAT: peers must reach us on the interface's own address), publishes the lease and builds one
route plane per enabled family on the external interface.
"""

from __future__ import annotations

import socket

from flannel.backend.backend_config import read_section
from flannel.backend.base import BackendContext
from flannel.backend.route_network import RouteNetwork, RoutePlane
from flannel.config import NetworkConfig
from flannel.errors import FlannelError
from flannel.lease import LeaseAttrs
from flannel.netlink import Netlink
from flannel.subnet.lease_guard import LeaseGuard

NAT_ERROR = ("your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not "
             "supported by host-gw backend")
"""Upstream's start-up error, word for word."""


class HostGWBackend:
    """Checks the interface and registers the lease; the network then programs routes to peers."""

    def __init__(self, ctx: BackendContext, config: NetworkConfig) -> None:
        read_section("host-gw", config.backend, [])  # no keys of its own: only the unknown-key warnings
        ext = ctx.ext_iface
        # Upstream checks IPv4 only; a --public-ipv6 that is not the interface's address breaks the same way.
        if ext.ext_addr != ext.iface_addr or (config.enable_ipv6 and ext.ext_v6_addr != ext.iface_v6_addr):
            raise FlannelError(NAT_ERROR)
        self.ctx = ctx

    async def register_network(self, config: NetworkConfig) -> RouteNetwork:
        ext = self.ctx.ext_iface
        attrs = LeaseAttrs(
            public_ip=ext.ext_addr if config.enable_ipv4 and ext.ext_addr else LeaseAttrs().public_ip,
            public_ipv6=ext.ext_v6_addr if config.enable_ipv6 else None,
            backend_type="host-gw",
        )
        lease = await self.ctx.subnet_manager.acquire_lease(attrs)
        planes: list[RoutePlane] = []
        for fam, cluster, own in ((socket.AF_INET, config.network, lease.subnet),
                                  (socket.AF_INET6, config.ipv6_network, lease.ipv6_subnet)):
            enabled = config.enable_ipv4 if fam == socket.AF_INET else config.enable_ipv6
            if not enabled:
                continue
            if cluster is None or own is None:
                raise FlannelError(f"lease {lease.key} has no subnet for an enabled address family")
            planes.append(RoutePlane(family=fam, cluster=cluster, own_subnet=own, oif=ext.index))
        network = RouteNetwork(Netlink(), lease, ext.mtu, "host-gw", planes, self.ctx.reconcile_interval,
                               dev_name=ext.name, ext=ext)
        network.tracker.guard = LeaseGuard.for_network(config, lease, "host-gw")
        return network
