"""nftables scripts for ``nft -f -``, as pure functions (spec §11.3).

The chains, rules and comments are upstream's (including its two differences from iptables mode, kept for
parity: the exact ``meta mark 0x4000`` match, and a fourth rule of ``saddr != P daddr N`` where iptables has
``! -s N -d P``). Upstream adds and flushes each chain; we own the tables, so one script replaces both of them
whole: ``table ... {}`` makes sure each exists, ``delete table`` drops it, and the full definition follows, all
in one atomic transaction. A chain the plan no longer wants (``--ip-masq`` turned off) goes with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from flannel.traffic.base import MASQ_MULTICAST, TrafficPlan

MASQ_CHAIN_COMMENT = "chain to manage traffic masquerading by flannel"
FORWARD_CHAIN_COMMENT = "chain to accept flannel traffic"
KUBE_PROXY_MARK = "0x4000"


@dataclass(frozen=True)
class NftTable:
    """One of our two tables."""

    family: str
    """nftables family: ``ip`` or ``ip6``."""
    name: str
    """Table name."""
    version: int
    """The IP version whose plan entries it holds."""

    @property
    def ref(self) -> str:
        """``ip flannel-ipv4``: how nft commands name the table."""
        return f"{self.family} {self.name}"

    @property
    def comment(self) -> str:
        return f"rules for {self.name}"


TABLES = (NftTable("ip", "flannel-ipv4", 4), NftTable("ip6", "flannel-ipv6", 6))


def masq_rules(table: NftTable, network: str, subnet: str, fully_random: bool) -> list[str]:
    """Upstream's six ``postrtg`` rules (``network``/``subnet`` as CIDR text)."""
    f, n, p = table.family, network, subnet
    masquerade = "masquerade fully-random" if fully_random else "masquerade"
    return [
        f"meta mark {KUBE_PROXY_MARK} return",
        f"{f} saddr {p} {f} daddr {n} return",
        f"{f} saddr {n} {f} daddr {p} return",
        f"{f} saddr != {p} {f} daddr {n} return",
        f"{f} saddr {n} {f} daddr != {MASQ_MULTICAST[table.version]} {masquerade}",
        f"{f} saddr != {n} {f} daddr {n} {masquerade}",
    ]


def forward_rules(table: NftTable, network: str) -> list[str]:
    """Upstream's two ``forward`` rules."""
    return [f"{table.family} saddr {network} accept", f"{table.family} daddr {network} accept"]


def _chain(name: str, comment: str, header: str, rules: list[str]) -> list[str]:
    return [f"\tchain {name} {{", f'\t\tcomment "{comment}"', f"\t\t{header}",
            *(f"\t\t{r}" for r in rules), "\t}"]


def table_definition(table: NftTable, plan: TrafficPlan, fully_random: bool) -> str:
    """The full definition of ``table`` for ``plan``: the table with only the chains the plan wants."""
    lines = [f"table {table.ref} {{", f'\tcomment "{table.comment}"']
    masq = plan.masq_for(table.version)
    if masq is not None:
        lines += _chain("postrtg", MASQ_CHAIN_COMMENT, "type nat hook postrouting priority srcnat; policy accept;",
                        masq_rules(table, str(masq.network), str(masq.subnet), fully_random))
    network = plan.forward_for(table.version)
    if network is not None:
        lines += _chain("forward", FORWARD_CHAIN_COMMENT, "type filter hook forward priority filter; policy accept;",
                        forward_rules(table, str(network)))
    lines.append("}")
    return "\n".join(lines) + "\n"


def replace_script(plan: TrafficPlan, fully_random: bool) -> str:
    """One transaction that replaces both tables with their definitions for ``plan``."""
    parts = []
    for table in TABLES:
        parts.append(f"table {table.ref} {{}}\ndelete table {table.ref}\n")
        parts.append(table_definition(table, plan, fully_random))
    return "".join(parts)


def fully_random_probe() -> str:
    """A script for ``nft --check``: can this kernel and nft do ``masquerade fully-random``? (upstream's test)."""
    return ("table ip flannel-ipv4 {\n\tchain masqueradeTest {\n"
            "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
            "\t\tip saddr != 127.0.0.1 masquerade fully-random\n\t}\n}\n")


def existing_tables(list_tables_output: str) -> set[str]:
    """The ``family name`` refs listed by ``nft list tables``, e.g. {"ip flannel-ipv4"}."""
    out = set()
    for line in list_tables_output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table":
            out.add(f"{parts[1]} {parts[2]}")
    return out


def delete_script(refs: list[str]) -> str:
    """Delete the given tables in one transaction."""
    return "".join(f"delete table {ref}\n" for ref in refs)
