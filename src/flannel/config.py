"""The network configuration document (spec §3): parsing, defaulting and validation.

STUB: the dataclass is the agreed interface; parse/check are being implemented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from flannel.errors import ConfigError

__all__ = ["ConfigError", "NetworkConfig", "check_network_config", "parse_network_config"]


@dataclass(frozen=True)
class NetworkConfig:
    """The cluster-wide network config, as stored at ``<prefix>/config`` or in net-conf.json."""

    network: IPv4Network | None = None
    """The IPv4 cluster network (host bits masked)."""
    ipv6_network: IPv6Network | None = None
    """The IPv6 cluster network (host bits masked)."""
    enable_ipv4: bool = True
    """Whether IPv4 is enabled."""
    enable_ipv6: bool = False
    """Whether IPv6 is enabled."""
    enable_nftables: bool = False
    """Use nftables instead of iptables for traffic rules."""
    subnet_len: int = 0
    """Prefix length of each node's IPv4 subnet (0 = default it)."""
    subnet_min: IPv4Address | None = None
    """First allocatable IPv4 subnet (None = default it)."""
    subnet_max: IPv4Address | None = None
    """Last allocatable IPv4 subnet start (None = default it)."""
    ipv6_subnet_len: int = 0
    """Prefix length of each node's IPv6 subnet (0 = default it)."""
    ipv6_subnet_min: IPv6Address | None = None
    """First allocatable IPv6 subnet (None = default it)."""
    ipv6_subnet_max: IPv6Address | None = None
    """Last allocatable IPv6 subnet start (None = default it)."""
    backend_type: str = "udp"
    """``Backend.Type`` as written (lookups lower-case it); ``udp`` when ``Backend`` is absent."""
    backend: dict[str, Any] = field(default_factory=dict)
    """The raw ``Backend`` object, handed to the backend to parse its own keys."""
    backend_missing: bool = False
    """True when the document had no ``Backend`` key (the daemon logs a warning)."""


def parse_network_config(text: str | bytes) -> NetworkConfig:
    """Parse the JSON document; raise ``ConfigError`` naming the key on a type error."""
    raise NotImplementedError


def check_network_config(cfg: NetworkConfig) -> NetworkConfig:
    """Apply upstream's defaulting and validation, returning the completed config."""
    raise NotImplementedError
