"""The one route reconciler: routes to peers' public IPs, shared by host-gw, ipip and vxlan's DirectRouting.

Upstream has one "route network" (``pkg/backend/route_network.go``) reused by host-gw and ipip; this is ours.
A ``PeerRoute`` is what a remote lease needs (``<subnet> via <gateway> [dev <device>]``); ``route_drift``
compares the wanted routes with the kernel and returns the repairs; ``apply_ops`` sends a batch and logs it.

**How our routes are told from others'.** These routes live on a device that is not ours (the external
interface, ``eth0``), next to the host's own routes, so "on our device" cannot mean "ours" as it does for
``flannel.1``. Every route programmed here is marked with the route protocol ``RTPROT_FLANNEL`` (``ip route
... proto 70``). Only a route with that protocol, in the main table and inside the cluster network, can ever be
found stale and deleted, and the delete itself carries the protocol, so the kernel refuses to remove anything
else even if it appeared in the meantime. 70 is unused by the kernel (``rtnetlink.h``) and by iproute2's
``rt_protos`` list. A wanted route that exists with another protocol (made by upstream flanneld, which uses
``boot``, or by hand) counts as present when it is otherwise equal: nothing is rewritten just to mark it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Container, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flannel import metrics
from flannel.ipaddr import within
from flannel.netlink import (
    FdbDelete,
    NeighDelete,
    Netlink,
    NetlinkError,
    NexthopDelete,
    Route,
    RouteDelete,
    RouteReplace,
    is_gone,
)
from flannel.netlink.consts import RT_TABLE_MAIN, RTN_UNICAST

log = logging.getLogger(__name__)

DETAILED_BATCH = 100
"""Kernel changes of one batch that are logged one line each at INFO; a larger batch gets one line of counts."""

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

RTPROT_FLANNEL = 70
"""Route protocol marking the underlay routes flanneld programs (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class PeerRoute:
    """``<dst> via <gateway> [dev <oif>] [onlink]`` in the main table: one remote lease's route."""

    dst: Network
    """The remote subnet."""
    gateway: Address
    """The remote public IP."""
    oif: int | None = None
    """The device (host-gw: the external interface); None lets the kernel choose (vxlan DirectRouting)."""
    onlink: bool = False
    """The gateway is taken as on the device without a lookup (ipip: the tunnel's far end)."""

    def replace_op(self) -> RouteReplace:
        return RouteReplace(dst=self.dst, gateway=self.gateway, oif=self.oif, onlink=self.onlink,
                            protocol=RTPROT_FLANNEL)

    def delete_op(self) -> RouteDelete:
        # Any protocol: a route to exactly this place for this lease is the lease's route, whoever made it
        # (upstream flanneld before an upgrade made the same route with protocol boot).
        return RouteDelete(dst=self.dst, gateway=self.gateway, oif=self.oif)

    def matches(self, r: Route) -> bool:
        """Whether the kernel route ``r`` (same destination) does what this one wants."""
        return (r.type == RTN_UNICAST and r.gateway == self.gateway and r.onlink == self.onlink
                and (self.oif is None or r.oif == self.oif))


def is_peer_subnet(subnet: Network, cluster: Network, own: Network) -> bool:
    """Inside the cluster network and clear of our own subnet (see ``is_peer_net``)."""
    if subnet.version != cluster.version:
        return False
    return is_peer_net(int(subnet.network_address), subnet.prefixlen, cluster, own)


def is_peer_net(address: int, prefixlen: int, cluster: Network, own: Network) -> bool:
    """``is_peer_subnet`` of the subnet ``address/prefixlen`` of ``cluster``'s family, given as numbers:
    ``within``/``overlaps`` with the shifts done by hand (this runs once per peer per event, for thousands of
    peers).

    Never route what is not a peer's share of the cluster network: a hand-written key such as 0.0.0.0-0
    would otherwise replace the host's default route (upstream programs it blindly).
    """
    bits, cplen, oplen = cluster.max_prefixlen, cluster.prefixlen, own.prefixlen
    if prefixlen < cplen or address >> (bits - cplen) != int(cluster.network_address) >> (bits - cplen):
        return False
    shortest = min(prefixlen, oplen)
    return address >> (bits - shortest) != int(own.network_address) >> (bits - shortest)


def is_on_link(nl: Netlink, public: Address) -> bool:
    """True when the kernel reaches ``public`` without a gateway: DirectRouting's test (vxlan and ipip)."""
    try:
        info = nl.route_get(public)
    except NetlinkError as exc:  # e.g. a blackhole or prohibit route: not on-link, tunnel instead
        log.warning("route lookup for %s failed (%s); using the tunnel for it", public, exc)
        return False
    return info is not None and info.gateway is None


def route_ops(old: PeerRoute | None, new: PeerRoute | None) -> list[object]:
    """Operations turning one lease's route ``old`` into ``new`` (either may be None)."""
    if old == new:
        return []
    ops: list[object] = []
    if old is not None and (new is None or new.dst != old.dst):
        ops.append(old.delete_op())
    if new is not None:
        ops.append(new.replace_op())  # a replace of the same destination also drops the wrong route
    return ops


def route_drift(nl: Netlink, family: int, cluster: Network, wanted: Sequence[PeerRoute],
                claimed: Container[Network] = ()) -> list[tuple[str, object]]:
    """``(reason, op)`` pairs that make the kernel hold exactly the ``wanted`` routes of ours.

    A wanted route missing or wrong is replaced. A route of ours (``RTPROT_FLANNEL``, main table, inside
    ``cluster``) that is not wanted, and whose destination is not ``claimed`` by the caller for another
    kind of route (vxlan's tunnel routes), is deleted. Our routes are listed by the kernel's protocol filter,
    so a host carrying a full BGP table costs nothing here.
    """
    repairs: list[tuple[str, object]] = []
    ours = {r.dst: r for r in nl.routes(family, protocol=RTPROT_FLANNEL)}
    absent = [w.dst for w in wanted if w.dst not in ours]
    elsewhere = main_routes(nl, family, absent, exact=set(absent)) if absent else {}
    wanted_dsts = set()
    for w in wanted:
        wanted_dsts.add(w.dst)
        r = ours.get(w.dst) or elsewhere.get(w.dst)
        if r is None or not w.matches(r):
            repairs.append((f"route to {w.dst} {'missing' if r is None else 'wrong'}", w.replace_op()))
    for net, r in ours.items():
        if net not in wanted_dsts and net not in claimed and within(net, cluster):
            repairs.append((f"stale route to {net}",
                            RouteDelete(dst=net, gateway=r.gateway, oif=r.oif, protocol=RTPROT_FLANNEL)))
    return repairs


def main_routes(nl: Netlink, family: int, dsts: Sequence[Network], exact: Collection[Network] = ()
                ) -> dict[Network, Route]:
    """The main-table routes to exactly ``dsts``, wherever they point, without listing the table.

    Each is one fib-match lookup, all sent at once. A lookup that ends anywhere but in that very prefix
    of main leaves the route missing or hidden (by a more specific route, or a policy rule). For the
    ``exact`` ones, whose presence decides whether to repair, only the table can tell, so it is then listed:
    only on drift or in an unusual routing setup. For the others (repaired in any case) only the log's
    "missing"/"wrong" hangs on it.
    """
    found: dict[Network, Route] = {}
    if not dsts:
        return found
    unsure: set[Network] = set()
    for dst, r in zip(dsts, nl.route_matches([d.network_address for d in dsts]), strict=True):
        if r is not None and r.dst == dst and r.table == RT_TABLE_MAIN:
            found[dst] = r
        elif dst in exact:
            unsure.add(dst)
    if unsure:
        found.update((r.dst, r) for r in nl.routes(family) if r.dst in unsure)
    return found


def apply_ops(nl: Netlink, ops: Sequence[object], reasons: Sequence[str] | None = None,
              names: dict[int, str] | None = None) -> int:
    """Apply a batch, logging one line per kernel change and one warning per failure; return failures.

    The success lines of a batch go out as one multi-line record (the klog formatter heads every line), so
    that programming thousands of peers is not dominated by per-record logging overhead.
    """
    if not ops:
        return 0
    if reasons:  # only reconciles give reasons: these ops repair drift
        metrics.count_repairs(ops)
    try:
        results = nl.apply(ops)  # type: ignore[arg-type]
    except (NetlinkError, OSError) as exc:
        # The batch as a whole failed (no answer from the kernel, a replaced socket): a fault of the moment,
        # not a reason to stop. The planes already want the new state; the next reconcile compares them with
        # the kernel and applies what is missing.
        log.warning("a batch of %d kernel operations failed (%s); the next reconcile repairs what it missed",
                    len(ops), exc)
        return len(ops)
    failures = 0
    # A large batch that repairs nothing (a snapshot of thousands of peers) is one INFO line of counts, its
    # changes one per line at -v 4 only: spelling out 15 000 changes was 50 ms of a 5000-peer start and 1.2 MB
    # of log (upstream logs them at V(2)-V(4) only). Repairs and small batches stay one line per change.
    detail = bool(reasons) or len(ops) <= DETAILED_BATCH or log.isEnabledFor(logging.DEBUG)
    done: list[str] = []
    applied: dict[str, int] = {}
    for i, (op, err) in enumerate(zip(ops, results, strict=True)):
        if err is None:
            if detail:
                text = op.describe(names)  # type: ignore[attr-defined]
                done.append(f"{text} (repair: {reasons[i]})" if reasons else text)
            else:
                kind = metrics.op_kind(op)
                applied[kind] = applied.get(kind, 0) + 1
        elif isinstance(op, RouteDelete | NeighDelete | FdbDelete | NexthopDelete) and is_gone(err):
            log.debug("%s: already gone", op.describe(names))
        else:
            failures += 1
            log.warning("%s failed: %s", op.describe(names), err)  # type: ignore[attr-defined]
    if done:
        # Repairs mean something changed the kernel behind our back: worth a warning, not just info.
        log.log(logging.WARNING if reasons else logging.INFO if len(done) <= DETAILED_BATCH else logging.DEBUG,
                "%s", "\n".join(done))
    if applied:
        log.info("applied %d kernel changes (%s); each is logged at -v 4", sum(applied.values()),
                 ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in applied.items()))
    return failures
