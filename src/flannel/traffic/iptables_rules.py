"""iptables rule generation and ``iptables-restore`` payloads, as pure functions (spec §11.1–§11.2).

The rules are upstream's, token for token and in upstream's order, so ``iptables -S`` reads exactly as on a Go
node (and an upstream flanneld and ours can take over from each other). What differs is how they are written:
upstream checks each rule with ``iptables -C`` and emits ``-D``/``-A`` pairs; we own the chain, so we rewrite it
whole in one ``iptables-restore --noflush`` transaction: ``:CHAIN - [0:0]`` empties (or creates) it, the rules
follow, and the jump from the built-in chain is replaced by deleting *every* existing jump to our chain first.
``--noflush`` appends to built-in chains, so without those deletes each restart would add one more jump.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from flannel.ipaddr import IPNetwork
from flannel.traffic.base import MASQ_MULTICAST

KUBE_PROXY_MARK = "0x4000/0x4000"
"""kube-proxy's masquerade mark: such packets are NATed by kube-proxy already and must not be again."""

MAX_PROBLEMS = 3
"""At most this many differences are spelled out in a repair's log line."""

Spec = tuple[str, ...]
"""One rule's arguments after ``-A CHAIN`` (e.g. ``("-s", "10.244.0.0/16", "-j", "ACCEPT")``)."""


@dataclass(frozen=True)
class OwnedChain:
    """A chain flanneld owns, and the built-in chain that jumps to it."""

    table: str
    """The iptables table (``nat`` or ``filter``)."""
    name: str
    """Our chain's name; every rule in it is ours."""
    parent: str
    """The built-in chain holding the one jump to ours."""
    comment: str
    """The ``-m comment`` text on every rule, upstream's."""
    purpose: str
    """What the logs call this rule set (``masq`` or ``forward``)."""

    @property
    def jump(self) -> Spec:
        """The jump rule in ``parent``."""
        return ("-m", "comment", "--comment", self.comment, "-j", self.name)

    def label(self, version: int) -> str:
        """``FLANNEL-POSTRTG (nat, IPv4)``: how log lines name one rule set."""
        return f"{self.name} ({self.table}, IPv{version})"


MASQ = OwnedChain("nat", "FLANNEL-POSTRTG", "POSTROUTING", "flanneld masq", "masq")
FORWARD = OwnedChain("filter", "FLANNEL-FWD", "FORWARD", "flanneld forward", "forward")
CHAINS = (MASQ, FORWARD)


@dataclass(frozen=True)
class RuleSet:
    """The desired content of one owned chain for one IP version."""

    chain: OwnedChain
    """Which chain."""
    version: int
    """4 (iptables) or 6 (ip6tables)."""
    rules: tuple[Spec, ...]
    """The chain's rules, in order."""

    @property
    def label(self) -> str:
        return self.chain.label(self.version)


def masq_rules(network: IPNetwork, subnet: IPNetwork, random_fully: bool) -> RuleSet:
    """Upstream's six ``FLANNEL-POSTRTG`` rules for cluster network ``network`` and lease ``subnet``.

    ``random_fully`` must already say whether the binary supports it *and* the flag allows it.
    """
    n, p, c = str(network), str(subnet), ("-m", "comment", "--comment", MASQ.comment)
    masquerade = ("-j", "MASQUERADE", "--random-fully") if random_fully else ("-j", "MASQUERADE")
    rules: tuple[Spec, ...] = (
        ("-m", "mark", "--mark", KUBE_PROXY_MARK, *c, "-j", "RETURN"),  # kube-proxy NATs these itself
        ("-s", p, "-d", n, *c, "-j", "RETURN"),  # pod to pod: never NAT inside the overlay
        ("-s", n, "-d", p, *c, "-j", "RETURN"),
        ("!", "-s", n, "-d", p, *c, "-j", "RETURN"),  # external traffic to our own pods keeps its source
        ("-s", n, "!", "-d", MASQ_MULTICAST[network.version], *c, *masquerade),  # pods to the world
        ("!", "-s", n, "-d", n, *c, *masquerade),  # the host to remote pods
    )
    return RuleSet(MASQ, network.version, rules)


def forward_rules(network: IPNetwork) -> RuleSet:
    """Upstream's two ``FLANNEL-FWD`` rules: accept forwarding from and to the cluster network."""
    c = ("-m", "comment", "--comment", FORWARD.comment)
    return RuleSet(FORWARD, network.version, (("-s", str(network), *c, "-j", "ACCEPT"),
                                              ("-d", str(network), *c, "-j", "ACCEPT")))


def quote_token(token: str, after_comment: bool = False) -> str:
    """A token as ``iptables-restore`` reads it: a comment argument is always double-quoted, as upstream does."""
    if after_comment or not token or any(ch.isspace() or ch in "\"'\\" for ch in token):
        return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return token


def format_line(tokens: Sequence[str]) -> str:
    """One payload (or ``iptables -S``) line from its tokens."""
    return " ".join(quote_token(t, i > 0 and tokens[i - 1] == "--comment") for i, t in enumerate(tokens))


def restore_payload(tables: Mapping[str, Sequence[Sequence[str]]]) -> str:
    """The ``iptables-restore`` input for ``{table: [line tokens, ...]}``: ``*table``, the lines, ``COMMIT``."""
    out = []
    for table, lines in tables.items():
        out.append(f"*{table}\n")
        out.extend(format_line(line) + "\n" for line in lines)
        out.append("COMMIT\n")
    return "".join(out)


def rule_line(chain: str, spec: Spec) -> str:
    """How ``iptables -S`` prints ``spec`` appended to ``chain``."""
    return format_line(("-A", chain, *spec))


@dataclass(frozen=True)
class Observed:
    """The part of a table listing that belongs to one owned chain."""

    rules: tuple[str, ...] | None
    """The chain's ``-A`` lines in order; None when the chain does not exist."""
    jumps: tuple[str, ...]
    """The ``-A`` lines of the parent chain that jump to ours (exactly one when all is well)."""

    def drift_from(self, wanted: Observed) -> str:
        """What differs from ``wanted``, in words ("" when nothing does)."""
        problems = []
        if self.rules is None:
            problems.append("chain missing")
        elif self.rules != wanted.rules:
            have, want = set(self.rules), set(wanted.rules or ())
            missing = [r for r in wanted.rules or () if r not in have]
            extra = [r for r in self.rules if r not in want]
            problems += [f"missing: {r}" for r in missing] + [f"unexpected: {r}" for r in extra]
            if not missing and not extra:
                problems.append("rules out of order")
        if self.jumps != wanted.jumps:
            problems.append(f"{len(self.jumps)} jumps from the parent chain instead of {len(wanted.jumps)}"
                            if self.jumps else "jump from the parent chain missing")
        if len(problems) > MAX_PROBLEMS:  # one log line, not a page: a flushed chain is "6 missing"
            problems[MAX_PROBLEMS:] = [f"and {len(problems) - MAX_PROBLEMS} more"]
        return "; ".join(problems)


def expected(rule_set: RuleSet) -> Observed:
    """What the listing shows once ``rule_set`` is installed (used until a read-back says otherwise)."""
    chain = rule_set.chain
    return Observed(tuple(rule_line(chain.name, r) for r in rule_set.rules), (rule_line(chain.parent, chain.jump),))


class TableListing:
    """``iptables -t TABLE -S`` output, indexed by chain."""

    def __init__(self, text: str) -> None:
        self.chains: set[str] = set()
        self.rules: dict[str, list[str]] = {}
        for line in text.splitlines():
            parts = line.split(None, 2)
            if len(parts) >= 2 and parts[0] in ("-N", "-P"):
                self.chains.add(parts[1])
            elif len(parts) >= 2 and parts[0] == "-A":
                self.rules.setdefault(parts[1], []).append(line.rstrip())

    def references(self, target: str) -> list[str]:
        """Every rule (in any chain) that jumps or goes to ``target``."""
        return [line for lines in self.rules.values() for line in lines if _targets(line, target)]

    def observe(self, chain: OwnedChain) -> Observed:
        """The rules of ``chain`` and the jumps to it from its parent."""
        rules = tuple(self.rules.get(chain.name, ())) if chain.name in self.chains else None
        jumps = tuple(line for line in self.rules.get(chain.parent, ()) if _targets(line, chain.name))
        return Observed(rules, jumps)


def _targets(line: str, target: str) -> bool:
    tokens = line.split()
    return any(t in ("-j", "-g", "--jump", "--goto") and tokens[i + 1:i + 2] == [target] for i, t in enumerate(tokens))


def delete_line(listed: str) -> list[str]:
    """The tokens that delete the rule ``listed`` (an ``-A CHAIN ...`` line of ``iptables -S``)."""
    try:
        tokens = shlex.split(listed)
    except ValueError:  # unbalanced quotes in someone else's rule: iptables-restore will say what it thinks
        tokens = listed.split()
    return ["-D", *tokens[1:]]


def install_lines(rule_set: RuleSet, listing: TableListing) -> list[list[str]]:
    """The transaction that makes ``listing`` hold exactly ``rule_set``, with one jump at the parent's end.

    ``:CHAIN`` creates the chain or (with ``--noflush``) empties it; the rules follow; then every existing jump
    to the chain is deleted before the one jump is appended, as upstream's bootstrap moves it to the end.
    """
    chain = rule_set.chain
    lines: list[list[str]] = [[f":{chain.name}", "-", "[0:0]"]]
    lines += [["-A", chain.name, *r] for r in rule_set.rules]
    lines += [delete_line(j) for j in listing.observe(chain).jumps]
    lines.append(["-A", chain.parent, *chain.jump])
    return lines


def removal_lines(chain: OwnedChain, listing: TableListing) -> list[list[str]]:
    """The transaction that removes ``chain`` and every rule that jumps to it; empty when none exists.

    ⚠ Fixed: upstream tries to delete the chain while ``POSTROUTING`` still jumps to it, which the kernel
    refuses, so its mode-switch cleanup never worked. The references go first here.
    """
    lines = [delete_line(ref) for ref in listing.references(chain.name)]
    if chain.name in listing.chains:
        lines += [[f":{chain.name}", "-", "[0:0]"], ["-X", chain.name]]
    return lines


def summary(lines: Iterable[Sequence[str]]) -> str:
    """A short description of a transaction for debug logs."""
    return "; ".join(format_line(line) for line in lines)
