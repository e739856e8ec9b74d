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

import dataclasses
import logging
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flannel import metrics
from flannel.config import NetworkConfig
from flannel.errors import LeaseDecodeError
from flannel.ipaddr import mac_text
from flannel.lease import EventType, Lease, LeaseEvent, vtep_mac_int

log = logging.getLogger(__name__)

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address
Vtep = tuple[int, int]
"""A lease's VTEP on one family: its VtepMAC (as a 48-bit number: smaller than the text) and public IP (as a
number)."""


@dataclass(frozen=True)
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

    @cached_property
    def span(self) -> tuple[int, int]:
        """First and last address of ``network``."""
        return _span(self.network)

    @cached_property
    def own_span(self) -> tuple[int, int] | None:
        """First and last address of ``own``."""
        return _span(self.own) if self.own is not None else None

    def subnet(self, lease: Lease) -> Network | None:
        """The lease's subnet of this family as an object (built for an IPv4 lease: for messages only)."""
        return lease.ipv6_subnet if self.v6 else lease.subnet

    def span_of(self, lease: Lease) -> tuple[int, int] | None:
        """First and last address of the lease's subnet of this family, from the numbers the lease holds."""
        net = lease.net_ints(self.v6)
        return None if net is None else (net[0], self.last(*net))

    def last(self, first: int, prefixlen: int) -> int:
        """The last address of the subnet ``first/prefixlen`` of this family."""
        return first | ((1 << ((128 if self.v6 else 32) - prefixlen)) - 1)

    def vtep(self, lease: Lease) -> Vtep | None:
        """The lease's VTEP on this family; None if it has none usable (the backend then skips it alone)."""
        if self.v6:
            public6 = lease.attrs.public_ipv6
            public = 0 if public6 is None else int(public6)
        else:
            public = lease.attrs.public_ip_int
        if public == 0:
            return None
        try:
            mac = vtep_mac_int(lease.attrs, self.v6)
        except LeaseDecodeError:
            return None
        return None if mac is None else (mac, public)

    def ip_text(self, value: int) -> str:
        """An address of this family held as a number, as text."""
        return str(IPv6Address(value) if self.v6 else IPv4Address(value))


@dataclass(slots=True)
class _Claims:
    """What the accepted leases hold in one family. Values are lease keys (the strings of ``held``, shared)."""

    starts: list[int] = field(default_factory=list)
    """First addresses of the accepted subnets, sorted: they are disjoint, so the ends are sorted too."""
    keys: list[str] = field(default_factory=list)
    """``keys[i]``: the key of the lease holding the subnet that starts at ``starts[i]`` (a list beside the other
    rather than a dict by first address: 8 bytes a peer instead of about 60; issue #16)."""
    macs: array[int] = field(default_factory=lambda: array("Q"))
    """The accepted leases' VtepMACs (48-bit numbers), sorted; one MAC appears several times only for one node's
    leases (same public IP), e.g. after a move. Unboxed: a dict by MAC cost about 60 bytes a peer (the number
    object and the entry), these two lists 16 (issue #16)."""
    mac_keys: list[str] = field(default_factory=list)
    """``mac_keys[i]``: the key of the lease holding ``macs[i]``; equal MACs in the order they were accepted."""

    def mac_holders(self, mac: int) -> list[str]:
        """The keys of the leases holding ``mac``, first accepted first."""
        i = bisect_left(self.macs, mac)
        j = bisect_right(self.macs, mac, i)
        return self.mac_keys[i:j]

    def add_mac(self, mac: int, key: str) -> None:
        i = bisect_right(self.macs, mac)
        self.macs.insert(i, mac)
        self.mac_keys.insert(i, key)

    def drop_mac(self, mac: int, key: str) -> None:
        i = bisect_left(self.macs, mac)
        while i < len(self.macs) and self.macs[i] == mac:
            if self.mac_keys[i] == key:
                del self.macs[i]
                del self.mac_keys[i]
                return
            i += 1


def _span(net: Network) -> tuple[int, int]:
    first = int(net.network_address)
    return first, first | ((1 << (net.max_prefixlen - net.prefixlen)) - 1)


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
        self._claims = [_Claims() for _ in self.families]

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

    def own_changed(self, own: Lease) -> None:
        """This node's lease is now ``own``: remote leases overlapping it are refused from now on."""
        self.families = [dataclasses.replace(f, own=f.subnet(own)) for f in self.families]

    def admit(self, events: Iterable[LeaseEvent], snapshot: bool = False) -> list[LeaseEvent]:
        """The events the backend may apply, in order; ``snapshot``: the batch came from a fresh listing."""
        out: list[LeaseEvent] = []
        released = snapshot
        for ev in events:
            lease = ev.lease
            key = lease.key
            if ev.type is EventType.REMOVED:
                was_skipped = self.skipped.pop(key, None) is not None
                held = self.held.pop(key, None)
                if held is not None:
                    self._release(key, held)
                    released = True
                    out.append(LeaseEvent(EventType.REMOVED, held))
                elif was_skipped:
                    log.info("skipped lease %s was removed", key)
                else:
                    out.append(ev)  # unknown to us too: passed on bare, as the tracker does
                continue
            held = self.held.get(key)
            if self.backend_type is not None and lease.attrs.backend_type != self.backend_type:
                # Another backend's: the backend ignores it (and drops what it programmed for it).
                self.skipped.pop(key, None)
                if held is not None:
                    del self.held[key]
                    self._release(key, held)
                    released = True
                out.append(ev)
                continue
            if self._try(key, lease):
                out.append(ev)
                # A changed VtepMAC or public IP may free what a skipped lease wanted.
                released |= held is not None and held.attrs != lease.attrs
        if released:
            out.extend(self._retry_skipped())
        return out

    # -- deciding ----------------------------------------------------------------------------------------

    def _try(self, key: str, lease: Lease) -> bool:
        """Accept ``lease`` (its claims replacing its held version's) or skip it; True if accepted."""
        held = self.held.get(key)
        if held is not None and held.attrs == lease.attrs:  # a renewal or a replay: the same claims
            self.held[key] = lease
            self.skipped.pop(key, None)
            return True
        vteps = self._vteps(lease)
        verdict = self._collision(key, lease, vteps)
        if verdict is not None:
            reason, why = verdict
            before = self.skipped.get(key)
            self.skipped[key] = (lease, reason)
            if before is None or before[1] != reason or before[0].attrs != lease.attrs:
                metrics.LEASE_REJECTED.labels(reason).inc()
                kept = " (its entries from before are kept)" if held is not None else ""
                log.warning("skipping lease %s: %s%s", key, why, kept)
            return False
        if held is not None:
            self._release(key, held)
        self.skipped.pop(key, None)
        self.held[key] = lease
        self._take(key, lease, vteps)
        return True

    def _vteps(self, lease: Lease) -> list[Vtep | None]:
        return [fam.vtep(lease) if self.vtep_macs else None for fam in self.families]

    def _collision(self, key: str, lease: Lease, vteps: list[Vtep | None]) -> tuple[str, str] | None:
        """``(reason, explanation naming the other lease)`` when ``lease`` must be skipped, else None."""
        # Numbers throughout: the subnet's objects are built for a message only (issue #16).
        for fam, claims, vtep in zip(self.families, self._claims, vteps, strict=True):
            net = lease.net_ints(fam.v6)
            if net is None:
                continue
            first, plen = net
            last = fam.last(first, plen)
            if not fam.span[0] <= first <= last <= fam.span[1]:
                return "outside_network", f"subnet {fam.subnet(lease)} is outside the network {fam.network}"
            own = fam.own_span
            if own is not None and first <= own[1] and own[0] <= last:
                return "overlaps_own", f"subnet {fam.subnet(lease)} overlaps this node's own subnet {fam.own}"
            other = self._hit(fam, claims, first, last)
            if other is not None and other != key:
                return ("overlaps_lease", f"subnet {fam.subnet(lease)} overlaps {fam.subnet(self.held[other])} of "
                        f"lease {other}, accepted earlier (the first holder keeps it)")
            if fam.subnet_len is not None and plen != fam.subnet_len:
                return ("subnet_len",
                        f"subnet {fam.subnet(lease)} is not a /{fam.subnet_len} (the network's subnet length)")
            if vtep is None:
                continue
            for other in claims.mac_holders(vtep[0]):
                theirs = fam.vtep(self.held[other]) if other != key else None
                if theirs is not None and theirs[1] != vtep[1]:
                    return ("duplicate_vtep_mac", f"VtepMAC {mac_text(vtep[0])} with public IP "
                            f"{fam.ip_text(vtep[1])} is lease {other}'s, accepted earlier with public IP "
                            f"{fam.ip_text(theirs[1])} (the first holder keeps it)")
        return None

    def _hit(self, fam: Family, claims: _Claims, first: int, last: int) -> str | None:
        """The key of the accepted lease whose subnet overlaps ``[first, last]``, if any: at most the one starting
        last at or before ``last`` can (the accepted subnets are disjoint)."""
        i = bisect_right(claims.starts, last) - 1
        if i < 0:
            return None
        key = claims.keys[i]
        theirs = fam.span_of(self.held[key])
        return key if theirs is not None and theirs[1] >= first else None

    def _retry_skipped(self) -> Iterator[LeaseEvent]:
        for key, (lease, reason) in list(self.skipped.items()):
            if self._collision(key, lease, self._vteps(lease)) is None:
                log.info("accepting lease %s, skipped before (%s): what it collided with is gone", key, reason)
                self._try(key, lease)
                yield LeaseEvent(EventType.ADDED, lease)

    # -- claims --------------------------------------------------------------------------------------------

    def _take(self, key: str, lease: Lease, vteps: list[Vtep | None]) -> None:
        for fam, claims, vtep in zip(self.families, self._claims, vteps, strict=True):
            span = fam.span_of(lease)
            if span is None:
                continue
            first = span[0]
            i = bisect_right(claims.starts, first)
            claims.starts.insert(i, first)
            claims.keys.insert(i, key)
            if vtep is not None:
                claims.add_mac(vtep[0], key)

    def _release(self, key: str, lease: Lease) -> None:
        for fam, claims in zip(self.families, self._claims, strict=True):
            span = fam.span_of(lease)
            if span is None:
                continue
            first = span[0]
            i = bisect_left(claims.starts, first)
            if i < len(claims.starts) and claims.starts[i] == first and claims.keys[i] == key:
                del claims.starts[i]
                del claims.keys[i]
            vtep = fam.vtep(lease) if self.vtep_macs else None
            if vtep is not None:
                claims.drop_mac(vtep[0], key)


def find_collisions(families: Sequence[Family], leases: Iterable[Lease], vtep_macs: bool = False
                    ) -> list[tuple[Lease, str, str]]:
    """The leases a guard would skip, taken in the order given (the first holder wins), as
    ``(lease, reason, explanation naming the other lease)``.

    The same rules as ``LeaseGuard.admit``, without its logging and metrics, over a whole listing at once: for
    tools that report on a cluster (``flannelctl leases``) rather than program one node.
    """
    guard = LeaseGuard(families, None, vtep_macs)
    out: list[tuple[Lease, str, str]] = []
    for lease in leases:
        key = lease.key
        if key in guard.held:  # one subnet on two records: two kube nodes given the same pod CIDR
            out.append((lease, "overlaps_lease", f"subnet {key} is also claimed by an earlier lease (the first holder "
                        "keeps it)"))
            continue
        vteps = guard._vteps(lease)
        verdict = guard._collision(key, lease, vteps)
        if verdict is not None:
            out.append((lease, *verdict))
        else:
            guard.held[key] = lease
            guard._take(key, lease, vteps)
    return out
