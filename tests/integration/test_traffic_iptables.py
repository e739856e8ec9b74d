"""iptables mode against the real binaries, each test in its own namespace: ``iptables`` from PATH (the nf_tables
backend on Debian 12) and ``iptables-legacy``, IPv4 and IPv6.

Every command runs through ``ip netns exec`` (the managers' ``netns`` argument), so the host's firewall is
never touched; a module fixture checks that the root namespace holds no flannel chain afterwards.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path

import pytest

from flannel.traffic.base import MasqTarget, Repair, TrafficPlan
from flannel.traffic.iptables import IptablesManager
from flannel.traffic.keeper import TrafficKeeper
from flannel.traffic.nftables import NftablesManager
from tests.netns import NetNS, netns_fixture  # noqa: F401
from tests.waiting import wait_until

pytestmark = pytest.mark.root

N, P = ip_network("10.244.0.0/16"), ip_network("10.244.1.0/24")
N6, P6 = ip_network("fd00:10:244::/56"), ip_network("fd00:10:244:1::/64")
PLAN = TrafficPlan(masq=(MasqTarget(N, P), MasqTarget(N6, P6)), forward=(N, N6))
VARIANTS = ["", "legacy"]
"""``""``: PATH's iptables (nf_tables backend here); ``legacy``: iptables-legacy."""

MQ = '-m comment --comment "flanneld masq"'
FW = '-m comment --comment "flanneld forward"'


def spec_nat(n: str, p: str, multicast: str, rf: str = " --random-fully") -> list[str]:
    """§11.1's nat listing, in ``iptables -S`` order (chain declarations, then rules chain by chain)."""
    return [
        "-P PREROUTING ACCEPT", "-P INPUT ACCEPT", "-P OUTPUT ACCEPT", "-P POSTROUTING ACCEPT",
        "-N FLANNEL-POSTRTG",
        f"-A POSTROUTING {MQ} -j FLANNEL-POSTRTG",
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {MQ} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {p} -d {n} {MQ} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {n} -d {p} {MQ} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {n} -d {p} {MQ} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {n} ! -d {multicast} {MQ} -j MASQUERADE{rf}",
        f"-A FLANNEL-POSTRTG ! -s {n} -d {n} {MQ} -j MASQUERADE{rf}",
    ]


def spec_filter(n: str) -> list[str]:
    return ["-P INPUT ACCEPT", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT", "-N FLANNEL-FWD",
            f"-A FORWARD {FW} -j FLANNEL-FWD",
            f"-A FLANNEL-FWD -s {n} {FW} -j ACCEPT",
            f"-A FLANNEL-FWD -d {n} {FW} -j ACCEPT"]


def ipt(ns: NetNS, variant: str, version: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    base = "iptables" if version == 4 else "ip6tables"
    return ns.run([f"{base}-{variant}" if variant else base, "-w", *args], check=check)


def listing(ns: NetNS, variant: str, version: int, table: str) -> list[str]:
    return ipt(ns, variant, version, "-t", table, "-S").stdout.splitlines()


def count(lines: list[str], needle: str) -> int:
    return sum(1 for line in lines if line.endswith(needle))


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def _root_flannel_state() -> str:
    """flannel's names in the root namespace's firewall, read without creating anything."""
    out = []
    for cmd in (["nft", "list", "ruleset"], ["iptables-legacy-save"], ["ip6tables-legacy-save"]):
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        out += [line for line in r.stdout.splitlines() if "FLANNEL-" in line or "flannel-ipv" in line]
    return "\n".join(out)


@pytest.fixture(scope="module", autouse=True)
def root_firewall_untouched() -> Iterator[None]:
    before = _root_flannel_state()
    yield
    assert _root_flannel_state() == before, "a traffic test changed the root namespace's firewall"


@pytest.mark.parametrize("variant", VARIANTS)
def test_rules_read_exactly_as_the_spec_lists_them(netns: NetNS, variant: str) -> None:
    result = run(IptablesManager(variant, netns.name).setup(PLAN))
    assert not result.errors  # type: ignore[attr-defined]
    assert listing(netns, variant, 4, "nat") == spec_nat(str(N), str(P), "224.0.0.0/4")
    assert listing(netns, variant, 4, "filter") == spec_filter(str(N))
    assert listing(netns, variant, 6, "nat") == spec_nat(str(N6), str(P6), "ff00::/8")
    assert listing(netns, variant, 6, "filter") == spec_filter(str(N6))


@pytest.mark.parametrize("variant", VARIANTS)
def test_random_fully_can_be_disabled(netns: NetNS, variant: str) -> None:
    plan = TrafficPlan(masq=(MasqTarget(N, P),), random_fully=False)
    run(IptablesManager(variant, netns.name).setup(plan))
    assert listing(netns, variant, 4, "nat") == spec_nat(str(N), str(P), "224.0.0.0/4", rf="")


@pytest.mark.parametrize("variant", VARIANTS)
def test_three_restarts_leave_exactly_one_jump(netns: NetNS, variant: str) -> None:
    for _ in range(3):
        run(IptablesManager(variant, netns.name).setup(PLAN))  # a fresh manager: what a restart makes
    for version in (4, 6):
        nat, flt = listing(netns, variant, version, "nat"), listing(netns, variant, version, "filter")
        assert count(nat, "-j FLANNEL-POSTRTG") == 1 and count(flt, "-j FLANNEL-FWD") == 1
        assert count(nat, "-j MASQUERADE --random-fully") == 2 and count(flt, "-j ACCEPT") == 2


@pytest.mark.parametrize("variant", VARIANTS)
def test_duplicate_jumps_left_by_a_naive_restore_are_collapsed(netns: NetNS, variant: str) -> None:
    ipt(netns, variant, 4, "-t", "nat", "-N", "FLANNEL-POSTRTG")
    for _ in range(2):
        ipt(netns, variant, 4, "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "flanneld masq",
            "-j", "FLANNEL-POSTRTG")
    ipt(netns, variant, 4, "-t", "nat", "-A", "POSTROUTING", "-j", "FLANNEL-POSTRTG")  # an older spelling
    run(IptablesManager(variant, netns.name).setup(TrafficPlan(masq=(MasqTarget(N, P),))))
    assert listing(netns, variant, 4, "nat") == spec_nat(str(N), str(P), "224.0.0.0/4")


@pytest.mark.parametrize("variant", VARIANTS)
def test_rules_of_the_previous_network_and_subnet_are_recycled(netns: NetNS, variant: str) -> None:
    old = TrafficPlan(masq=(MasqTarget(ip_network("10.10.0.0/16"), ip_network("10.10.7.0/24")),),
                      forward=(ip_network("10.10.0.0/16"),))
    run(IptablesManager(variant, netns.name).setup(old))
    run(IptablesManager(variant, netns.name).setup(TrafficPlan(masq=(MasqTarget(N, P),), forward=(N,))))
    assert listing(netns, variant, 4, "nat") == spec_nat(str(N), str(P), "224.0.0.0/4")
    assert listing(netns, variant, 4, "filter") == spec_filter(str(N))


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_rule_set_turned_off_is_removed_with_its_jump(netns: NetNS, variant: str) -> None:
    run(IptablesManager(variant, netns.name).setup(PLAN))
    run(IptablesManager(variant, netns.name).setup(TrafficPlan(forward=(N,))))
    assert listing(netns, variant, 4, "nat") == spec_nat(str(N), str(P), "224.0.0.0/4")[:4]
    assert listing(netns, variant, 6, "nat") == spec_nat(str(N6), str(P6), "ff00::/8")[:4]
    assert listing(netns, variant, 6, "filter") == spec_filter(str(N6))[:3]
    assert listing(netns, variant, 4, "filter") == spec_filter(str(N))


HAND_EDITS = {
    "rule deleted": ["-t", "nat", "-D", "FLANNEL-POSTRTG", "-s", str(N), "-d", str(P), "-m", "comment",
                     "--comment", "flanneld masq", "-j", "RETURN"],
    "jump deleted": ["-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "flanneld masq", "-j",
                     "FLANNEL-POSTRTG"],
    "rule inserted": ["-t", "nat", "-I", "FLANNEL-POSTRTG", "-j", "ACCEPT"],
    "chain flushed": ["-t", "nat", "-F", "FLANNEL-POSTRTG"],
    "jump doubled": ["-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "flanneld masq", "-j",
                     "FLANNEL-POSTRTG"],
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("edit", HAND_EDITS)
def test_a_hand_edit_is_repaired_by_the_next_resync(netns: NetNS, variant: str, edit: str) -> None:
    want = spec_nat(str(N), str(P), "224.0.0.0/4")
    repairs: list[Repair] = []

    async def scenario() -> None:
        keeper = TrafficKeeper(IptablesManager(variant, netns.name), NftablesManager(netns.name),
                               TrafficPlan(masq=(MasqTarget(N, P),), forward=(N,)), 0.2, on_repair=repairs.append)
        await keeper.start()
        assert listing(netns, variant, 4, "nat") == want
        ipt(netns, variant, 4, *HAND_EDITS[edit])
        assert listing(netns, variant, 4, "nat") != want
        task = asyncio.create_task(keeper.keep())
        try:
            await wait_until(lambda: bool(repairs), "the keeper's repair of the hand edit", timeout=60)
        finally:
            task.cancel()
        assert keeper.repairs == 1

    asyncio.run(scenario())
    assert listing(netns, variant, 4, "nat") == want
    assert len(repairs) == 1 and repairs[0].detail.startswith("FLANNEL-POSTRTG (nat, IPv4)")
    assert repairs[0].table == "nat"


def test_a_deleted_chain_is_recreated(netns: NetNS) -> None:
    manager = IptablesManager("", netns.name)

    async def scenario() -> None:
        await manager.setup(PLAN)
        ipt(netns, "", 6, "-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment", "flanneld forward",
            "-j", "FLANNEL-FWD")
        ipt(netns, "", 6, "-t", "filter", "-F", "FLANNEL-FWD")
        ipt(netns, "", 6, "-t", "filter", "-X", "FLANNEL-FWD")
        result = await manager.ensure()
        assert len(result.repaired) == 1 and "chain missing" in result.repaired[0].detail
        assert result.repaired[0].table == "filter"
        assert (await manager.ensure()).repaired == ()

    asyncio.run(scenario())
    assert listing(netns, "", 6, "filter") == spec_filter(str(N6))


def test_a_missing_binary_is_an_error_not_a_crash(netns: NetNS) -> None:
    result = run(IptablesManager("nosuchvariant", netns.name).setup(PLAN))
    errors = result.errors  # type: ignore[attr-defined]
    assert len(errors) == 4
    assert "iptables-nosuchvariant: command not found on PATH (install the iptables package)" in errors[0]


def test_a_failing_restore_is_reported_then_retried(netns: NetNS, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "iptables-restore"
    fake.write_text("#!/bin/sh\ncat >/dev/null\necho 'iptables-restore: line 3 failed: simulated' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    manager = IptablesManager("", netns.name)
    plan = TrafficPlan(masq=(MasqTarget(N, P),))

    async def scenario() -> None:
        result = await manager.setup(plan)
        assert len(result.errors) == 1
        assert result.errors[0].startswith("FLANNEL-POSTRTG (nat, IPv4): `iptables-restore --noflush --wait` "
                                           "failed (exit 1): iptables-restore: line 3 failed: simulated "
                                           "[input line 3: -A FLANNEL-POSTRTG -m mark")
        monkeypatch.setenv("PATH", os.environ["PATH"].split(":", 1)[1])
        result = await manager.ensure()
        assert result.errors == () and result.done == (
            "FLANNEL-POSTRTG (nat, IPv4): 6 masq rules and one jump from POSTROUTING installed",)

    asyncio.run(scenario())
    assert listing(netns, "", 4, "nat") == spec_nat(str(N), str(P), "224.0.0.0/4")


def test_rules_written_once_iptables_appears_get_random_fully(netns: NetNS, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ip").symlink_to(subprocess.run(["which", "ip"], capture_output=True, text=True,
                                                check=True).stdout.strip())
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path))  # only `ip`: no iptables at all
    manager = IptablesManager("", netns.name)

    async def scenario() -> None:
        result = await manager.setup(TrafficPlan(masq=(MasqTarget(N, P),)))
        assert len(result.errors) == 1 and "iptables: command not found on PATH" in result.errors[0]
        monkeypatch.setenv("PATH", path)
        assert len((await manager.ensure()).done) == 1

    asyncio.run(scenario())
    assert listing(netns, "", 4, "nat") == spec_nat(str(N), str(P), "224.0.0.0/4")
