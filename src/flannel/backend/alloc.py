"""The alloc backend (spec §10.9): acquire a subnet lease and program nothing.

For setups where something else (a cloud route table, a router) moves the packets and flanneld only hands
out subnets and writes ``subnet.env``. The lease carries the public IP(s) and no ``BackendType``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from flannel.backend.backend_config import read_section
from flannel.backend.base import BackendContext, LeasedNetwork
from flannel.config import NetworkConfig
from flannel.lease import Lease, LeaseAttrs
from flannel.subnet.manager import WatchResult


class AllocBackend:
    """Registers the lease; that is all."""

    def __init__(self, ctx: BackendContext, config: NetworkConfig) -> None:
        read_section("alloc", config.backend, [])  # no keys of its own: only the unknown-key warnings
        self.ctx = ctx

    async def register_network(self, config: NetworkConfig) -> AllocNetwork:
        ext = self.ctx.ext_iface
        attrs = LeaseAttrs(
            public_ip=ext.ext_addr if config.enable_ipv4 and ext.ext_addr else LeaseAttrs().public_ip,
            public_ipv6=ext.ext_v6_addr if config.enable_ipv6 else None,
        )
        return AllocNetwork(await self.ctx.subnet_manager.acquire_lease(attrs), ext.mtu)


class AllocNetwork(LeasedNetwork):
    """The lease and the MTU (the external interface's); ``run`` waits until cancelled."""

    def __init__(self, lease: Lease, mtu: int) -> None:
        super().__init__(lease, mtu)


    async def run(self, results: AsyncIterator[WatchResult]) -> None:
        # Other nodes' leases concern nothing here, so the watch is never even started (upstream: <-ctx.Done()).
        await asyncio.Event().wait()
