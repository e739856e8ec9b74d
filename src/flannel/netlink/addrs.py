"""Interface addresses: listing them and the add/delete requests.

flanneld gives its VXLAN device exactly one address (the lease's network address, /32 or /128) and removes
stale ones, so it needs the flags that tell a permanent address from an autoconfigured one.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from flannel.netlink import wire
from flannel.netlink.consts import (
    IFA_ADDRESS,
    IFA_F_DEPRECATED,
    IFA_F_PERMANENT,
    IFA_F_TEMPORARY,
    IFA_FLAGS,
    IFA_LABEL,
    IFA_LOCAL,
    IFADDRMSG,
    RT_SCOPE_UNIVERSE,
)
from flannel.netlink.wire import IPAddress

__all__ = ["IFA_F_DEPRECATED", "IFA_F_PERMANENT", "IFA_F_TEMPORARY", "Addr"]


@dataclass(frozen=True, slots=True)
class Addr:
    """One address on one device."""

    index: int
    address: IPAddress
    prefixlen: int
    scope: int
    """RT_SCOPE_*: 0 universe (global), 253 link, 254 host."""
    flags: int
    """IFA_F_* bits, from IFA_FLAGS (32 bits) when the kernel sent it, else the 8-bit header field."""
    label: str

    @property
    def permanent(self) -> bool:
        return bool(self.flags & IFA_F_PERMANENT)


def parse_addr(data: bytes, start: int, end: int) -> Addr | None:
    """Decode one RTM_NEWADDR body; None for an entry without an address (never seen in practice)."""
    _family, prefixlen, hflags, scope, index = IFADDRMSG.unpack_from(data, start)
    a = wire.attrs(data, start + IFADDRMSG.size, end)
    # IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point links. IPv6 sends only
    # IFA_ADDRESS unless a peer was configured.
    raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
    if not raw:
        return None
    return Addr(
        index=index,
        address=wire.ip_from(raw),
        prefixlen=prefixlen,
        scope=scope,
        flags=wire.u32(a[IFA_FLAGS]) if IFA_FLAGS in a else hflags,
        label=wire.cstr(a[IFA_LABEL]) if IFA_LABEL in a else "",
    )


def family_of(address: IPAddress) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def addr_body(index: int, address: IPAddress, prefixlen: int) -> bytes:
    """Body shared by RTM_NEWADDR and RTM_DELADDR, as ``ip addr add|del ADDR/LEN dev DEV`` sends it."""
    packed = address.packed
    return (
        IFADDRMSG.pack(family_of(address), prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        + wire.attr(IFA_LOCAL, packed)
        + wire.attr(IFA_ADDRESS, packed)
    )


def dump_body(family: int | None, index: int | None) -> bytes:
    """RTM_GETADDR dump request; with strict checking the kernel filters by ``index`` itself."""
    return IFADDRMSG.pack(family or socket.AF_UNSPEC, 0, 0, 0, index or 0)
