"""What the traffic rules must achieve, said once for both firewall tools, and the interface of a manager.

The daemon works out a ``TrafficPlan`` from its flags, the network config and its lease; an iptables or an
nftables manager turns the plan into its own rules. Keeping the plan tool-neutral is what lets the keeper
switch modes, and lets the unit tests check rule generation without a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from flannel.errors import FlannelError
from flannel.ipaddr import IPNetwork

MASQ_MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
"""Multicast destinations that are never masqueraded, per IP version."""


class TrafficRuleError(FlannelError):
    """A firewall command is missing, failed or timed out; ``str(err)`` names the command and its stderr."""


@dataclass(frozen=True)
class MasqTarget:
    """One IP family to masquerade: the cluster network and this node's lease subnet inside it."""

    network: IPNetwork
    """The cluster network (``Network`` or ``IPv6Network``): traffic inside it is never masqueraded."""
    subnet: IPNetwork
    """This node's lease subnet (same family as ``network``)."""

    def __post_init__(self) -> None:
        if self.network.version != self.subnet.version:
            raise ValueError(f"masquerade target mixes families: {self.network} and {self.subnet}")

    @property
    def version(self) -> int:
        """4 or 6."""
        return self.network.version


@dataclass(frozen=True)
class TrafficPlan:
    """The rules flanneld wants on this host; anything of ours the plan does not mention is removed."""

    masq: tuple[MasqTarget, ...] = ()
    """Families to masquerade (``--ip-masq``), at most one per IP version."""
    forward: tuple[IPNetwork, ...] = ()
    """Cluster networks whose traffic FORWARD accepts (``--iptables-forward-rules``), at most one per version."""
    random_fully: bool = True
    """Use fully random source ports on MASQUERADE where supported; False with ``--ip-masq-fully-random-disable``."""

    def __post_init__(self) -> None:
        for what, versions in (("masq", [m.version for m in self.masq]),
                               ("forward", [n.version for n in self.forward])):
            if len(set(versions)) != len(versions):
                raise ValueError(f"traffic plan has two {what} entries for one IP version")

    def masq_for(self, version: int) -> MasqTarget | None:
        """The masquerade target of IP ``version``, if that family is masqueraded."""
        return next((m for m in self.masq if m.version == version), None)

    def forward_for(self, version: int) -> IPNetwork | None:
        """The network whose forwarding is accepted for IP ``version``, if any."""
        return next((n for n in self.forward if n.version == version), None)

    @property
    def empty(self) -> bool:
        """True when flanneld wants no traffic rules at all."""
        return not self.masq and not self.forward


@dataclass(frozen=True)
class Repair:
    """One rule set that was found changed behind our back and rewritten."""

    table: str
    """Where: the iptables table (``nat``, ``filter``) or the nftables table (``flannel-ipv4``...)."""
    detail: str
    """Which rule set, and what had changed, in words."""

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True)
class SyncResult:
    """What one setup, check or cleanup did; the caller logs it and counts the repairs."""

    done: tuple[str, ...] = ()
    """One line per rule set written or removed on purpose (first install, mode-switch cleanup)."""
    repaired: tuple[Repair, ...] = ()
    """One entry per rule set found changed behind our back and rewritten."""
    errors: tuple[str, ...] = ()
    """One message per rule set that could not be read or written; it is retried on the next resync."""

    def __add__(self, other: SyncResult) -> SyncResult:
        return SyncResult(self.done + other.done, self.repaired + other.repaired, self.errors + other.errors)


class TrafficManager(Protocol):
    """One firewall tool's way of holding a ``TrafficPlan`` on the host."""

    mode: str
    """``iptables`` or ``nftables``: what the logs call this manager."""

    async def setup(self, plan: TrafficPlan) -> SyncResult:
        """Install exactly ``plan`` (removing our rule sets it does not want); remember it for ``ensure``.

        A rule set that fails is reported in ``errors`` and installed by a later ``ensure``.
        """
        ...

    async def ensure(self) -> SyncResult:
        """Compare what is installed with what ``setup`` installed; rewrite whatever drifted or is missing."""
        ...

    async def remove_all(self) -> SyncResult:
        """Remove everything this mode owns (the other mode is in use); best effort, never raises."""
        ...
