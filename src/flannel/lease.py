"""The lease model shared by every subnet manager and backend (spec §4, §5).

A lease binds one node to one subnet (plus an optional IPv6 subnet) and carries ``LeaseAttrs``, the JSON
that other nodes read to reach it. The value bytes and the key text must be exactly what Go flanneld
writes, because Go and Python nodes share one datastore. The attributes live in ``flannel.lease_attrs`` and
are part of this module's interface.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Address, IPv6Network
from types import EllipsisType

from flannel.ipaddr import go_ip_text, ipv4_int, ipv4_text
from flannel.lease_attrs import UNSET_IPV4, LeaseAttrs, vtep_mac, vtep_mac_int

__all__ = ["UNSET_IPV4", "EventType", "Lease", "LeaseAttrs", "LeaseEvent", "make_subnet_key", "parse_subnet_key",
           "parse_subnet_key_numbers", "vtep_mac", "vtep_mac_int"]

# Upstream's key regex, kept as it is: unanchored at the start, two unescaped dots, ASCII digits,
# lower-case IPv6 only (spec §4).
_KEY_RE = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$", re.ASCII)


@dataclass(frozen=True, slots=True, init=False, repr=False)
class Lease:
    """One node's claim on a subnet, as read from or written to the datastore.

    The IPv4 subnet is given and read as an ``IPv4Network`` (``subnet``) but held as two numbers, its network
    address and prefix length (``subnet_int``, ``subnet_prefixlen``): the network object with its address object
    and their number were 184 bytes a peer, kept alive as long as the lease by the vxlan plane too (issue #16).
    Hot paths read the numbers (``net_ints``); ``subnet`` builds the network on each read. The IPv6 subnet, rare
    (dual-stack), stays an object.
    """

    _net4: int | None
    """The IPv4 subnet's network address as a number; None when the lease has no IPv4 subnet."""
    _len4: int
    """The IPv4 subnet's prefix length (0 without one)."""
    ipv6_subnet: IPv6Network | None
    """The IPv6 subnet, for dual-stack networks."""
    attrs: LeaseAttrs
    """What the node published."""
    expiration: float
    """Unix time when the datastore drops the lease; 0 for none known."""
    revision: int
    """Datastore revision at which the lease was last modified."""
    reserved: bool
    """True for a reservation: a key without a TTL that never expires (spec §6.8)."""
    _key: str | None = field(init=False, compare=False)
    """``key``, once computed: the lease guard and the backend both index their peers by it, and one string
    shared is 60 bytes less per peer than one each (issue #16). ``share_key`` makes it another lease's."""

    def __init__(self, subnet: IPv4Network | EllipsisType | None = ..., ipv6_subnet: IPv6Network | None = None,
                 attrs: LeaseAttrs | None = None, expiration: float = 0.0, revision: int = 0,
                 reserved: bool = False, *, _net4: int | None = None, _len4: int = 0) -> None:
        """The IPv4 subnet as an ``IPv4Network`` (``from_ints`` takes its numbers); ``attrs`` None: empty ones.

        ``_net4`` and ``_len4`` are for ``dataclasses.replace``, which passes every field by name: they count only
        when ``subnet`` is not given (``replace(lease, subnet=...)`` passes both, and the subnet wins).
        """
        if subnet is ...:
            _fill(self, _net4, _len4, ipv6_subnet, attrs, expiration, revision, reserved)
        elif subnet is None:
            _fill(self, None, 0, ipv6_subnet, attrs, expiration, revision, reserved)
        else:
            _fill(self, int(subnet.network_address), subnet.prefixlen, ipv6_subnet, attrs, expiration, revision,
                  reserved)

    @classmethod
    def from_ints(cls, net4: int | None, len4: int, ipv6_subnet: IPv6Network | None = None,
                  attrs: LeaseAttrs | None = None, expiration: float = 0.0, revision: int = 0,
                  reserved: bool = False) -> Lease:
        """A lease whose IPv4 subnet is given as its network address's number and prefix length (host bits clear:
        not checked), as decoders have it, without building the network object."""
        lease = object.__new__(cls)
        _fill(lease, net4, len4, ipv6_subnet, attrs, expiration, revision, reserved)
        return lease

    @property
    def subnet(self) -> IPv4Network | None:
        """The IPv4 subnet; always present in etcd mode. Built on each read: hot paths read ``net_ints``."""
        net = self._net4
        return None if net is None else IPv4Network((net, self._len4))

    @property
    def subnet_int(self) -> int | None:
        """The IPv4 subnet's network address as a number; None when the lease has none."""
        return self._net4

    @property
    def subnet_prefixlen(self) -> int:
        """The IPv4 subnet's prefix length; 0 when the lease has none."""
        return self._len4

    def net_ints(self, v6: bool = False) -> tuple[int, int] | None:
        """One family's subnet as ``(network address as a number, prefix length)``; None when the lease has none."""
        if v6:
            net6 = self.ipv6_subnet
            return None if net6 is None else (int(net6.network_address), net6.prefixlen)
        net = self._net4
        return None if net is None else (net, self._len4)

    def __repr__(self) -> str:
        return (f"Lease(subnet={self.subnet!r}, ipv6_subnet={self.ipv6_subnet!r}, attrs={self.attrs!r}, "
                f"expiration={self.expiration!r}, revision={self.revision!r}, reserved={self.reserved!r})")

    @property
    def key(self) -> str:
        """The datastore key's last element, e.g. ``10.5.52.0-24`` or ``10.5.52.0-24&fc00::-64``.

        An IPv6-only lease (kube mode only: etcd mode refuses IPv6-only networks, as upstream) has no datastore
        key; it is named ``fc00::-64`` for logs and bookkeeping.
        """
        key = self._key
        if key is None:
            net, v6 = self._net4, self.ipv6_subnet
            if net is None:
                if v6 is None:
                    raise ValueError("a subnet key needs an IPv4 part")
                key = f"{go_ip_text(v6.network_address)}-{v6.prefixlen}"
            else:  # as ``make_subnet_key`` writes it, from the numbers
                key = f"{ipv4_text(net)}-{self._len4}"
                if v6 is not None:
                    key += f"&{go_ip_text(v6.network_address)}-{v6.prefixlen}"
            object.__setattr__(self, "_key", key)
        return key

    def share_key(self, earlier: Lease) -> None:
        """Hold ``earlier``'s key text instead of an equal one of our own (same subnets assumed).

        The tracker, the guard and the backends index peers by ``key`` in dicts, which keep the key object of a
        peer's first lease; the ``LeaseTracker`` hands each later lease of that peer the same object, so a peer
        costs one key text however often it changes. (Interning every key did the same for 42 bytes a peer more,
        in the interpreter's table of interned strings: issue #16.)
        """
        object.__setattr__(self, "_key", earlier.key)

    def same_subnets(self, other: Lease) -> bool:
        """True when both leases claim the same subnets."""
        return (self._net4 == other._net4 and self._len4 == other._len4
                and self.ipv6_subnet == other.ipv6_subnet)


def _fill(lease: Lease, net4: int | None, len4: int, ipv6_subnet: IPv6Network | None, attrs: LeaseAttrs | None,
          expiration: float, revision: int, reserved: bool) -> None:
    """Set every field of a new ``Lease`` (frozen: through ``object.__setattr__``)."""
    put = object.__setattr__
    put(lease, "_net4", net4)
    put(lease, "_len4", len4)
    put(lease, "ipv6_subnet", ipv6_subnet)
    put(lease, "attrs", attrs if attrs is not None else LeaseAttrs())
    put(lease, "expiration", expiration)
    put(lease, "revision", revision)
    put(lease, "reserved", reserved)
    put(lease, "_key", None)


class EventType(enum.Enum):
    """Lease events: a lease appeared or changed, or it went away."""

    ADDED = "added"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    """One change to the set of remote leases. Backends apply these idempotently."""

    type: EventType
    """Whether the lease was added (or renewed, or changed) or removed."""
    lease: Lease
    """The lease; for REMOVED, the last attributes known for it."""


def make_subnet_key(v4: IPv4Network | None, v6: IPv6Network | None) -> str:
    """Format the key element for a subnet pair (spec §4)."""
    if v4 is None:
        raise ValueError("a subnet key needs an IPv4 part")
    key = f"{v4.network_address}-{v4.prefixlen}"
    if v6 is not None:
        key += f"&{go_ip_text(v6.network_address)}-{v6.prefixlen}"
    return key


def parse_subnet_key(text: str) -> tuple[IPv4Network, IPv6Network | None] | None:
    """Parse a key (or a full path ending in one) as upstream does; ``None`` when it is not a subnet."""
    parsed = parse_subnet_key_numbers(text)
    if parsed is None:
        return None
    net4, len4, v6 = parsed
    return IPv4Network((net4, len4)), v6


def parse_subnet_key_numbers(text: str) -> tuple[int, int, IPv6Network | None] | None:
    """``parse_subnet_key`` with the IPv4 subnet as its numbers (network address, prefix length; host bits
    cleared), as ``Lease.from_ints`` takes them: a listing decodes one key per record (issue #16)."""
    m = _KEY_RE.search(text)
    if m is None:
        return None
    v4_addr = ipv4_int(m.group(1))
    if v4_addr is None:
        return None
    # Go parses the lengths into 5 and 7 bits; checking the digit count first also keeps a 5000-digit
    # length from reaching int(), which refuses more than 4300 digits with a ValueError.
    if len(m.group(2).lstrip("0")) > 3 or len((m.group(4) or "").lstrip("0")) > 3:
        return None
    v4_len = int(m.group(2).lstrip("0") or "0")
    if v4_len > 31:
        return None
    v4_net = v4_addr & ~((1 << (32 - v4_len)) - 1)  # what ``IPv4Network(..., strict=False)`` keeps
    if m.group(3) is None:
        return v4_net, v4_len, None
    v6_len = int(m.group(4).lstrip("0") or "0")
    if v6_len > 127:
        return None
    try:
        v6 = IPv6Network(f"{IPv6Address(m.group(3))}/{v6_len}", strict=False)
    except ValueError:
        return None
    if v6.network_address.ipv4_mapped is not None:
        # Go writes such an address in dotted IPv4 form, a key that neither it nor we can read back: not a
        # subnet either could have allocated.
        return None
    return v4_net, v4_len, v6
