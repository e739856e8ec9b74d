"""Choosing a free subnet (spec §6.3 step 5): pure functions, so that allocation is tested without etcd.

Upstream picks uniformly at random among the *first 100 free* subnets of the range, which spreads
concurrent nodes apart while keeping the allocation dense. We keep that rule and make the random source
injectable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import TypeVar

from flannel.config import NetworkConfig
from flannel.errors import OutOfSubnetsError
from flannel.lease import Lease
from flannel.sysrand import Chooser

MAX_CANDIDATES = 100
"""Upstream collects at most this many free subnets before picking one."""

_Net = TypeVar("_Net", IPv4Network, IPv6Network)


def free_subnets(
    subnet_min: IPv4Address | IPv6Address,
    subnet_max: IPv4Address | IPv6Address,
    prefixlen: int,
    taken: Iterable[_Net],
    limit: int = MAX_CANDIDATES,
) -> list[_Net]:
    """Subnets of length ``prefixlen`` from ``subnet_min`` up to ``subnet_max`` (its start) that overlap none
    of ``taken``; at most ``limit`` of them, lowest first.

    Taken ranges are merged and walked with the candidates, so a range with thousands of leases costs
    O(n log n), not O(n²).
    """
    bits = subnet_min.max_prefixlen
    step = 1 << (bits - prefixlen)
    busy = _merge((int(n.network_address), int(n.broadcast_address)) for n in taken)
    out: list[_Net] = []
    start, end_max, i = int(subnet_min), int(subnet_max), 0
    while start <= end_max and len(out) < limit:
        last = start + step - 1
        while i < len(busy) and busy[i][1] < start:
            i += 1
        if i < len(busy) and busy[i][0] <= last:
            # Overlaps a taken range: jump to the first aligned start past it.
            base = int(subnet_min)
            start = base + ((busy[i][1] + 1 - base + step - 1) // step) * step
            continue
        out.append(ip_network((start, prefixlen)))  # type: ignore[arg-type]
        start += step
    return out


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def pick_subnets(
    cfg: NetworkConfig, leases: Sequence[Lease], rng: Chooser
) -> tuple[IPv4Network, IPv6Network | None]:
    """A random free IPv4 subnet (and IPv6 subnet when IPv6 is on) for ``cfg`` given the existing leases.

    Raises ``OutOfSubnetsError`` naming the exhausted range when a family has no free subnet.
    """
    if cfg.network is None or cfg.subnet_min is None or cfg.subnet_max is None:
        raise ValueError("network config was not checked (Network/SubnetMin/SubnetMax unset)")
    v4_taken = [net for lease in leases if (net := lease.subnet) is not None]  # built on each read: once
    v4 = free_subnets(cfg.subnet_min, cfg.subnet_max, cfg.subnet_len, v4_taken)
    if not v4:
        raise OutOfSubnetsError(f"out of subnets in {cfg.subnet_min}-{cfg.subnet_max} (/{cfg.subnet_len})")
    v4_choice = rng.choice(v4)
    v6_choice: IPv6Network | None = None
    if cfg.enable_ipv6:
        if cfg.ipv6_subnet_min is None or cfg.ipv6_subnet_max is None:
            raise ValueError("network config was not checked (IPv6SubnetMin/IPv6SubnetMax unset)")
        v6_taken = [lease.ipv6_subnet for lease in leases if lease.ipv6_subnet is not None]
        v6 = free_subnets(cfg.ipv6_subnet_min, cfg.ipv6_subnet_max, cfg.ipv6_subnet_len, v6_taken)
        if not v6:
            raise OutOfSubnetsError(
                f"out of subnets in {cfg.ipv6_subnet_min}-{cfg.ipv6_subnet_max} (/{cfg.ipv6_subnet_len})"
            )
        v6_choice = rng.choice(v6)
    return v4_choice, v6_choice


def overlaps_any(v4: IPv4Network | None, v6: IPv6Network | None, leases: Iterable[Lease]) -> Lease | None:
    """The first lease whose IPv4 or IPv6 subnet overlaps ``v4``/``v6``; ``None`` when both are free."""
    for lease in leases:
        if v4 is not None and (net := lease.subnet) is not None and net.overlaps(v4):
            return lease
        if v6 is not None and lease.ipv6_subnet is not None and lease.ipv6_subnet.overlaps(v6):
            return lease
    return None
