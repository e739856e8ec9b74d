"""A network made only of routes to peers' public IPs: host-gw, and ipip (tunnel and DirectRouting routes).

Upstream's ``RouteNetwork`` with its one per-backend hook (``route_for``: what route does this lease need?).
Like the vxlan plane it keeps the *desired* route per lease, so that an event is a diff (replaying one changes
nothing), and a periodic reconcile repairs drift with ``route_drift``: a missing or wrong route is re-added
and logged as a repair warning; a stale route of ours is removed (upstream's 10 s "Route recovered" check, plus
stale removal and wrong-route replacement). Until the first lease snapshot, nothing is considered stale.

The routes go out of the external interface, so the network follows it (``external.py``): each reconcile
first asks where the interface is now, moves the routes to its new index when it was re-created, and waits
(without a warning per route) while it is down or gone; the interface's link and address events kick a
reconcile, because the kernel drops every route through a device that goes down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from flannel import metrics
from flannel.backend.base import ExternalInterface, LeasedNetwork
from flannel.backend.external import ExternalLink
from flannel.backend.peer_events import apply_lease_events
from flannel.backend.reconcile_loop import ReconcileLoop
from flannel.backend.route_plane import (
    Address,
    Network,
    PeerRoute,
    apply_ops,
    is_peer_subnet,
    route_drift,
    route_ops,
)
from flannel.errors import LeaseDecodeError
from flannel.lease import Lease, LeaseEvent
from flannel.netlink import LinkEvent, Netlink
from flannel.subnet.lease_tracker import LeaseTracker
from flannel.subnet.manager import WatchResult

log = logging.getLogger(__name__)

@dataclass
class RoutePlane:
    """One address family's routes: ``<remote subnet> via <remote public IP> dev <oif>`` per peer."""

    family: int
    """``socket.AF_INET`` or ``socket.AF_INET6``."""
    cluster: Network
    """The cluster network of this family: our routes are inside it."""
    own_subnet: Network
    """This node's subnet of the family (never routed to a peer)."""
    oif: int
    """The external interface the routes go out of."""
    desired: dict[str, PeerRoute] = field(default_factory=dict)
    """Wanted route by lease key."""

    def route_for(self, lease: Lease) -> PeerRoute | None:
        """The hook: the route a lease needs on this family, None if it has none.

        Raises ``LeaseDecodeError`` for a lease that must not be routed, so that it is skipped alone.
        """
        v6 = self.family == socket.AF_INET6
        subnet: Network | None = lease.ipv6_subnet if v6 else lease.subnet
        public: Address | None = lease.attrs.public_ipv6 if v6 else lease.attrs.public_ip
        if subnet is None or public is None or int(public) == 0:
            return None
        if not is_peer_subnet(subnet, self.cluster, self.own_subnet):
            raise LeaseDecodeError(f"subnet {subnet} is not a peer subnet of the network {self.cluster}")
        return PeerRoute(dst=subnet, gateway=public, oif=self.oif)

    # The ``PeerPlane`` interface of ``peer_events``: a route plane wants one route per lease.
    def entries_for(self, lease: Lease) -> PeerRoute | None:
        return self.route_for(lease)

    def ops_for_change(self, old: PeerRoute | None, new: PeerRoute | None) -> list[object]:
        return route_ops(old, new)


class RouteNetwork(LeasedNetwork):
    """A running route-only network: applies lease events to every family and keeps the kernel reconciled."""

    def __init__(self, nl: Netlink, lease: Lease, mtu: int, backend_type: str, planes: list[RoutePlane],
                 reconcile_interval: float, dev_name: str = "", names: dict[int, str] | None = None,
                 ext: ExternalInterface | None = None) -> None:
        self.nl = nl
        super().__init__(lease, mtu)
        self.backend_type = backend_type
        self.planes = planes
        self.reconcile_interval = reconcile_interval
        self.names = {p.oif: dev_name for p in planes} if dev_name else {}
        self.names.update(names or {})
        self.tracker = LeaseTracker(lease)
        self.synced = False
        self.ext = ExternalLink(ext) if ext is not None else None
        """The external interface the routes go out of (None: routes that do not depend on it)."""

    def handle_events(self, events: list[LeaseEvent]) -> None:
        """Apply lease events to every family. Idempotent: replaying an event changes nothing."""
        apply_lease_events(self.nl, events, self.backend_type, self.planes, self.names)

    def reconcile(self) -> int:
        """Repair every difference between the kernel and the leases; returns the repairs made."""
        if not self.synced:
            return 0  # until the first snapshot, "not desired" does not mean "stale"
        if not self.follow_external():
            return 0
        repairs = 0
        for plane in self.planes:
            drift = route_drift(self.nl, plane.family, plane.cluster, list(plane.desired.values()))
            if drift:
                apply_ops(self.nl, [op for _, op in drift], [r for r, _ in drift], names=self.names)
                repairs += len(drift)
        return repairs

    def follow_external(self) -> bool:
        """Find the external interface again and move the routes to its new index if it has one; False while
        routes through it cannot be added (it is down or gone: the kernel would refuse each one)."""
        if self.ext is None:
            return True
        old = self.ext.refresh(self.nl)
        if old is not None:
            new = self.ext.index
            moved = sum(follow_index(plane, old, new) for plane in self.planes)
            self.names.pop(old, None)
            self.names[new] = self.ext.iface.name
            log.warning("%d peer route(s) now go via %s (index %d, was %d)", moved, self.ext.iface.name, new, old)
        return self.ext.usable

    def watched_links(self) -> set[str]:
        """Devices whose deletion calls for an immediate reconcile; none here (host-gw owns no device)."""
        return set()

    def kicks(self, ev: LinkEvent) -> bool:
        """Which monitor events call for an immediate reconcile: a watched device deleted, or any change of
        the external interface (down, up, re-created, addresses)."""
        return (ev.kind == "del" and ev.name in self.watched_links()) or (
            self.ext is not None and self.ext.concerns(ev))

    async def run(self, results: AsyncIterator[WatchResult]) -> None:
        metrics.KNOWN_PEERS.set_function(lambda: len(self.tracker.leases))
        loop = ReconcileLoop(self.reconcile, self.reconcile_interval)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(loop.run(), name=f"{self.backend_type}-reconcile")
            if self.watched_links() or self.ext is not None:
                tg.create_task(loop.kick_on_link_events(self.kicks, addresses=self.ext is not None),
                               name=f"{self.backend_type}-links")
            async for result in results:
                self.handle_events(self.tracker.apply(result))
                if result.snapshot is not None and not self.synced:
                    self.synced = True
                    loop.reconcile_once()


def follow_index(plane: RoutePlane, old: int, new: int) -> int:
    """Move a route plane from the external interface's ``old`` index to its ``new`` one: the plane's ``oif``
    (for future leases) and every wanted route through ``old``. Returns how many wanted routes moved.

    Only attributes are rewritten, from outside the plane: the reconcile then finds the kernel routes (gone
    with the old device) missing and adds them through the new index.
    """
    if plane.oif == old:
        plane.oif = new
    moved = 0
    for key, route in list(plane.desired.items()):
        if route.oif == old:
            plane.desired[key] = dataclasses.replace(route, oif=new)
            moved += 1
    return moved
