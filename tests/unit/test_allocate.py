"""Choosing free subnets (spec §6.3 step 5)."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannel.config import NetworkConfig, check_network_config
from flannel.errors import OutOfSubnetsError
from flannel.lease import Lease
from flannel.subnet.allocate import MAX_CANDIDATES, free_subnets, overlaps_any, pick_subnets


def v4cfg(network: str, **kw: object) -> NetworkConfig:
    return check_network_config(NetworkConfig(network=IPv4Network(network), **kw))  # type: ignore[arg-type]


def lease(v4: str, v6: str | None = None) -> Lease:
    return Lease(IPv4Network(v4), IPv6Network(v6) if v6 else None)


def test_walks_from_subnet_min_in_subnet_steps_and_stops_at_100() -> None:
    got = free_subnets(IPv4Address("10.0.1.0"), IPv4Address("10.255.255.0"), 24, [])
    assert len(got) == MAX_CANDIDATES
    assert got[0] == IPv4Network("10.0.1.0/24")
    assert got[1] == IPv4Network("10.0.2.0/24")
    assert got[-1] == IPv4Network("10.0.100.0/24")


def test_subnet_max_is_the_last_start_included() -> None:
    got = free_subnets(IPv4Address("192.168.0.4"), IPv4Address("192.168.0.12"), 30, [])
    assert got == [IPv4Network(f"192.168.0.{i}/30") for i in (4, 8, 12)]


def test_overlapping_leases_are_skipped_whatever_their_size() -> None:
    taken = [IPv4Network("10.0.2.0/24"), IPv4Network("10.0.4.0/23"), IPv4Network("10.0.7.128/25")]
    got = free_subnets(IPv4Address("10.0.1.0"), IPv4Address("10.0.9.0"), 24, taken)
    assert [str(n) for n in got] == [
        "10.0.1.0/24",
        "10.0.3.0/24",
        "10.0.6.0/24",
        "10.0.8.0/24",
        "10.0.9.0/24",
    ]


def test_a_large_lease_is_jumped_over_in_one_step() -> None:
    got = free_subnets(IPv4Address("10.0.1.0"), IPv4Address("10.255.255.0"), 24, [IPv4Network("10.0.0.0/9")])
    assert got[0] == IPv4Network("10.128.0.0/24")


def test_sixty_thousand_taken_subnets_are_walked_to_the_first_free_one() -> None:
    taken = [IPv4Network((0x0A000000 + (i << 8), 24)) for i in range(1, 60000)]
    got = free_subnets(IPv4Address("10.0.1.0"), IPv4Address("10.255.255.0"), 24, taken)
    assert got[0] == IPv4Network((0x0A000000 + (60000 << 8), 24))


def test_ipv6_candidates() -> None:
    got = free_subnets(IPv6Address("fd00:0:0:1::"), IPv6Address("fd00:0:0:ff::"), 64, [IPv6Network("fd00:0:0:1::/64")])
    assert got[0] == IPv6Network("fd00:0:0:2::/64")
    assert len(got) == MAX_CANDIDATES


def test_pick_is_uniform_among_the_first_100_free() -> None:
    cfg = v4cfg("10.0.0.0/8")
    seen = {pick_subnets(cfg, [], random.Random(seed))[0] for seed in range(400)}
    assert all(IPv4Network("10.0.1.0/24").network_address <= n.network_address for n in seen)
    assert max(n.network_address for n in seen) <= IPv4Address("10.0.100.0")
    assert len(seen) > 80


def test_pick_is_deterministic_with_a_seeded_rng() -> None:
    cfg = v4cfg("10.0.0.0/16")
    assert pick_subnets(cfg, [], random.Random(7)) == pick_subnets(cfg, [], random.Random(7))


def test_pick_dual_stack_gives_both_families() -> None:
    cfg = check_network_config(
        NetworkConfig(network=IPv4Network("10.0.0.0/16"), enable_ipv6=True, ipv6_network=IPv6Network("fd00::/56"))
    )
    v4, v6 = pick_subnets(cfg, [lease("10.0.1.0/24", "fd00:0:0:1::/64")], random.Random(1))
    assert v4.prefixlen == 24 and v4 != IPv4Network("10.0.1.0/24")
    assert v6 is not None and v6.prefixlen == 64 and v6 != IPv6Network("fd00:0:0:1::/64")


def test_out_of_subnets_names_the_range() -> None:
    cfg = v4cfg("10.5.0.0/16", subnet_min=IPv4Address("10.5.1.0"), subnet_max=IPv4Address("10.5.2.0"))
    with pytest.raises(OutOfSubnetsError, match=r"^out of subnets in 10\.5\.1\.0-10\.5\.2\.0 \(/24\)$"):
        pick_subnets(cfg, [lease("10.5.1.0/24"), lease("10.5.2.0/24")], random.Random())


def test_out_of_ipv6_subnets_names_the_ipv6_range() -> None:
    cfg = check_network_config(
        NetworkConfig(network=IPv4Network("10.0.0.0/16"), enable_ipv6=True, ipv6_network=IPv6Network("fd00::/124"))
    )
    taken = [lease(f"10.0.{i}.0/24", f"fd00::{i * 4:x}/126") for i in range(1, 4)]
    with pytest.raises(OutOfSubnetsError, match=r"^out of subnets in fd00::4-fd00::c \(/126\)$"):
        pick_subnets(cfg, taken, random.Random())


def test_subnet_min_above_max_is_out_of_subnets() -> None:
    cfg = v4cfg("10.5.0.0/16", subnet_min=IPv4Address("10.5.9.0"), subnet_max=IPv4Address("10.5.2.0"))
    with pytest.raises(OutOfSubnetsError, match=r"^out of subnets"):
        pick_subnets(cfg, [], random.Random())


def test_overlaps_any_reports_the_holder() -> None:
    holder = lease("10.0.0.0/16")
    assert overlaps_any(IPv4Network("10.0.3.0/24"), None, [lease("10.1.0.0/24"), holder]) is holder
    assert overlaps_any(IPv4Network("10.2.3.0/24"), None, [holder]) is None
    dual = lease("10.9.0.0/24", "fd00::/64")
    assert overlaps_any(IPv4Network("10.2.3.0/24"), IPv6Network("fd00::/64"), [dual]) is dual
