"""Neighbour (ARP/NDP) entries and a VXLAN device's forwarding database, as read back from the kernel.

The VXLAN backend programs, for every remote node, one neighbour entry (remote VTEP IP -> remote VTEP MAC)
and one FDB entry (remote VTEP MAC -> remote public IP); reconciling after a restart needs both listed.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from flannel.netlink import wire
from flannel.netlink.consts import AF_BRIDGE, NDA_DST, NDA_IFINDEX, NDA_LLADDR, NDMSG, NTF_SELF, RTATTR
from flannel.netlink.wire import IPAddress

__all__ = ["NTF_SELF", "FdbEntry", "Neigh"]


@dataclass(frozen=True, slots=True)
class Neigh:
    """One neighbour-table entry."""

    index: int
    ip: IPAddress
    lladdr: str
    """Lower-case MAC, empty while unresolved."""
    state: int
    """NUD_* bits (0x80 permanent, 0x02 reachable, 0x04 stale, 0x20 failed, ...)."""
    flags: int


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """One forwarding-database entry of a device (``bridge fdb show dev DEV``)."""

    index: int
    mac: str
    dst: IPAddress | None
    """Remote VTEP (NDA_DST) for VXLAN entries; None for a plain bridge/port entry."""
    state: int
    flags: int
    """NTF_* bits; flanneld's own entries carry NTF_SELF (0x02)."""


_NDMSG = NDMSG.unpack_from
_ATTR = RTATTR.unpack_from
_V4 = IPv4Address


def _dst_lladdr(data: bytes, pos: int, end: int) -> tuple[bytes | None, bytes | None]:
    """NDA_DST and NDA_LLADDR of one message; an inlined loop because dumps have thousands of entries."""
    dst = ll = None
    while pos + 4 <= end:
        alen, atype = _ATTR(data, pos)
        if alen < 4:
            break
        if atype == NDA_DST:
            dst = data[pos + 4 : pos + alen]
        elif atype == NDA_LLADDR:
            ll = data[pos + 4 : pos + alen]
        pos += (alen + 3) & ~3
    return dst, ll


def entry_fields(data: bytes, start: int, end: int) -> tuple[int, int, int, bytes | None, bytes | None]:
    """``(ifindex, state, flags, NDA_DST, NDA_LLADDR)`` of one RTM_NEWNEIGH body, undecoded: what a reconcile
    compares, without an address object per entry."""
    _family, ifindex, state, flags, _type = _NDMSG(data, start)
    dst, ll = _dst_lladdr(data, start + 12, end)
    return ifindex, state, flags, dst, ll


def parse_neigh(data: bytes, start: int, end: int, index: int | None) -> Neigh | None:
    """Decode one RTM_NEWNEIGH body; None when it is for another device or has no address."""
    _family, ifindex, state, flags, _type = _NDMSG(data, start)
    if index is not None and ifindex != index:
        return None
    dst, ll = _dst_lladdr(data, start + 12, end)
    if not dst:
        return None
    ip = _V4(dst) if len(dst) == 4 else IPv6Address(dst)
    return Neigh(ifindex, ip, ll.hex(":") if ll else "", state, flags)


def parse_fdb(data: bytes, start: int, end: int, index: int) -> FdbEntry | None:
    _family, ifindex, state, flags, _type = _NDMSG(data, start)
    if ifindex != index:
        return None
    dst, ll = _dst_lladdr(data, start + 12, end)
    if not ll:
        return None
    ip = None if not dst else _V4(dst) if len(dst) == 4 else IPv6Address(dst)
    return FdbEntry(ifindex, ll.hex(":"), ip, state, flags)


def neigh_dump_body(index: int, family: int = socket.AF_INET) -> bytes:
    """RTM_GETNEIGH dump filtered by NDA_IFINDEX (strict checking rejects ``ndm_ifindex`` in the header)."""
    return NDMSG.pack(family, 0, 0, 0, 0) + wire.attr_u32(NDA_IFINDEX, index)


def fdb_dump_body(index: int) -> bytes:
    """AF_BRIDGE dump; the kernel takes ``ndm_ifindex`` as the port to filter on."""
    return NDMSG.pack(AF_BRIDGE, index, 0, 0, 0)
