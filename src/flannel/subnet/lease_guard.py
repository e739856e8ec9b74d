"""The gate between the lease watch and the kernel: one bad or hostile record never takes a working peer down.

Every node can write any key under ``<prefix>/subnets/``, and upstream programs whatever it reads. Seen in a
real cluster: a record ``10.244.84.0-25`` written by hand inside a live peer's ``10.244.84.0/24`` replaced that
peer's neighbour entry (both subnets start at 10.244.84.0) and 48 of 49 pings between two real pods were lost;
a record that copied another node's VtepMAC with another public IP rewrote that node's FDB entry and
redirected its traffic. A backend's plane cannot see this: it programs one lease at a time.

``LeaseGuard`` sees every remote lease (the ``LeaseTracker`` hands it each batch of events) and passes on only
those that cannot disturb another. A lease is skipped, with a WARNING naming it and the lease it collides
with, and counted in ``flannel_lease_rejected_total{reason}``, for the first of these that applies:

* ``outside_network``: its subnet is not inside ``Network`` / ``IPv6Network``;
* ``overlaps_own``: it overlaps this node's own subnet (it would steal our pods' traffic);
* ``overlaps_lease``: it overlaps a lease already accepted;
* ``subnet_len``: its prefix is not the network's ``SubnetLen`` / ``IPv6SubnetLen`` (checked only where those
  describe this node's own lease: always in etcd mode; in kube mode, where the podCIDRs decide, only if the
  operator wrote a matching value);
* ``duplicate_vtep_mac`` (vxlan): it claims the VtepMAC of an accepted lease with another public IP.

**First holder wins.** An accepted lease keeps its entries; the newcomer waits among the skipped ones. An
update that would make an accepted lease collide is skipped too, and the entries of its last good version
stay. When a holder goes away (removed, or it switched backend type), and at every snapshot, the skipped
leases are tried again in the order they were first skipped, so the earliest claimant takes the place.
Replaying an event changes nothing, logs nothing and counts nothing.

Accepted subnets never overlap, so per family they are disjoint intervals kept sorted: one ``bisect`` finds a
collision, whatever the prefix lengths (no per-prefix tables: 5000 peers must fit in flanneld's 50 MiB).
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_right, insort
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flannel import metrics
from flannel.config import NetworkConfig
from flannel.errors import LeaseDecodeError
from flannel.gojson import fold
from flannel.lease import EventType, Lease, LeaseEvent

log = logging.getLogger(__name__)

Network = IPv4Network | IPv6Network
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True, slots=True)
class Family:
    """What a remote lease must respect in one address family."""

    v6: bool
    """Which family: IPv6 subnets, ``PublicIPv6`` and ``BackendV6Data``, or the IPv4 ones."""
    network: Network
    """``Network`` / ``IPv6Network``: every peer subnet lies inside it."""
    own: Network | None
    """This node's subnet of the family."""
    subnet_len: int | None = None
    """The prefix length every lease has; None where it is not known (kube mode)."""

    def subnet(self, lease: Lease) -> Network | None:
        return lease.ipv6_subnet if self.v6 else lease.subnet

    def vtep(self, lease: Lease) -> tuple[str, IPv4Address | IPv6Address] | None:
        """The lease's ``(VtepMAC, public IP)`` on this family; None if it has none usable."""
        public = lease.attrs.public_ipv6 if self.v6 else lease.attrs.public_ip
        if public is None or int(public) == 0:
            return None
        try:
            data = lease.attrs.backend_json(self.v6)
        except LeaseDecodeError:
            return None  # the backend skips it alone, with its own warning
        mac = data.get("VtepMAC")
        if mac is None:  # Go matches keys case-insensitively; the exact spelling is the common case
            mac = fold(data, ["VtepMAC"]).get("VtepMAC")
        if not isinstance(mac, str) or not _MAC_RE.match(mac.lower()):
            return None
        return mac.lower(), public


class _Intervals:
    """Disjoint address ranges sorted by start, each owned by one lease key."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: dict[int, tuple[int, str]] = {}

    def hit(self, first: int, last: int) -> str | None:
        """The key owning a range that overlaps ``[first, last]``, if any (one exists at most next to it)."""
        i = bisect_right(self.starts, last) - 1
        if i < 0:
            return None
        end, key = self.ends[self.starts[i]]
        return key if end >= first else None

    def add(self, first: int, last: int, key: str) -> None:
        insort(self.starts, first)
        self.ends[first] = (last, key)

    def remove(self, first: int, key: str) -> None:
        if self.ends.get(first, (0, ""))[1] == key:
            del self.starts[bisect_right(self.starts, first) - 1]
            del self.ends[first]


def _span(net: Network) -> tuple[int, int]:
    first = int(net.network_address)
    return first, first | ((1 << (net.max_prefixlen - net.prefixlen)) - 1)


def _within(a: Network, b: Network) -> bool:
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a.version == b.version and b0 <= a0 and a1 <= b1


def _overlaps(a: Network, b: Network) -> bool:
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 <= b1 and b0 <= a1


class LeaseGuard:
    """Accepts remote leases that collide with nothing accepted before them; see the module docstring."""

    def __init__(self, families: Sequence[Family], backend_type: str | None = None, vtep_macs: bool = False) -> None:
        self.families = list(families)
        self.backend_type = backend_type
        """Leases of another type program nothing, so they claim nothing (None: every lease counts, as udp)."""
        self.vtep_macs = vtep_macs
        self.held: dict[str, Lease] = {}
        """The accepted leases, as last passed on: what the backend has programmed."""
        self.skipped: dict[str, tuple[Lease, str]] = {}
        """Leases (or newer versions of held ones) not passed on, with the reason, in the order first skipped."""
        self._ranges = [_Intervals() for _ in self.families]
        self._macs: list[dict[str, tuple[IPv4Address | IPv6Address, dict[str, None]]]] = [{} for _ in self.families]

    @classmethod
    def for_network(cls, config: NetworkConfig, own: Lease, backend_type: str | None = None,
                    vtep_macs: bool = False) -> LeaseGuard:
        """The guard of a network: its enabled families, with SubnetLen checked where it made our own lease."""
        families = []
        for v6, on, net, plen, mine in ((False, config.enable_ipv4, config.network, config.subnet_len, own.subnet),
                                        (True, config.enable_ipv6, config.ipv6_network, config.ipv6_subnet_len,
                                         own.ipv6_subnet)):
            if on and net is not None:
                known = plen if plen and mine is not None and mine.prefixlen == plen else None
                families.append(Family(v6=v6, network=net, own=mine, subnet_len=known))
        return cls(families, backend_type, vtep_macs)

    def admit(self, events: Iterable[LeaseEvent], snapshot: bool = False) -> list[LeaseEvent]:
        """The events the backend may apply, in order; ``snapshot``: the batch came from a fresh listing."""
        out: list[LeaseEvent] = []
        released = snapshot
        for ev in events:
            key = ev.lease.key
            if ev.type is EventType.REMOVED:
                was_skipped = self.skipped.pop(key, None) is not None
                held = self.held.pop(key, None)
                if held is not None:
                    self._release(held)
                    released = True
                    out.append(LeaseEvent(EventType.REMOVED, held))
                elif was_skipped:
                    log.info("skipped lease %s was removed", key)
                else:
                    out.append(ev)  # unknown to us too: passed on bare, as the tracker does
                continue
            if not self._claims(ev.lease):  # another backend's: the backend ignores it and drops its entries
                self.skipped.pop(key, None)
                held = self.held.pop(key, None)
                if held is not None:
                    self._release(held)
                    released = True
                out.append(ev)
                continue
            renewed = key in self.held
            if self._try(ev.lease):
                out.append(ev)
                released |= renewed  # its VtepMAC or public IP may have changed, freeing a skipped lease's
        if released:
            out.extend(self._retry_skipped())
        return out

    # -- deciding ----------------------------------------------------------------------------------------

    def _claims(self, lease: Lease) -> bool:
        return self.backend_type is None or lease.attrs.backend_type == self.backend_type

    def _try(self, lease: Lease) -> bool:
        """Accept ``lease`` (taking its claims in place of its held version's) or skip it; True if accepted."""
        key = lease.key
        verdict = self._collision(lease)
        if verdict is not None:
            reason, why = verdict
            before = self.skipped.get(key)
            self.skipped[key] = (lease, reason)
            if before is None or before[1] != reason or before[0].attrs != lease.attrs:
                metrics.LEASE_REJECTED.labels(reason).inc()
                kept = " (its entries from before are kept)" if key in self.held else ""
                log.warning("skipping lease %s: %s%s", key, why, kept)
            return False
        held = self.held.get(key)
        if held is not None:
            self._release(held)
        self.skipped.pop(key, None)
        self.held[key] = lease
        self._take(lease)
        return True

    def _collision(self, lease: Lease) -> tuple[str, str] | None:
        """``(reason, explanation naming the other lease)`` when ``lease`` must be skipped, else None."""
        key = lease.key
        for fam, ranges, macs in zip(self.families, self._ranges, self._macs, strict=True):
            net = fam.subnet(lease)
            if net is None:
                continue
            if not _within(net, fam.network):
                return "outside_network", f"subnet {net} is outside the network {fam.network}"
            if fam.own is not None and _overlaps(net, fam.own):
                return "overlaps_own", f"subnet {net} overlaps this node's own subnet {fam.own}"
            other = ranges.hit(*_span(net))
            if other is not None and other != key:
                theirs = fam.subnet(self.held[other])
                return ("overlaps_lease", f"subnet {net} overlaps {theirs} of lease {other}, accepted earlier "
                        "(the first holder keeps it)")
            if fam.subnet_len is not None and net.prefixlen != fam.subnet_len:
                return "subnet_len", f"subnet {net} is not a /{fam.subnet_len} (the network's subnet length)"
            vtep = fam.vtep(lease) if self.vtep_macs else None
            if vtep is not None and vtep[0] in macs:
                public, holders = macs[vtep[0]]
                others = [k for k in holders if k != key]
                if public != vtep[1] and others:
                    return ("duplicate_vtep_mac", f"VtepMAC {vtep[0]} with public IP {vtep[1]} is lease {others[0]}'s, "
                            f"accepted earlier with public IP {public} (the first holder keeps it)")
        return None

    def _retry_skipped(self) -> Iterator[LeaseEvent]:
        for key, (lease, reason) in list(self.skipped.items()):
            if self._collision(lease) is None:
                log.info("accepting lease %s, skipped before (%s): what it collided with is gone", key, reason)
                self._try(lease)
                yield LeaseEvent(EventType.ADDED, lease)

    # -- claims --------------------------------------------------------------------------------------------

    def _take(self, lease: Lease) -> None:
        for fam, ranges, macs in zip(self.families, self._ranges, self._macs, strict=True):
            net = fam.subnet(lease)
            if net is not None:
                ranges.add(*_span(net), lease.key)
            vtep = fam.vtep(lease) if self.vtep_macs and net is not None else None
            if vtep is not None:
                macs.setdefault(vtep[0], (vtep[1], {}))[1][lease.key] = None

    def _release(self, lease: Lease) -> None:
        for fam, ranges, macs in zip(self.families, self._ranges, self._macs, strict=True):
            net = fam.subnet(lease)
            if net is not None:
                ranges.remove(_span(net)[0], lease.key)
            vtep = fam.vtep(lease) if self.vtep_macs and net is not None else None
            if vtep is not None and vtep[0] in macs:
                holders = macs[vtep[0]][1]
                holders.pop(lease.key, None)
                if not holders:
                    del macs[vtep[0]]
