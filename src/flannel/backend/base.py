"""The backend interfaces.

Upstream's split is kept: a ``Backend`` turns a network config into a running ``Network`` (acquiring the
lease on the way, because the lease must carry data such as the VTEP MAC that only exists once the device
does), and a ``Network`` consumes lease events. This module imports no backend: the table of backends is
``flannel.backend.registry``, so every backend can import the interfaces without an import circle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol

from flannel.config import NetworkConfig
from flannel.errors import ConfigError, FlannelError
from flannel.lease import Lease
from flannel.subnet.manager import SubnetManager, WatchResult


@dataclass(frozen=True)
class ExternalInterface:
    """The host interface that carries inter-host traffic, and the addresses peers use to reach us."""

    name: str
    """Interface name, e.g. ``eth0``."""
    index: int
    """Kernel interface index."""
    mtu: int
    """Interface MTU; backends derive their own MTU from it."""
    iface_addr: IPv4Address | None
    """The interface's own IPv4 address (None for an IPv6-only stack)."""
    iface_v6_addr: IPv6Address | None
    """The interface's own IPv6 address (None for an IPv4-only stack)."""
    ext_addr: IPv4Address | None
    """The IPv4 address other nodes reach us on: ``--public-ip`` or the interface address."""
    ext_v6_addr: IPv6Address | None
    """The IPv6 address other nodes reach us on: ``--public-ipv6`` or the interface address."""


@dataclass(frozen=True)
class BackendContext:
    """What every backend is constructed with."""

    subnet_manager: SubnetManager
    """Where leases are acquired and watched."""
    ext_iface: ExternalInterface
    """The interface for inter-host traffic."""
    reconcile_interval: float = 10.0
    """Seconds between full comparisons of kernel state with the leases."""


class Network(Protocol):
    """A registered network: this node's lease plus the loop that programs remote leases."""

    @property
    def lease(self) -> Lease:
        """This node's lease."""
        ...

    @property
    def mtu(self) -> int:
        """The MTU pods must use (``FLANNEL_MTU``)."""
        ...

    async def run(self, results: AsyncIterator[WatchResult]) -> None:
        """Consume lease watch results until cancelled, keeping the kernel in line with them."""
        ...


class LeasedNetwork:
    """What every ``Network`` implementation shares: this node's lease and the pods' MTU, fixed at registration."""

    def __init__(self, lease: Lease, mtu: int) -> None:
        self._lease = lease
        self._mtu = mtu

    @property
    def lease(self) -> Lease:
        """This node's lease."""
        return self._lease

    @property
    def mtu(self) -> int:
        """The MTU pods must use (``FLANNEL_MTU``)."""
        return self._mtu


def require_ipv4_only(backend: str, ctx: BackendContext, config: NetworkConfig) -> None:
    """The checks of an IPv4-only backend (ipip and udp, as upstream): no IPv6, an IPv4 network and address."""
    if config.enable_ipv6:
        raise ConfigError(f"the {backend} backend supports IPv4 only; set EnableIPv6 to false", "EnableIPv6")
    if not config.enable_ipv4 or config.network is None:
        raise ConfigError(f"the {backend} backend needs an IPv4 Network", "Network")
    if ctx.ext_iface.iface_addr is None or ctx.ext_iface.ext_addr is None:
        raise FlannelError(f"the {backend} backend needs an IPv4 address on {ctx.ext_iface.name}")


class Backend(Protocol):
    """One data plane (vxlan, host-gw, ...)."""

    async def register_network(self, config: NetworkConfig) -> Network:
        """Create devices, acquire the lease and return the network ready to run."""
        ...
