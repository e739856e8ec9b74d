"""The traffic keeper's logic with fake managers, and the command runner with harmless real commands."""

from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Network, ip_network
from pathlib import Path

import pytest

from flannel import metrics
from flannel.config import NetworkConfig
from flannel.lease import Lease
from flannel.subnetenv import PreviousSubnets
from flannel.traffic import keeper as keeper_module
from flannel.traffic.base import MasqTarget, Repair, SyncResult, TrafficPlan, TrafficRuleError
from flannel.traffic.commands import CommandNotFoundError, parse_version, run_command
from flannel.traffic.keeper import TrafficKeeper, TrafficSettings, log_recycling, previous_networks, start_traffic_rules
from tests.waiting import wait_until

PLAN = TrafficPlan(forward=(ip_network("10.244.0.0/16"),))


class FakeManager:
    """Records calls; ``ensure`` hands out the queued results."""

    def __init__(self, mode: str, calls: list[str], results: list[SyncResult] | None = None) -> None:
        self.mode = mode
        self.calls = calls
        self.results = results or []

    async def setup(self, plan: TrafficPlan) -> SyncResult:
        self.calls.append(f"{self.mode}.setup")
        return SyncResult(done=("installed",))

    async def ensure(self) -> SyncResult:
        self.calls.append(f"{self.mode}.ensure")
        return self.results.pop(0) if self.results else SyncResult()

    async def remove_all(self) -> SyncResult:
        self.calls.append(f"{self.mode}.remove_all")
        return SyncResult(errors=("cannot remove: busy",))


async def test_start_clears_the_other_mode_first_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    keeper = TrafficKeeper(FakeManager("nftables", calls), FakeManager("iptables", calls), PLAN, 5)
    await keeper.start()
    assert calls == ["iptables.remove_all", "nftables.setup"]
    assert keeper.failing
    assert any("cannot remove: busy" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


async def test_repairs_are_counted_and_reported_to_the_hook(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    seen: list[Repair] = []
    repair = Repair("filter", "FLANNEL-FWD (filter, IPv4): rewritten (chain missing)")
    results = [SyncResult(repaired=(repair,)), SyncResult(), SyncResult(errors=("iptables-restore failed",))]
    before = metrics.TRAFFIC_RULE_REPAIRS.labels("filter").value
    keeper = TrafficKeeper(FakeManager("iptables", calls, results), FakeManager("nftables", calls), PLAN, 5,
                           on_repair=seen.append)
    keeper.started = True
    await keeper.check()
    await keeper.check()
    assert keeper.repairs == 1 and seen == [repair]
    assert metrics.TRAFFIC_RULE_REPAIRS.labels("filter").value == before + 1
    assert not keeper.failing
    await keeper.check()
    assert keeper.failing and keeper.repairs == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["Some iptables rules were missing or changed; repaired: "
                        "FLANNEL-FWD (filter, IPv4): rewritten (chain missing)"]


async def test_keep_checks_every_period_until_cancelled() -> None:
    calls: list[str] = []
    keeper = TrafficKeeper(FakeManager("iptables", calls), FakeManager("nftables", calls), PLAN, 0.01)
    task = asyncio.create_task(keeper.keep())
    await wait_until(lambda: calls.count("iptables.ensure") >= 3, "three resync rounds")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_unexpected_error_costs_one_round_only(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    class Buggy(FakeManager):
        async def ensure(self) -> SyncResult:
            calls.append("ensure")
            if len(calls) == 1:
                raise RuntimeError("bug")
            return SyncResult()

    keeper = TrafficKeeper(Buggy("iptables", calls), FakeManager("nftables", calls), PLAN, 0.01)
    keeper.started = True
    task = asyncio.create_task(keeper.keep())
    await wait_until(lambda: len(calls) >= 2, "a second round after the failing one")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert any("resync failed unexpectedly" in r.getMessage() for r in caplog.records)


async def test_a_start_cut_short_is_run_again_by_the_next_round_not_skipped() -> None:
    """If the start-up hit its time limit (e.g. the xtables lock held), the plan was never installed: the resync
    loop must run the whole start again, and report failing until it has, instead of checking nothing."""
    calls: list[str] = []
    keeper = TrafficKeeper(FakeManager("iptables", calls), FakeManager("nftables", calls), PLAN, 0.01)
    keeper.failing = True  # what start_traffic_rules sets when the time limit fired
    task = asyncio.create_task(keeper.keep())
    await wait_until(lambda: "iptables.ensure" in calls, "a check after the start was run again")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls.index("nftables.remove_all") < calls.index("iptables.setup") < calls.index("iptables.ensure")
    assert keeper.started and not keeper.failing


def test_recycling_is_logged_only_when_the_network_or_subnet_changed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    n, p = IPv4Network("10.244.0.0/16"), IPv4Network("10.244.1.0/24")
    plan = TrafficPlan(masq=(MasqTarget(n, p),))
    log_recycling(plan, PreviousSubnets(subnet=p, network=n))
    log_recycling(plan, PreviousSubnets())  # first start: nothing to recycle
    assert not caplog.records
    log_recycling(plan, PreviousSubnets(subnet=IPv4Network("10.244.9.0/24"), network=n))
    assert "recycling old masquerade rules" in caplog.records[0].getMessage()


async def test_a_missing_binary_is_named_with_a_hint() -> None:
    with pytest.raises(CommandNotFoundError, match=r"^iptables-nope: command not found on PATH \(install the "
                                                   r"iptables package\)$"):
        await run_command(["iptables-nope", "-S"])


async def test_a_failure_names_the_command_its_stderr_and_the_input_line() -> None:
    script = "cat >/dev/null; echo 'iptables-restore: line 2 failed' >&2; exit 1"
    with pytest.raises(TrafficRuleError) as err:
        await run_command(["sh", "-c", script], "*nat\n-A NOPE -j X\nCOMMIT\n")
    assert str(err.value) == (f"`sh -c {script}` failed (exit 1): iptables-restore: line 2 failed "
                              "[input line 2: -A NOPE -j X]")
    result = await run_command(["sh", "-c", "echo out; exit 3"], check=False)
    assert (result.returncode, result.stdout) == (3, "out\n")


async def test_a_hung_command_is_killed() -> None:
    with pytest.raises(TrafficRuleError, match=r"timed out after 0\.2s and was killed"):
        await run_command(["sleep", "30"], timeout=0.2)


def test_parse_version() -> None:
    assert parse_version("iptables v1.8.9 (nf_tables)\n") == (1, 8, 9)
    assert parse_version("ip6tables-restore v1.6.1") == (1, 6, 1)
    assert parse_version("nonsense") is None


def test_previous_networks_are_read_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "subnet.env"
    f.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    assert previous_networks(str(f)) == PreviousSubnets(network=IPv4Network("10.244.0.0/16"),
                                                        subnet=IPv4Network("10.244.1.0/24"))
    assert previous_networks(str(tmp_path / "none.env")) == PreviousSubnets()
    assert not caplog.records  # the subnet manager already warned about missing keys when it read the file


async def test_a_hung_start_does_not_hold_up_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class Hung(FakeManager):
        async def setup(self, plan: TrafficPlan) -> SyncResult:
            await asyncio.sleep(3600)  # a setup that hangs: the start's time limit must cut it short
            return SyncResult()

    monkeypatch.setattr(keeper_module, "START_LIMIT", 0.1)
    monkeypatch.setattr(keeper_module, "make_managers",
                        lambda nftables, variant="": (Hung("iptables", calls), FakeManager("nftables", calls)))
    settings = TrafficSettings(ip_masq=False, forward_rules=True, random_fully_disable=False, resync_seconds=5,
                               nftables=False, subnet_file=str(Path("/nonexistent/subnet.env")))
    config = NetworkConfig(network=IPv4Network("10.244.0.0/16"))
    keeper = await start_traffic_rules(settings, config, Lease(subnet=IPv4Network("10.244.1.0/24")))
    assert keeper.failing and calls == ["nftables.remove_all"]
