"""Per-family VXLAN programming: the desired kernel entries for each remote lease, applied and reconciled.

One ``VXLANPlane`` exists per address family. It keeps the *desired* entries per peer, so that a lease event
is a diff against what was wanted before (idempotent, safe to replay), and so that a periodic reconcile
can compare the kernel with the desired state and repair drift: entries deleted by hand, a device that was
removed and recreated, stale entries left by a lease that vanished while flanneld was down.
"""

from __future__ import annotations

import logging
import socket
from array import array
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeVar

from flannel.backend.route_plane import PeerRoute, is_on_link, is_peer_net, main_routes, route_drift
from flannel.backend.vxlan_entries import PeerEntries, TunnelDestinations
from flannel.errors import LeaseDecodeError
from flannel.ipaddr import mac_text, within
from flannel.lease import Lease, vtep_mac, vtep_mac_int
from flannel.netlink import (
    FdbDelete,
    FdbReplace,
    NeighDelete,
    NeighReplace,
    Netlink,
    NexthopDelete,
    NexthopReplace,
    RouteDelete,
    RouteReplace,
    RouteViaNexthop,
)
from flannel.netlink.consts import NTF_SELF, NUD_PERMANENT, RT_TABLE_MAIN, RTM_F_CLONED, RTNH_F_ONLINK
from flannel.netlink.neigh import entry_fields
from flannel.netlink.nexthops import nexthop_fields, nexthop_id
from flannel.netlink.ops import Addr, Net
from flannel.netlink.routes import network_of, route_fields
from flannel.netlink.transport import Steps, drain

log = logging.getLogger(__name__)

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
RTPROT_KERNEL = 2
"""Routes the kernel made itself, e.g. the /128 prefix route of the v6 device's own address."""
_MAC_TAG = 1 << 128
"""Added to a MAC's number in ``_touched``, which holds addresses (below 2**128) too."""
ROWS_PER_STEP = 1000
"""Kernel entries a stepped reconcile compares before it pauses: about 2 ms of Python each at 5000 peers, and the
first step of a table also reads its whole dump (about 8 ms; issue #16)."""
R = TypeVar("R")
_RIGHT = object()
"""A wanted FDB entry found as it should be, during one comparison."""


@dataclass
class VXLANPlane:
    """State and programming of one family's device (``flannel.<VNI>`` or ``flannel-v6.<VNI>``)."""

    nl: Netlink
    """The netlink socket used for every change."""
    family: int
    """``socket.AF_INET`` or ``socket.AF_INET6``."""
    dev_name: str
    """Device name."""
    cluster: Network
    """The cluster network of this family; routes to it on the device are ours."""
    own_subnet: Network
    """This node's subnet of the family (never programmed as a peer)."""
    direct_routing: bool = False
    """Use plain routes to peers on the same L2 segment."""
    dev_index: int = 0
    """Current kernel index of the device (changes when it is recreated)."""
    desired: dict[str, PeerEntries] = field(default_factory=dict)
    """Wanted entries by lease key."""
    nexthops: bool = False
    """Tunnel routes name nexthop objects (IPv4, kernel 5.3+; see ``netlink.nexthops``) instead of carrying their
    gateway: the kernel adds them in linear rather than quadratic time."""
    foreign_ids: frozenset[int] = frozenset()
    """Nexthop ids held by objects that are not on our device (someone else's): those peers get plain routes."""
    _touched: set[object] | None = field(default=None, init=False, repr=False)
    """While a stepped comparison runs: the destinations, gateways and MACs lease events changed since its
    listing was taken (see ``_tracked``)."""

    @property
    def v6(self) -> bool:
        """Whether this is the IPv6 plane."""
        return self.family == socket.AF_INET6

    def _addr(self, value: int) -> Addr:
        """An address for a netlink operation: IPv4 as its number (operations take it so), IPv6 as an object."""
        return IPv6Address(value) if self.family == socket.AF_INET6 else value

    def _net(self, e: PeerEntries) -> Net:
        """``e``'s destination for a netlink operation, the same way."""
        if self.family == socket.AF_INET6:
            return IPv6Network((e.dst, e.prefixlen))
        return e.dst, e.prefixlen

    def _address(self, value: int) -> Address:
        """An address object (for logs, lookups and the route reconciler)."""
        return IPv6Address(value) if self.family == socket.AF_INET6 else IPv4Address(value)

    def _network(self, e: PeerEntries) -> Network:
        """``e``'s destination as a network object."""
        if self.family == socket.AF_INET6:
            return IPv6Network((e.dst, e.prefixlen))
        return IPv4Network((e.dst, e.prefixlen))

    def _route(self, e: PeerEntries) -> PeerRoute:
        """The underlay route of a direct entry (the device is left to the kernel: the peer is on-link)."""
        return PeerRoute(dst=self._network(e), gateway=self._address(e.gateway))

    # -- lease events --------------------------------------------------------------------------------

    def entries_for(self, lease: Lease) -> PeerEntries | None:
        """What a lease needs on this plane; None if the lease has nothing for this family.

        Raises ``LeaseDecodeError`` when its backend data is unusable, so the caller can skip that lease alone.
        """
        v6 = self.v6
        net = lease.net_ints(v6)
        if v6:
            public6 = lease.attrs.public_ipv6
            public = 0 if public6 is None else int(public6)
        else:
            public = lease.attrs.public_ip_int
        if net is None or public == 0:
            return None
        dst, prefixlen = net
        if not is_peer_net(dst, prefixlen, self.cluster, self.own_subnet):
            raise LeaseDecodeError(f"subnet {lease.ipv6_subnet if v6 else lease.subnet} is not a peer subnet of the "
                                   f"network {self.cluster}")
        mac = vtep_mac_int(lease.attrs, v6)
        if mac is None:
            field_name = "BackendV6Data" if v6 else "BackendData"
            raise LeaseDecodeError(f"{field_name}.VtepMAC is missing or not a MAC address: "
                                   f"{vtep_mac(lease.attrs, v6)!r}")
        if self.direct_routing and is_on_link(self.nl, self._address(public)):
            return PeerEntries(dst=dst, prefixlen=prefixlen, gateway=public, direct=True)
        return PeerEntries(dst=dst, prefixlen=prefixlen, gateway=dst, direct=False, mac=mac, public_ip=public)

    def ops_for_change(self, old: PeerEntries | None, new: PeerEntries | None) -> list[object]:
        """Netlink operations turning ``old`` into ``new`` (either may be None)."""
        touched = self._touched
        if touched is not None:  # a stepped comparison is under way: its listing predates this change
            for e in (old, new):
                if e is not None:
                    touched.update((e.dst, e.gateway, _MAC_TAG | e.mac))
        ops: list[object] = []
        if old is not None and old != new:
            ops.extend(self._remove_ops(old, keep=new))
        if new is not None and new != old:
            ops.extend(self._add_ops(new, old))
        return ops

    def _add_ops(self, e: PeerEntries, old: PeerEntries | None = None) -> list[object]:
        """Writes for ``e``; with the tunnel entries ``old`` already programmed, only those that differ.

        A peer that moves to another public IP changes its FDB entry alone: rewriting its unchanged route
        would cost a walk over every route on the device in the kernel (IPv4 hashes these nexthops by device,
        so they share one bucket), which under lease churn with thousands of peers was the largest cost. An
        entry removed behind our back is the reconcile's to restore, as for any other peer.
        """
        if e.direct:
            return [self._route(e).replace_op()]
        was = old if old is not None and not old.direct else None
        ops: list[object] = []
        if was is None or was.gateway != e.gateway or was.mac != e.mac:
            ops.append(NeighReplace(index=self.dev_index, ip=self._addr(e.gateway), mac=e.mac))
        if was is None or was.mac != e.mac or was.public_ip != e.public_ip:
            ops.append(FdbReplace(index=self.dev_index, mac=e.mac, dst=self._addr(e.public_ip)))
        if was is None or was.dst != e.dst or was.prefixlen != e.prefixlen or was.gateway != e.gateway:
            nh = self._nexthop_of(e)
            if nh:
                ops.append(NexthopReplace(id=nh, gateway=e.gateway, oif=self.dev_index))
            ops.append(self._route_op(e, nh))
        return ops

    def use_nexthops(self) -> None:
        """Program tunnel routes through nexthop objects from now on, learning which ids the kernel's objects
        on other devices hold; nothing changes on the IPv6 plane or on a kernel without nexthop objects."""
        found = None if self.v6 else self.nl.nexthops()
        if found is not None:
            self.nexthops = True
            self.foreign_ids = frozenset(nh for nh, oif, _gw, _flags in found if oif != self.dev_index)

    def _nexthop_of(self, e: PeerEntries) -> int:
        """The nexthop id ``e``'s route names; 0 for a plain route (off, IPv6, direct, or the id is taken)."""
        if not self.nexthops or e.direct:
            return 0
        nh = nexthop_id(e.gateway)
        return 0 if nh in self.foreign_ids else nh

    def _route_op(self, e: PeerEntries, nh: int) -> object:
        if nh:
            return RouteViaNexthop(dst=(e.dst, e.prefixlen), id=nh)
        return RouteReplace(dst=self._net(e), gateway=self._addr(e.gateway), oif=self.dev_index, onlink=True)

    def _remove_ops(self, e: PeerEntries, keep: PeerEntries | None) -> list[object]:
        ops: list[object] = []
        if keep is None or keep.dst != e.dst or keep.prefixlen != e.prefixlen:
            ops.append(self._route(e).delete_op() if e.direct else RouteDelete(dst=self._net(e)))
        if not e.direct:
            if keep is None or keep.direct or keep.mac != e.mac:
                ops.append(FdbDelete(index=self.dev_index, mac=e.mac, dst=self._addr(e.public_ip)))
            if keep is None or keep.direct or keep.gateway != e.gateway:
                ops.append(NeighDelete(index=self.dev_index, ip=self._addr(e.gateway)))
                nh = self._nexthop_of(e)
                if nh:  # after the route: deleting a nexthop takes every route that names it along
                    ops.append(NexthopDelete(id=nh))
        return ops

    # -- reconcile -----------------------------------------------------------------------------------

    def drift_ops(self) -> list[tuple[str, object]]:
        """Compare the kernel with ``desired``; return ``(reason, op)`` pairs that repair every difference.

        One table at a time, so that only one kernel dump is held in memory at once (thousands of peers).
        """
        return [repair for step in self.drift_steps() for repair in drain(step())]

    def drift_steps(self) -> list[Callable[[], Steps[list[tuple[str, object]]]]]:
        """``drift_ops`` cut into its tables (three; four with nexthop objects), each itself stepped, so that a
        caller can let lease events in between: reading and comparing one table of 5000 peers is about 20 ms of
        Python (30-40 ms when it was decoded first), a visible stall in the event loop for every event that
        arrives meanwhile."""
        tables = [self._neighbour_drift, self._fdb_drift]
        if self.nexthops:  # before the routes, which name them
            tables.append(self._nexthop_drift)
        return [partial(self._tracked, step) for step in (*tables, self._route_drift)]

    def _tracked(self, step: Callable[[set[object]], Steps[R]]) -> Steps[R]:
        """Run one table's stepped comparison, collecting what lease events change while it pauses.

        Its kernel listing is taken at the first step and compared with ``desired`` at later ones, so entries
        that events wrote or removed in between (their destinations, gateways and MACs: ``touched``) are left
        out of this round's comparison: the listing shows them as they were, and repairing them from it would
        log false drift or fight the event. The next round compares them.
        """
        touched: set[object] = set()
        self._touched = touched
        try:
            return (yield from step(touched))
        finally:
            self._touched = None

    def _neighbour_drift(self, touched: set[object]) -> Steps[list[tuple[str, object]]]:
        # Indexed by the entries' own gateway numbers: no key object is made per peer and round.
        dev = self.dev_index
        wanted = {e.gateway: e for e in self.desired.values() if not e.direct}
        wrong: list[PeerEntries] = []
        stale: list[int] = []

        def each(data: bytes, start: int, end: int) -> None:
            ifindex, state, _flags, dst, ll = entry_fields(data, start, end)
            if ifindex != dev or not dst:
                return
            ip = int.from_bytes(dst, "big")
            e = wanted.pop(ip, None)
            if e is None:
                if state & NUD_PERMANENT:
                    stale.append(ip)
            elif not ll or len(ll) != 6 or int.from_bytes(ll, "big") != e.mac or not state & NUD_PERMANENT:
                wrong.append(e)

        yield from self.nl.neighbour_scan(dev, self.family, each, ROWS_PER_STEP)
        repairs: list[tuple[str, object]] = [
            (f"neighbour {self._address(e.gateway)} {what}",
             NeighReplace(index=dev, ip=self._addr(e.gateway), mac=e.mac))
            for what, entries in (("wrong", wrong), ("missing", wanted.values()))
            for e in entries if e.gateway not in touched]
        repairs.extend((f"stale neighbour {self._address(ip)}", NeighDelete(index=dev, ip=self._addr(ip)))
                       for ip in stale if ip not in touched)
        return repairs

    def _fdb_drift(self, touched: set[object]) -> Steps[list[tuple[str, object]]]:
        # A wanted entry found right is marked in place (its value becomes _RIGHT) rather than collected in sets
        # of the dump's MACs, which held two sets through the comparison (0.45 MiB of the reconcile's peak at 5000
        # peers, issue #16); the index's keys are the entries' own MAC numbers. Only MACs found with a wrong
        # remote are collected.
        dev = self.dev_index
        size = 16 if self.v6 else 4
        wanted: dict[int, PeerEntries | object] = {e.mac: e for e in self.desired.values() if not e.direct}
        wrong: set[int] = set()
        stale: list[tuple[int, int]] = []

        def each(data: bytes, start: int, end: int) -> None:
            ifindex, state, flags, dst, ll = entry_fields(data, start, end)
            # Only permanent entries on the device itself are ours; learned ones (Backend.Learning) are not.
            if ifindex != dev or not ll or not (flags & NTF_SELF and state & NUD_PERMANENT):
                return
            mac = int.from_bytes(ll, "big")
            e = wanted.get(mac)
            if e is None:
                # The all-zeros entry (a default destination someone may have added by hand) is never ours.
                if dst and len(dst) == size and mac:
                    stale.append((mac, int.from_bytes(dst, "big")))
            elif e is not _RIGHT:  # another remote of a MAC already found right is left alone
                assert isinstance(e, PeerEntries)
                if dst is not None and len(dst) == size and int.from_bytes(dst, "big") == e.public_ip:
                    wanted[mac] = _RIGHT
                else:
                    wrong.add(mac)

        yield from self.nl.fdb_scan(dev, each, ROWS_PER_STEP)
        repairs: list[tuple[str, object]] = []
        for mac, e in wanted.items():
            if isinstance(e, PeerEntries) and (_MAC_TAG | mac) not in touched:
                repairs.append((f"fdb entry {mac_text(mac)} {'wrong' if mac in wrong else 'missing'}",
                                FdbReplace(index=dev, mac=mac, dst=self._addr(e.public_ip))))
        repairs.extend((f"stale fdb entry {mac_text(mac)}", FdbDelete(index=dev, mac=mac, dst=self._addr(ip)))
                       for mac, ip in stale if (_MAC_TAG | mac) not in touched)
        return repairs

    def _nexthop_drift(self, touched: set[object]) -> Steps[list[tuple[str, object]]]:
        # Every object is listed, not only our device's: the ids on other devices are someone else's, and the
        # peers whose id they hold keep plain routes (``foreign_ids``). Ours are recognised by their shape. An
        # object is all in its id (the gateway), so the wanted ones are a sorted array of ids, not an index of
        # entries: 20 KB instead of ~0.4 MiB at 5000 peers, through the whole stepped comparison (issue #16).
        dev = self.dev_index
        wanted = array("I", sorted(nexthop_id(e.gateway) for e in self.desired.values() if not e.direct))
        count = len(wanted)
        seen = bytearray(count)
        foreign: set[int] = set()
        wrong: list[int] = []
        stale: list[int] = []

        def each(data: bytes, start: int, end: int) -> None:
            nh, oif, gw, flags = nexthop_fields(data, start, end)
            if oif != dev:
                foreign.add(nh)
                return
            ours = gw is not None and len(gw) == 4 and int.from_bytes(gw, "big") == nh and flags & RTNH_F_ONLINK
            at = bisect_left(wanted, nh)
            if at < count and wanted[at] == nh:
                seen[at] = 1
                if not ours:
                    wrong.append(nh)
            elif ours:
                stale.append(nh)

        yield from self.nl.nexthop_scan(each, ROWS_PER_STEP)
        self.foreign_ids = frozenset(foreign)
        missing = [nh for at, nh in enumerate(wanted) if not seen[at] and nh not in foreign]
        repairs: list[tuple[str, object]] = [
            (f"nexthop {nh} {what}", NexthopReplace(id=nh, gateway=nh, oif=dev))  # the id is the gateway
            for what, ids in (("wrong", wrong), ("missing", missing))
            for nh in ids if nh not in touched]
        repairs.extend((f"stale nexthop {nh}", NexthopDelete(id=nh)) for nh in stale if nh not in touched)
        return repairs

    def _route_drift(self, touched: set[object]) -> Steps[list[tuple[str, object]]]:
        # Only the device's routes are listed (the kernel filters): a host carrying a full BGP table has a
        # million routes in main, and decoding them all every reconcile would stall the event loop. They are
        # compared undecoded, by destination number and length (``ipaddress`` builds and hashes in Python).
        dev = self.dev_index
        nexthop_of = self._nexthop_of
        tunnel = {e.dst << 8 | e.prefixlen: e for e in self.desired.values() if not e.direct}
        direct = {e.dst << 8 | e.prefixlen for e in self.desired.values() if e.direct}
        wrong: list[PeerEntries] = []
        stale: list[tuple[int, bytes | None, int]] = []

        def each(data: bytes, start: int, end: int) -> None:
            family, dst_len, proto, _scope, _type, flags, dst, gw, oif, table, nh = route_fields(data, start, end)
            # A route naming a nexthop object carries its device only in compat mode (the kernel filtered by it).
            if flags & RTM_F_CLONED or table != RT_TABLE_MAIN or (oif != dev and not nh):
                return
            key = int.from_bytes(dst or b"", "big") << 8 | dst_len
            e = tunnel.pop(key, None)
            if e is not None:
                want = nexthop_of(e)
                if nh != want or (not want and (gw is None or int.from_bytes(gw, "big") != e.gateway
                                                or not flags & RTNH_F_ONLINK)):
                    wrong.append(e)
            elif key not in direct and proto != RTPROT_KERNEL:
                # A /128 address adds a kernel route to itself in the main table (a /32 does not): not stale.
                stale.append((family, dst, dst_len))

        yield from self.nl.route_scan(self.family, dev, each, ROWS_PER_STEP)
        missing = [e for e in tunnel.values() if e.dst not in touched]
        nets = [self._network(e) for e in missing]
        elsewhere = main_routes(self.nl, self.family, nets) if missing else {}
        repairs: list[tuple[str, object]] = []
        for e, net in zip(missing, nets, strict=True):
            r = elsewhere.get(net)
            if r is None or r.gateway is None or int(r.gateway) != e.gateway or r.oif != dev or not r.onlink:
                repairs.append((f"route to {net} {'missing' if r is None else 'wrong'}",
                                self._route_op(e, nexthop_of(e))))
        repairs.extend((f"route to {self._network(e)} wrong", self._route_op(e, nexthop_of(e)))
                       for e in wrong if e.dst not in touched)
        for family, dst, dst_len in stale:
            net = network_of(family, dst, dst_len)
            if within(net, self.cluster) and int(net.network_address) not in touched:
                repairs.append((f"stale route to {net}", RouteDelete(dst=net, oif=dev)))
        # Listed now, after the last step: nothing to leave out.
        return repairs + route_drift(self.nl, self.family, self.cluster,
                                     [self._route(e) for e in self.desired.values() if e.direct],
                                     claimed=TunnelDestinations(self.desired))

