"""The iptables traffic manager: owned chains, rewritten whole with ``iptables-restore --noflush`` (spec §11.1–§11.2).

Which binary: like upstream, whatever ``iptables`` / ``ip6tables`` (and their ``-restore``) are first on PATH.
Upstream's image puts kube's ``iptables-wrapper`` there, which picks the legacy or nft backend that the host
already uses; a host install should do the same (Debian: ``update-alternatives --config iptables``). The
``variant`` argument (``legacy``, ``nft``) exists for the tests, which run every check against both backends.

Checking is cheap and tool-agnostic: one ``iptables -t TABLE -S`` per owned chain and resync, compared with
the listing read back right after our own write (``iptables -S`` formatting differs between versions and
backends, so we compare the tool's output with itself, never with our own rendering of it). Any difference
(a rule deleted, an extra rule, the chain gone, the jump gone or doubled) makes us rewrite that chain.
"""

from __future__ import annotations

import asyncio
import logging

from flannel.traffic.base import Repair, SyncResult, TrafficPlan, TrafficRuleError
from flannel.traffic.commands import CommandNotFoundError, parse_version, run_command
from flannel.traffic.iptables_rules import (
    CHAINS,
    Observed,
    OwnedChain,
    RuleSet,
    TableListing,
    expected,
    forward_rules,
    install_lines,
    masq_rules,
    removal_lines,
    restore_payload,
    summary,
)

log = logging.getLogger(__name__)

FEATURE_VERSION = (1, 6, 2)
"""iptables from 1.6.2 on has ``--random-fully`` and ``iptables-restore --wait`` (go-iptables' test)."""


class IptablesBinaries:
    """The command names of one iptables variant for one IP version."""

    def __init__(self, version: int, variant: str = "", netns: str | None = None) -> None:
        base = "iptables" if version == 4 else "ip6tables"
        suffix = f"-{variant}" if variant else ""
        self.version = version
        self.netns = netns
        self.iptables = f"{base}{suffix}"
        self.restore_cmd = f"{base}{suffix}-restore"
        self._features: tuple[int, int, int] | None = None

    async def modern(self) -> bool:
        """True when the binary is at least 1.6.2 (cached after the first successful ``--version``)."""
        if self._features is None:
            result = await run_command([self.iptables, "--version"], netns=self.netns)
            self._features = parse_version(result.stdout + result.stderr) or (0, 0, 0)
        return self._features >= FEATURE_VERSION

    async def listing(self, table: str) -> TableListing:
        """``iptables -w -t TABLE -S``: the whole table (one call shows our chain and its parent's jumps)."""
        return TableListing((await run_command([self.iptables, "-w", "-t", table, "-S"], netns=self.netns)).stdout)

    async def chain_listing(self, chain: OwnedChain) -> TableListing:
        """``-S PARENT`` and ``-S CHAIN``: what checking one rule set needs, every resync, without listing the
        whole table (a kube-proxy node's nat table can hold tens of thousands of rules, and legacy iptables
        holds the xtables lock while listing). When our chain is absent (or the listing fails), the whole
        table is listed, so the error or the absence is seen exactly as ``listing`` sees it."""
        parent = await run_command([self.iptables, "-w", "-t", chain.table, "-S", chain.parent], netns=self.netns)
        try:
            own = await run_command([self.iptables, "-w", "-t", chain.table, "-S", chain.name], netns=self.netns)
        except TrafficRuleError:
            return await self.listing(chain.table)
        return TableListing(parent.stdout + own.stdout)

    async def restore(self, table: str, lines: list[list[str]]) -> None:
        """Apply ``lines`` to ``table`` in one ``iptables-restore --noflush`` transaction."""
        args = [self.restore_cmd, "--noflush"] + (["--wait"] if await self.modern() else [])
        payload = restore_payload({table: lines})
        log.debug("%s < %s", " ".join(args), summary(lines))
        await run_command(args, payload, netns=self.netns)


class IptablesManager:
    """Holds a ``TrafficPlan`` in ``iptables``/``ip6tables``; see the module docstring."""

    mode = "iptables"

    def __init__(self, variant: str = "", netns: str | None = None) -> None:
        self.binaries = {v: IptablesBinaries(v, variant, netns) for v in (4, 6)}
        self._plan = TrafficPlan()
        """The plan of the last ``setup``."""
        self._wanted: dict[tuple[str, int], RuleSet] = {}
        """Rule sets of the current plan, keyed by (chain name, IP version)."""
        self._installed: dict[tuple[str, int], Observed] = {}
        """How each rule set read back after our last write; a key is absent until a write succeeded."""
        self._lock = asyncio.Lock()

    async def rule_sets(self, plan: TrafficPlan) -> list[RuleSet]:
        """The rule sets of ``plan``; ``--random-fully`` only when the binary is new enough and not disabled."""
        out = []
        for version in (4, 6):
            masq = plan.masq_for(version)
            if masq is not None:
                random_fully = plan.random_fully and await self._modern(version)
                out.append(masq_rules(masq.network, masq.subnet, random_fully))
            network = plan.forward_for(version)
            if network is not None:
                out.append(forward_rules(network))
        return out

    async def _modern(self, version: int) -> bool:
        try:
            return await self.binaries[version].modern()
        except TrafficRuleError as exc:  # the restore will fail with a clear error anyway
            log.debug("cannot tell the %s version: %s", self.binaries[version].iptables, exc)
            return False

    async def setup(self, plan: TrafficPlan) -> SyncResult:
        async with self._lock:
            self._plan = plan
            self._wanted = {(r.chain.name, r.version): r for r in await self.rule_sets(plan)}
            self._installed.clear()
            result = SyncResult()
            for version in (4, 6):
                for chain in CHAINS:
                    rule_set = self._wanted.get((chain.name, version))
                    if rule_set is not None:
                        result += await self._install(rule_set, "installed")
                    else:
                        result += await self._remove(chain, version)
            return result

    async def ensure(self) -> SyncResult:
        async with self._lock:
            result = SyncResult()
            if len(self._installed) < len(self._wanted):  # a write failed, maybe for want of the binary: its
                # version (hence --random-fully) may be known only now
                self._wanted = {(r.chain.name, r.version): r for r in await self.rule_sets(self._plan)}
            for key, rule_set in self._wanted.items():
                installed = self._installed.get(key)
                if installed is None:  # an earlier write failed: try again
                    result += await self._install(rule_set, "installed")
                    continue
                try:
                    listing = await self.binaries[rule_set.version].chain_listing(rule_set.chain)
                except TrafficRuleError as exc:
                    result += SyncResult(errors=(f"{rule_set.label}: cannot check: {exc}",))
                    continue
                drift = listing.observe(rule_set.chain).drift_from(installed)
                if drift:
                    result += await self._install(rule_set, "repaired", drift, listing)
            return result

    async def remove_all(self) -> SyncResult:
        async with self._lock:
            self._plan = TrafficPlan()
            self._wanted.clear()
            self._installed.clear()
            result = SyncResult()
            for version in (4, 6):
                for chain in CHAINS:
                    result += await self._remove(chain, version)
            return result

    async def _install(self, rule_set: RuleSet, how: str, drift: str = "",
                       listing: TableListing | None = None) -> SyncResult:
        binaries = self.binaries[rule_set.version]
        table = rule_set.chain.table
        key = (rule_set.chain.name, rule_set.version)
        self._installed.pop(key, None)
        try:
            if listing is None:
                listing = await binaries.chain_listing(rule_set.chain)
            await binaries.restore(table, install_lines(rule_set, listing))
        except TrafficRuleError as exc:
            return SyncResult(errors=(f"{rule_set.label}: {exc}",))
        try:
            readback = (await binaries.chain_listing(rule_set.chain)).observe(rule_set.chain)
        except TrafficRuleError as exc:  # written, but unverifiable: compare with our rendering meanwhile
            log.warning("%s: cannot read back the rules just written: %s", rule_set.label, exc)
            readback = expected(rule_set)
        if readback != expected(rule_set):
            log.debug("%s: %s prints the rules differently from how they were written: %s",
                      rule_set.label, binaries.iptables, readback.drift_from(expected(rule_set)))
        self._installed[key] = readback
        what = (f"{rule_set.label}: {len(rule_set.rules)} {rule_set.chain.purpose} rules and one jump from "
                f"{rule_set.chain.parent}")
        if how == "repaired":
            return SyncResult(repaired=(Repair(table, f"{what} rewritten ({drift})"),))
        return SyncResult(done=(f"{what} {how}",))

    async def _remove(self, chain: OwnedChain, version: int) -> SyncResult:
        """Remove ``chain`` if it exists; a missing binary or an unusable table means there is nothing to remove."""
        binaries = self.binaries[version]
        label = chain.label(version)
        try:
            listing = await binaries.listing(chain.table)
        except CommandNotFoundError:
            return SyncResult()
        except TrafficRuleError as exc:  # e.g. no IPv6 nat table in this kernel: nothing of ours there either
            log.debug("%s: not checked for removal: %s", label, exc)
            return SyncResult()
        lines = removal_lines(chain, listing)
        if not lines:
            return SyncResult()
        try:
            await binaries.restore(chain.table, lines)
        except TrafficRuleError as exc:
            return SyncResult(errors=(f"{label}: cannot remove: {exc}",))
        return SyncResult(done=(f"{label}: removed (with {len(listing.references(chain.name))} jumps to it)",))
