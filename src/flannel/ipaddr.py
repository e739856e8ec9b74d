"""Address math and Go-compatible address text.

flannel's keys, lease JSON and subnet.env must print addresses exactly as the Go implementation does, and
Go differs from Python's ``ipaddress`` in two corners (spec §4). Everything else uses ``ipaddress`` types.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


def go_ip_text(addr: IPAddress) -> str:
    """Render an address the way Go's flannel types do.

    Go prints IPv4-mapped IPv6 addresses as dotted IPv4, and flannel's big-integer IPv6 type prints an address
    whose value needs exactly four bytes (``::a00:1``) as dotted IPv4 as well.
    """
    if isinstance(addr, IPv4Address):
        return str(addr)
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    value = int(addr)
    if 1 << 24 <= value < 1 << 32:
        return str(IPv4Address(value))
    return str(addr)


# Exactly the dotted quads ``IPv4Address`` accepts (ASCII digits, 0-255, no leading zeros), matched in C: a
# start-up decodes two addresses per lease, and ``ipaddress``'s own parser was a third of that time.
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def ipv4_int(text: str) -> int | None:
    """The value of ``text`` if ``IPv4Address(text)`` would accept it, else ``None``."""
    m = _DOTTED_QUAD.fullmatch(text)
    if m is None:
        return None
    a, b, c, d = m.groups()
    return int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d)


def ipv4_text(value: int) -> str:
    """The dotted quad of an IPv4 address held as a number, formatted in C (``str(IPv4Address)`` is Python)."""
    return socket.inet_ntoa(value.to_bytes(4, "big"))


def mac_text(mac: int) -> str:
    """A MAC address held as its 48-bit number, as ``aa:bb:cc:dd:ee:ff``: leases, the lease guard and the vxlan
    plane hold MACs as numbers (issue #16) and write them out for JSON, logs and messages only."""
    return mac.to_bytes(6, "big").hex(":")


def go_net_text(net: IPNetwork) -> str:
    """``a.b.c.d/len`` or ``<go ipv6 text>/len``."""
    return f"{go_ip_text(net.network_address)}/{net.prefixlen}"


def parse_cidr_masked(text: str) -> IPNetwork:
    """Parse a CIDR the way Go's ``net.ParseCIDR`` is used by flannel: host bits are masked off.

    Raises ``ValueError`` when the text is not a CIDR (a bare address is rejected, as in Go).
    """
    if "/" not in text:
        raise ValueError(f"invalid CIDR address: {text}")
    return ipaddress.ip_network(text.strip(), strict=False)


def first_host(net: IPNetwork) -> IPAddress:
    """The network address plus one: what subnet.env advertises as ``FLANNEL_SUBNET``."""
    return net.network_address + 1


def within(inner: IPNetwork, outer: IPNetwork) -> bool:
    """True when ``inner`` lies inside ``outer`` (always False across address families).

    Integer arithmetic on purpose: ``ipaddress``'s ``subnet_of``/``overlaps`` cache a ``broadcast_address``
    object on every network they touch, which costs memory on each of thousands of long-lived peer leases.
    """
    if inner.version != outer.version or inner.prefixlen < outer.prefixlen:
        return False
    shift = inner.max_prefixlen - outer.prefixlen
    return int(inner.network_address) >> shift == int(outer.network_address) >> shift


def overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    """True when the two networks share any address (always False across address families)."""
    return within(a, b) or within(b, a)
