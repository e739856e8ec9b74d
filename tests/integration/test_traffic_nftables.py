"""nftables mode against the real ``nft``, each test in its own namespace (``ip netns exec`` for every command)."""

from __future__ import annotations

import asyncio
import re
from ipaddress import ip_network

import pytest

from flannel.traffic import nftables
from flannel.traffic.base import MasqTarget, Repair, SyncResult, TrafficPlan
from flannel.traffic.iptables import IptablesManager
from flannel.traffic.keeper import TrafficKeeper
from flannel.traffic.nftables import NftablesManager
from tests.integration.test_traffic_iptables import root_firewall_untouched  # noqa: F401
from tests.netns import NetNS, netns_fixture  # noqa: F401
from tests.waiting import wait_until

pytestmark = pytest.mark.root

N, P = ip_network("10.244.0.0/16"), ip_network("10.244.1.0/24")
N6, P6 = ip_network("fd00:10:244::/56"), ip_network("fd00:10:244:1::/64")
PLAN = TrafficPlan(masq=(MasqTarget(N, P), MasqTarget(N6, P6)), forward=(N, N6))


def spec_postrtg(family: str, table: str, n: str, p: str, multicast: str, fr: str = " fully-random") -> str:
    """§11.3's listing of ``nft list chain <family> <table> postrtg``."""
    f = family
    return (f"table {f} {table} {{\n"
            "\tchain postrtg {\n"
            '\t\tcomment "chain to manage traffic masquerading by flannel"\n'
            "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
            "\t\tmeta mark 0x00004000 return\n"
            f"\t\t{f} saddr {p} {f} daddr {n} return\n"
            f"\t\t{f} saddr {n} {f} daddr {p} return\n"
            f"\t\t{f} saddr != {p} {f} daddr {n} return\n"
            f"\t\t{f} saddr {n} {f} daddr != {multicast} masquerade{fr}\n"
            f"\t\t{f} saddr != {n} {f} daddr {n} masquerade{fr}\n"
            "\t}\n}\n")


def spec_forward(family: str, table: str, n: str) -> str:
    return (f"table {family} {table} {{\n"
            "\tchain forward {\n"
            '\t\tcomment "chain to accept flannel traffic"\n'
            "\t\ttype filter hook forward priority filter; policy accept;\n"
            f"\t\t{family} saddr {n} accept\n"
            f"\t\t{family} daddr {n} accept\n"
            "\t}\n}\n")


def nft(ns: NetNS, *args: str, check: bool = True) -> str:
    return ns.run(["nft", *args], check=check).stdout


def tables(ns: NetNS) -> list[str]:
    return nft(ns, "list", "tables").splitlines()


def setup(ns: NetNS, plan: TrafficPlan = PLAN) -> SyncResult:
    return asyncio.run(NftablesManager(ns.name).setup(plan))


def test_chains_read_exactly_as_the_spec_lists_them(netns: NetNS) -> None:
    assert setup(netns).errors == ()
    assert nft(netns, "list", "chain", "ip", "flannel-ipv4", "postrtg") == \
        spec_postrtg("ip", "flannel-ipv4", str(N), str(P), "224.0.0.0/4")
    assert nft(netns, "list", "chain", "ip", "flannel-ipv4", "forward") == spec_forward("ip", "flannel-ipv4", str(N))
    assert nft(netns, "list", "chain", "ip6", "flannel-ipv6", "postrtg") == \
        spec_postrtg("ip6", "flannel-ipv6", str(N6), str(P6), "ff00::/8")
    assert nft(netns, "list", "chain", "ip6", "flannel-ipv6", "forward") == \
        spec_forward("ip6", "flannel-ipv6", str(N6))
    assert 'comment "rules for flannel-ipv4"' in nft(netns, "list", "table", "ip", "flannel-ipv4")


def test_fully_random_can_be_disabled(netns: NetNS) -> None:
    setup(netns, TrafficPlan(masq=(MasqTarget(N, P),), random_fully=False))
    assert nft(netns, "list", "chain", "ip", "flannel-ipv4", "postrtg") == \
        spec_postrtg("ip", "flannel-ipv4", str(N), str(P), "224.0.0.0/4", fr="")


def test_three_restarts_leave_one_copy_of_everything(netns: NetNS) -> None:
    setup(netns)
    first = nft(netns, "list", "ruleset")
    for _ in range(2):
        setup(netns)
    assert nft(netns, "list", "ruleset") == first
    assert tables(netns) == ["table ip flannel-ipv4", "table ip6 flannel-ipv6"]
    assert first.count("chain postrtg") == 2 and first.count("chain forward") == 2


def test_masquerading_turned_off_removes_its_chain(netns: NetNS) -> None:
    setup(netns)
    setup(netns, TrafficPlan(forward=(N,)))
    ruleset = nft(netns, "list", "ruleset")
    assert "postrtg" not in ruleset and "flannel-ipv6" in ruleset
    assert nft(netns, "list", "chain", "ip", "flannel-ipv4", "forward") == spec_forward("ip", "flannel-ipv4", str(N))


def delete_rule(ns: NetNS, family: str, table: str, chain: str, containing: str) -> None:
    listing = nft(ns, "-a", "list", "chain", family, table, chain)
    handle = next(re.search(r"# handle (\d+)", line).group(1)  # type: ignore[union-attr]
                  for line in listing.splitlines() if containing in line and "# handle" in line)
    nft(ns, "delete", "rule", family, table, chain, "handle", handle)


HAND_EDITS = {
    "rule deleted": lambda ns: delete_rule(ns, "ip", "flannel-ipv4", "postrtg", "masquerade"),
    "ipv6 rule deleted": lambda ns: delete_rule(ns, "ip6", "flannel-ipv6", "forward", "daddr"),
    "table deleted": lambda ns: nft(ns, "delete", "table", "ip", "flannel-ipv4"),
    "rule added": lambda ns: nft(ns, "add", "rule", "ip", "flannel-ipv4", "forward", "drop"),
}


@pytest.mark.parametrize("edit", HAND_EDITS)
def test_a_hand_edit_is_repaired_by_the_next_resync(netns: NetNS, edit: str) -> None:
    """Beyond upstream, which never resyncs in nftables mode."""
    repairs: list[Repair] = []

    async def scenario() -> str:
        keeper = TrafficKeeper(NftablesManager(netns.name), IptablesManager("", netns.name), PLAN, 0.2,
                               on_repair=repairs.append)
        await keeper.start()
        before = nft(netns, "list", "ruleset")
        HAND_EDITS[edit](netns)
        assert nft(netns, "list", "ruleset") != before
        task = asyncio.create_task(keeper.keep())
        try:
            await wait_until(lambda: bool(repairs), "the nftables resync repaired the table", timeout=60)
        finally:
            task.cancel()
        return before

    before = asyncio.run(scenario())
    assert nft(netns, "list", "ruleset") == before
    assert len(repairs) == 1 and "rewritten" in repairs[0].detail
    assert repairs[0].table == ("flannel-ipv6" if "ipv6" in edit else "flannel-ipv4")


def test_a_missing_nft_is_an_error_not_a_crash(netns: NetNS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nftables, "NFT", "nft-not-installed")
    manager = NftablesManager(netns.name)

    async def scenario() -> None:
        result = await manager.setup(PLAN)
        assert result.errors == ("nftables: nft-not-installed: command not found on PATH "
                                 "(install the nftables package)",)
        assert (await manager.remove_all()) == SyncResult()  # nothing can be ours without nft
        assert (await manager.ensure()) == SyncResult()

    asyncio.run(scenario())
    assert tables(netns) == []


def test_a_failed_write_is_retried_by_ensure(netns: NetNS, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = NftablesManager(netns.name)

    async def scenario() -> None:
        monkeypatch.setattr(nftables, "NFT", "nft-not-installed")
        assert len((await manager.setup(PLAN)).errors) == 1
        monkeypatch.setattr(nftables, "NFT", "nft")
        result = await manager.ensure()
        assert result.errors == () and len(result.done) == 1 and result.repaired == ()

    asyncio.run(scenario())
    assert tables(netns) == ["table ip flannel-ipv4", "table ip6 flannel-ipv6"]
