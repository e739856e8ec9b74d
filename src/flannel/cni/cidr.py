"""Addresses and CIDRs parsed and printed the way upstream's Go plugin does, without ``ipaddress``.

The delegate config must carry the same text that the Go plugin writes (``10.1.17.0/24``, ``fc00::/64``), and
the plugin must accept and reject the same input. ``ipaddress`` would cost 3 ms of start-up per pod (through
``functools``), and differs from Go anyway: it accepts netmask suffixes (``/255.255.0.0``) and scoped IPv6
addresses, which Go's ``net.ParseCIDR`` rejects. Even ``_socket.inet_pton`` costs 0.3 ms to load, more than
the twenty lines below that parse exactly what Go's ``netip.ParseAddr`` parses: no zones, no leading zeros
in IPv4 fields, at most four hex digits per IPv6 group, a ``::`` that stands for at least one group.
"""

from __future__ import annotations

from flannel.cni.lite import dataclass

_MAPPED_PREFIX = 0xFFFF  # ::ffff:0:0/96, IPv4-mapped IPv6 addresses
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True)
class Cidr:
    """An address and a prefix length, like Go's ``types.IPNet``: the address keeps its host bits.

    ``10.96.0.1/12`` in a route stays ``10.96.0.1/12``, as Go writes it back; :meth:`network` masks.
    """

    version: int
    """4 or 6."""
    value: int
    """The address as an unsigned integer."""
    prefixlen: int

    @property
    def bits(self) -> int:
        return 32 if self.version == 4 else 128

    def network(self) -> Cidr:
        """The network: host bits cleared (what the second result of Go's ``net.ParseCIDR`` holds)."""
        host = (1 << (self.bits - self.prefixlen)) - 1
        return Cidr(self.version, self.value & ~host, self.prefixlen)

    def is_ipv4(self) -> bool:
        """True for IPv4 and IPv4-mapped IPv6 addresses, which Go treats as IPv4 (``To4() != nil``)."""
        return self.version == 4 or self.value >> 32 == _MAPPED_PREFIX

    def __str__(self) -> str:
        return format_cidr(self)


def parse_ip(text: str) -> tuple[int, int]:
    """``(version, value)`` of an IP address; ``ValueError("invalid IP address: …")`` otherwise."""
    try:
        return (6, _parse_v6(text)) if ":" in text else (4, _parse_v4(text))
    except ValueError:
        raise ValueError(f"invalid IP address: {text}") from None


def _parse_v4(text: str) -> int:
    fields = text.split(".")
    if len(fields) != 4:
        raise ValueError
    value = 0
    for field in fields:
        if not 1 <= len(field) <= 3 or not _DIGITS.issuperset(field) or (len(field) > 1 and field[0] == "0"):
            raise ValueError
        number = int(field)
        if number > 255:
            raise ValueError
        value = value << 8 | number
    return value


def _parse_v6(text: str) -> int:
    if "." in text:  # an IPv4 tail, as in ::ffff:10.1.2.3: rewrite it as two groups
        head, _, tail = text.rpartition(":")
        v4 = _parse_v4(tail)
        text = f"{head}:{v4 >> 16:x}:{v4 & 0xFFFF:x}"
    if "::" in text:
        left, _, right = text.partition("::")
        if "::" in right:
            raise ValueError
        head_groups = left.split(":") if left else []
        tail_groups = right.split(":") if right else []
        missing = 8 - len(head_groups) - len(tail_groups)
        if missing < 1:
            raise ValueError
        groups = [*head_groups, *["0"] * missing, *tail_groups]
    else:
        groups = text.split(":")
        if len(groups) != 8:
            raise ValueError
    value = 0
    for group in groups:
        if not 1 <= len(group) <= 4 or not _HEX.issuperset(group):
            raise ValueError
        value = value << 16 | int(group, 16)
    return value


def parse_cidr(text: str) -> Cidr:
    """Parse ``address/prefix`` as Go's ``net.ParseCIDR`` does; ``ValueError("invalid CIDR address: …")``."""
    addr, sep, prefix = text.partition("/")
    try:
        if not sep or not prefix.isascii() or not prefix.isdigit() or len(prefix) > 7:
            raise ValueError
        version, value = parse_ip(addr)
        prefixlen = int(prefix)
        if prefixlen > (32 if version == 4 else 128):
            raise ValueError
    except ValueError:
        raise ValueError(f"invalid CIDR address: {text}") from None
    return Cidr(version, value, prefixlen)


def parse_network(text: str) -> Cidr:
    """A CIDR with its host bits cleared: ``10.1.17.1/24`` → ``10.1.17.0/24``."""
    return parse_cidr(text).network()


def format_ip(version: int, value: int) -> str:
    """Go's ``net.IP.String``: dotted IPv4 (also for IPv4-mapped IPv6), otherwise RFC 5952 IPv6."""
    if version == 4 or value >> 32 == _MAPPED_PREFIX:
        v4 = value & 0xFFFFFFFF
        return f"{v4 >> 24}.{(v4 >> 16) & 255}.{(v4 >> 8) & 255}.{v4 & 255}"
    groups = [(value >> (112 - 16 * i)) & 0xFFFF for i in range(8)]
    # RFC 5952: the longest run of two or more zero groups (the first of equals) becomes "::".
    best_start, best_len, i = -1, 1, 0
    while i < 8:
        j = i
        while j < 8 and groups[j] == 0:
            j += 1
        if j - i > best_len:
            best_start, best_len = i, j - i
        i = max(j, i + 1)
    if best_start < 0:
        return ":".join(f"{g:x}" for g in groups)
    head = ":".join(f"{g:x}" for g in groups[:best_start])
    tail = ":".join(f"{g:x}" for g in groups[best_start + best_len :])
    return f"{head}::{tail}"


def format_cidr(cidr: Cidr) -> str:
    """Go's ``net.IPNet.String``; an IPv4-mapped address prints as IPv4 with the prefix less 96."""
    if cidr.version == 6 and cidr.value >> 32 == _MAPPED_PREFIX:
        return f"{format_ip(6, cidr.value)}/{max(cidr.prefixlen - 96, 0)}"
    return f"{format_ip(cidr.version, cidr.value)}/{cidr.prefixlen}"


def normalize_ip(text: str) -> str:
    """Parse and print an address back in Go's form (``FC00::0001`` → ``fc00::1``)."""
    return format_ip(*parse_ip(text))
