"""The daemon's traffic-rule subsystem: pick the mode, clear the other one, install, then keep the rules.

Start-up (spec §2 steps 11–13, before ``subnet.env`` is written): remove the other mode's state (§11.4),
then install the plan. Unlike upstream, a failure here is not fatal: the error names the command and its
stderr, the lease and the routes carry on, and the keeper retries every ``--iptables-resync`` seconds. The
keeper is one supervised subsystem; a firewall failure is logged and retried, never a reason to restart the
data plane. Nothing is removed on exit: the rules must survive a flanneld restart.

Each repaired rule set is logged, counted in ``repairs`` and in the metric
``flannel_traffic_rule_repairs_total{table=...}``, and handed to the optional ``on_repair`` hook. A failure
that persists is logged once per ``ERROR_LOG_INTERVAL`` per distinct message, with the count of the rounds
held back, not on every round: a node out of file descriptors once wrote thousands of identical lines.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING, TypeVar

from flannel import metrics
from flannel.backoff import RepeatLimiter, repeats
from flannel.config import NetworkConfig
from flannel.ipaddr import IPNetwork
from flannel.lease import Lease
from flannel.subnetenv import PreviousSubnets, read_cidr_list, read_subnet_env_values
from flannel.traffic.base import MasqTarget, Repair, SyncResult, TrafficManager, TrafficPlan

if TYPE_CHECKING:
    from flannel.daemon.flags import Options

log = logging.getLogger(__name__)
Net = TypeVar("Net", IPv4Network, IPv6Network)

START_LIMIT = 60.0
"""Seconds the start-up may spend on traffic rules before flanneld carries on and leaves them to the resync."""
ERROR_LOG_INTERVAL = 60.0
"""Seconds between two log lines of the same resync error (the repeats in between are counted)."""


@dataclass(frozen=True)
class TrafficSettings:
    """The flags and config keys that decide the traffic rules."""

    ip_masq: bool
    """``--ip-masq``: install the masquerade rules."""
    forward_rules: bool
    """``--iptables-forward-rules``: install the FORWARD accept rules."""
    random_fully_disable: bool
    """``--ip-masq-fully-random-disable``: never use fully random ports on MASQUERADE."""
    resync_seconds: float
    """``--iptables-resync``: seconds between checks (at least 1, so that 0 cannot spin)."""
    nftables: bool
    """``EnableNFTables`` in the network config: nftables mode instead of iptables."""
    subnet_file: str
    """``--subnet-file``: the previous run's file tells which masquerade rules are being recycled."""

    @classmethod
    def from_flags(cls, opts: Options, config: NetworkConfig) -> TrafficSettings:
        return cls(ip_masq=opts.ip_masq, forward_rules=opts.iptables_forward_rules,
                   random_fully_disable=opts.ip_masq_fully_random_disable,
                   resync_seconds=float(max(opts.iptables_resync, 1)), nftables=config.enable_nftables,
                   subnet_file=opts.subnet_file)


def plan_for(settings: TrafficSettings, config: NetworkConfig, lease: Lease) -> TrafficPlan:
    """The rules for this node: per family that is enabled and has both a network and a lease subnet."""
    families: list[tuple[IPNetwork, IPNetwork]] = []
    if config.enable_ipv4 and config.network is not None and lease.subnet is not None:
        families.append((config.network, lease.subnet))
    if config.enable_ipv6 and config.ipv6_network is not None and lease.ipv6_subnet is not None:
        families.append((config.ipv6_network, lease.ipv6_subnet))
    return TrafficPlan(
        masq=tuple(MasqTarget(n, s) for n, s in families) if settings.ip_masq else (),
        forward=tuple(n for n, _ in families) if settings.forward_rules else (),
        random_fully=not settings.random_fully_disable,
    )


def previous_networks(path: str) -> PreviousSubnets:
    """The previous run's networks and subnets, read quietly: the subnet manager has already warned about
    missing or ambiguous keys when it read the same file at start."""
    try:
        values = read_subnet_env_values(path)
    except OSError:
        return PreviousSubnets()

    def one(key: str, kind: type[Net]) -> Net | None:
        nets = read_cidr_list(values, key)
        return nets[0] if len(nets) == 1 and isinstance(nets[0], kind) else None

    return PreviousSubnets(network=one("FLANNEL_NETWORK", IPv4Network), subnet=one("FLANNEL_SUBNET", IPv4Network),
                           ipv6_network=one("FLANNEL_IPV6_NETWORK", IPv6Network),
                           ipv6_subnet=one("FLANNEL_IPV6_SUBNET", IPv6Network))


def log_recycling(plan: TrafficPlan, previous: PreviousSubnets) -> None:
    """Say so when the previous run masqueraded another network or subnet: its rules are being replaced.

    Upstream deletes the previous rule set rule by rule (§11.2); here the owned chain or table is rewritten
    whole, which removes the old rules in the same transaction that adds the new ones.
    """
    for target, prev_net, prev_sub in ((plan.masq_for(4), previous.network, previous.subnet),
                                       (plan.masq_for(6), previous.ipv6_network, previous.ipv6_subnet)):
        if target is None or (prev_net is None and prev_sub is None):  # nothing to recycle
            continue
        if (prev_net, prev_sub) != (target.network, target.subnet):
            log.info("Current network or subnet (%s, %s) is not equal to previous one (%s, %s), "
                     "recycling old masquerade rules", target.network, target.subnet, prev_net, prev_sub)


def make_managers(nftables: bool, iptables_variant: str = "",
                  netns: str | None = None) -> tuple[TrafficManager, TrafficManager]:
    """(the manager in use, the other mode's manager whose state is removed at start).

    ``iptables_variant`` picks ``iptables-legacy``/``iptables-nft`` instead of PATH's ``iptables`` and ``netns``
    runs every command in a named namespace: both are for the tests.
    """
    from flannel.traffic.iptables import IptablesManager
    from flannel.traffic.nftables import NftablesManager

    ipt, nft = IptablesManager(iptables_variant, netns), NftablesManager(netns)
    return (nft, ipt) if nftables else (ipt, nft)


class TrafficKeeper:
    """Installs a plan with one manager after clearing the other, then keeps it installed."""

    def __init__(self, manager: TrafficManager, other: TrafficManager, plan: TrafficPlan, period: float,
                 on_repair: Callable[[Repair], None] | None = None) -> None:
        self.manager = manager
        self.other = other
        self.plan = plan
        self.period = period
        self.on_repair = on_repair
        """Called once per repaired rule set with its description (a metrics hook)."""
        self.repairs = 0
        """Rule sets repaired since start (found changed or missing, and rewritten)."""
        self.failing = False
        """True while the last attempt left a rule set unwritten (it is retried each period)."""
        self.started = False
        """True once ``start`` ran to its end; until then each round runs it again, not a mere check."""
        self.error_log = RepeatLimiter(ERROR_LOG_INTERVAL)
        """Holds back repeats of the same error line (one line per message per interval, with a count)."""

    async def start(self) -> None:
        """Clear the other mode, install the plan; failures are logged and left to ``keep``."""
        log.info("Starting flannel in %s mode; cleaning up unused %s rules", self.manager.mode, self.other.mode)
        removed = await self.other.remove_all()
        result = removed + await self.manager.setup(self.plan)
        self.started = True
        self._report(result)

    async def check(self) -> SyncResult:
        """One resync round: repair drift, retry failed writes."""
        result = await self.manager.ensure()
        self._report(result)
        return result

    async def keep(self) -> None:
        """The supervised subsystem: ``check`` every ``period`` seconds, for ever.

        Even an unexpected error only costs one round: the firewall is not worth restarting the data plane for.
        """
        while True:
            await asyncio.sleep(self.period)
            try:
                if self.started:
                    await self.check()
                else:  # the start-up was cut short (its time limit): the plan was never handed over
                    await self.start()
            except Exception as exc:
                held = self.error_log.check(f"unexpected {type(exc).__name__}: {exc}")
                if held is not None:
                    log.exception("traffic rules: resync failed unexpectedly (retrying in %gs)%s", self.period,
                                  repeats(held))
                self.failing = True

    def _report(self, result: SyncResult) -> None:
        for line in result.done:
            log.info("%s", line)
        for repair in result.repaired:
            log.warning("Some %s rules were missing or changed; repaired: %s", self.manager.mode, repair.detail)
            self.repairs += 1
            metrics.TRAFFIC_RULE_REPAIRS.labels(repair.table).inc()
            if self.on_repair is not None:
                self.on_repair(repair)
        for line in result.errors:
            held = self.error_log.check(line)
            if held is not None:
                log.error("traffic rules: %s (retrying in %gs)%s", line, self.period, repeats(held))
        was_failing, self.failing = self.failing, bool(result.errors) or not self.started
        if was_failing and not self.failing:
            held = self.error_log.pending()
            log.info("traffic rules: in place again%s", f" (after {held} more failed attempts)" if held else "")
            self.error_log.reset()


async def start_traffic_rules(settings: TrafficSettings, config: NetworkConfig, lease: Lease,
                              on_repair: Callable[[Repair], None] | None = None,
                              iptables_variant: str = "") -> TrafficKeeper:
    """Build the keeper for this node and run its start-up; the caller supervises ``keeper.keep()``."""
    plan = plan_for(settings, config, lease)
    if settings.ip_masq:
        log_recycling(plan, previous_networks(settings.subnet_file))
    manager, other = make_managers(settings.nftables, iptables_variant)
    keeper = TrafficKeeper(manager, other, plan, settings.resync_seconds, on_repair)
    try:
        async with asyncio.timeout(START_LIMIT):
            await keeper.start()
    except TimeoutError:  # e.g. the xtables lock held for minutes: subnet.env and the routes must not wait
        log.error("traffic rules: not set up within %gs; carrying on, the resync retries every %gs",
                  START_LIMIT, keeper.period)
        keeper.failing = True
    return keeper
