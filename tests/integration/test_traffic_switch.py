"""Switching between iptables and nftables mode (spec §11.4) leaves nothing of the old mode behind, both ways.

⚠ Upstream never removes ``FLANNEL-FWD`` (it looks in ``nat``) and cannot delete ``FLANNEL-POSTRTG`` while the
``POSTROUTING`` jump still references it; these tests prove both are fixed, with either iptables backend.
"""

from __future__ import annotations

import asyncio
from ipaddress import ip_network

import pytest

from flannel.traffic.base import MasqTarget, TrafficPlan
from flannel.traffic.keeper import TrafficKeeper, make_managers
from tests.integration.test_traffic_iptables import (  # noqa: F401
    listing,
    root_firewall_untouched,
    spec_filter,
    spec_nat,
)
from tests.netns import NetNS, netns_fixture  # noqa: F401

pytestmark = pytest.mark.root

N, P = ip_network("10.244.0.0/16"), ip_network("10.244.1.0/24")
N6, P6 = ip_network("fd00:10:244::/56"), ip_network("fd00:10:244:1::/64")
PLAN = TrafficPlan(masq=(MasqTarget(N, P), MasqTarget(N6, P6)), forward=(N, N6))


def start(ns: NetNS, nftables: bool, variant: str) -> TrafficKeeper:
    """What flanneld does at start in the given mode: a fresh keeper, the other mode cleaned up first."""
    manager, other = make_managers(nftables, variant, ns.name)
    keeper = TrafficKeeper(manager, other, PLAN, 5)
    asyncio.run(keeper.start())
    return keeper


def iptables_text(ns: NetNS, variant: str) -> str:
    return "\n".join(line for v in (4, 6) for t in ("nat", "filter") for line in listing(ns, variant, v, t))


def flannel_tables(ns: NetNS) -> list[str]:
    out = ns.run(["nft", "list", "tables"]).stdout.splitlines()
    return [t for t in out if "flannel" in t]


@pytest.mark.parametrize("variant", ["", "legacy"])
def test_switching_modes_and_back_leaves_nothing_behind(netns: NetNS, variant: str) -> None:
    assert not start(netns, False, variant).failing
    assert "FLANNEL-" in iptables_text(netns, variant) and flannel_tables(netns) == []

    assert not start(netns, True, variant).failing
    assert "FLANNEL" not in iptables_text(netns, variant)  # no chain, no jump, in nat or filter, v4 or v6
    assert flannel_tables(netns) == ["table ip flannel-ipv4", "table ip6 flannel-ipv6"]

    assert not start(netns, False, variant).failing
    assert flannel_tables(netns) == []
    assert listing(netns, variant, 4, "nat") == spec_nat(str(N), str(P), "224.0.0.0/4")
    assert listing(netns, variant, 4, "filter") == spec_filter(str(N))
    assert listing(netns, variant, 6, "nat") == spec_nat(str(N6), str(P6), "ff00::/8")
    assert listing(netns, variant, 6, "filter") == spec_filter(str(N6))


def test_a_foreign_jump_to_our_chain_does_not_block_the_switch(netns: NetNS) -> None:
    start(netns, False, "")
    netns.run(["iptables", "-t", "nat", "-N", "SOMEONE-ELSE"])
    netns.run(["iptables", "-t", "nat", "-A", "SOMEONE-ELSE", "-j", "FLANNEL-POSTRTG"])
    assert not start(netns, True, "").failing
    assert "FLANNEL" not in iptables_text(netns, "")
    assert "-N SOMEONE-ELSE" in listing(netns, "", 4, "nat")


def test_nftables_mode_without_an_iptables_binary_still_starts(netns: NetNS) -> None:
    """⚠ Upstream exits 1 here; with no iptables binary there can be no iptables rules of ours to remove."""
    manager, _ = make_managers(True, "", netns.name)
    _, other = make_managers(False, "nosuchvariant", netns.name)
    keeper = TrafficKeeper(manager, other, PLAN, 5)
    asyncio.run(keeper.start())
    assert not keeper.failing and len(flannel_tables(netns)) == 2
