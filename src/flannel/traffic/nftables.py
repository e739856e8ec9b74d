"""The nftables traffic manager: two owned tables, replaced whole with one ``nft -f -`` (spec §11.3).

Beyond upstream, which never looks at its tables again, the rules are resynced like in iptables mode: every
``--iptables-resync`` seconds each table is listed and compared with the listing read back right after our
last write; on any difference both tables are rewritten in one transaction and the repair is logged.
"""

from __future__ import annotations

import asyncio
import logging

from flannel.traffic.base import Repair, SyncResult, TrafficPlan, TrafficRuleError
from flannel.traffic.commands import CommandNotFoundError, run_command
from flannel.traffic.nft_rules import (
    TABLES,
    NftTable,
    delete_script,
    existing_tables,
    fully_random_probe,
    replace_script,
)

log = logging.getLogger(__name__)

NFT = "nft"


async def list_table(table: NftTable, netns: str | None = None) -> str | None:
    """``nft list table``; None when the table does not exist."""
    result = await run_command([NFT, "list", "table", table.family, table.name], check=False, netns=netns)
    if result.returncode == 0:
        return result.stdout
    if "No such file or directory" in result.stderr:
        return None
    raise TrafficRuleError(f"`nft list table {table.ref}` failed (exit {result.returncode}): {result.stderr}")


class NftablesManager:
    """Holds a ``TrafficPlan`` in the tables ``ip flannel-ipv4`` and ``ip6 flannel-ipv6``."""

    mode = "nftables"

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        """Run nft in this named namespace (tests); None: where flanneld runs."""
        self._plan: TrafficPlan | None = None
        """The plan of the last ``setup``; None before it (and after ``remove_all``)."""
        self._installed: dict[str, str | None] | None = None
        """Each table's listing right after our last successful write; None until one succeeded."""
        self._fully_random: bool | None = None
        self._lock = asyncio.Lock()

    async def fully_random(self) -> bool:
        """Whether ``masquerade fully-random`` is accepted, by upstream's dry-run test (cached once it ran)."""
        if self._fully_random is None:
            result = await run_command([NFT, "--check", "-f", "-"], fully_random_probe(), check=False,
                                       netns=self.netns)
            self._fully_random = result.returncode == 0
            if not self._fully_random:
                log.warning("nftables: masquerade fully-random unsupported: %s", result.stderr)
        return self._fully_random

    async def script(self, plan: TrafficPlan) -> str:
        """The transaction that installs ``plan``."""
        fully_random = bool(plan.masq) and plan.random_fully and await self.fully_random()
        return replace_script(plan, fully_random)

    async def setup(self, plan: TrafficPlan) -> SyncResult:
        async with self._lock:
            self._plan, self._installed = plan, None
            return await self._write("installed")

    async def ensure(self) -> SyncResult:
        async with self._lock:
            if self._plan is None:
                return SyncResult()
            if self._installed is None:  # an earlier write failed: try again
                return await self._write("installed")
            drifted: list[tuple[NftTable, str]] = []
            for table in TABLES:
                try:
                    listing = await list_table(table, self.netns)
                except TrafficRuleError as exc:
                    return SyncResult(errors=(f"nftables: cannot check: {exc}",))
                if listing != self._installed.get(table.ref):
                    drifted.append((table, "missing" if listing is None else "changed"))
            if not drifted:
                return SyncResult()
            return await self._write("repaired", drifted)

    async def remove_all(self) -> SyncResult:
        async with self._lock:
            self._plan = self._installed = None
            try:
                listed = existing_tables((await run_command([NFT, "list", "tables"], netns=self.netns)).stdout)
            except CommandNotFoundError:
                return SyncResult()  # no nft binary: flanneld can never have made these tables here
            except TrafficRuleError as exc:  # e.g. a kernel without nf_tables: nothing of ours there either
                log.debug("nftables: not checked for removal: %s", exc)
                return SyncResult()
            refs = [t.ref for t in TABLES if t.ref in listed]
            if not refs:
                return SyncResult()
            try:
                await run_command([NFT, "-f", "-"], delete_script(refs), netns=self.netns)
            except TrafficRuleError as exc:
                return SyncResult(errors=(f"nftables: cannot remove {', '.join(refs)}: {exc}",))
            return SyncResult(done=tuple(f"nftables: table {ref} removed" for ref in refs))

    async def _write(self, how: str, drifted: list[tuple[NftTable, str]] | None = None) -> SyncResult:
        assert self._plan is not None
        try:
            script = await self.script(self._plan)
            await run_command([NFT, "-f", "-"], script, netns=self.netns)
        except TrafficRuleError as exc:
            return SyncResult(errors=(f"nftables: {exc}",))
        log.debug("nft -f - < %s", script)
        installed: dict[str, str | None] = {}
        for table in TABLES:
            try:
                installed[table.ref] = await list_table(table, self.netns)
            except TrafficRuleError as exc:  # written but unverifiable: the next resync rewrites it
                log.warning("nftables: cannot read back table %s: %s", table.ref, exc)
                installed[table.ref] = None
        self._installed = installed
        if drifted:  # both tables were rewritten in one go; each drifted one counts as a repair
            return SyncResult(repaired=tuple(Repair(t.name, f"nftables: table {t.ref} {what}, rewritten")
                                             for t, what in drifted))
        return SyncResult(done=(f"nftables: tables {', '.join(t.ref for t in TABLES)} {how} "
                                f"({len(self._plan.masq)} masq families, {len(self._plan.forward)} forward families)",))
