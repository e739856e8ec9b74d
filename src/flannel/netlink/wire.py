"""Packing and unpacking of netlink messages and attributes.

Hand-written on ``struct`` because this is the hot path of programming thousands of peers: a generic
attribute framework costs several microseconds per message, these helpers well under one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeAlias

from flannel.netlink.consts import NLMSGHDR, RTATTR

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network

_NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER
_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")
_BE16 = struct.Struct("!H")
_HDR_SIZE = NLMSGHDR.size
_ATTR_HDR = RTATTR.unpack_from
_HDR = NLMSGHDR.unpack_from


def message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    """One complete netlink message: header (port id 0, the kernel fills it in) and body."""
    return NLMSGHDR.pack(_HDR_SIZE + len(body), mtype, flags, seq, 0) + body


def attr(atype: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes as NLA_ALIGN requires."""
    length = 4 + len(payload)
    return RTATTR.pack(length, atype) + payload + b"\0" * (-length & 3)


def attr_u32(atype: int, value: int) -> bytes:
    return RTATTR.pack(8, atype) + _U32.pack(value)


def attr_u8(atype: int, value: int) -> bytes:
    return RTATTR.pack(5, atype) + bytes((value,)) + b"\0\0\0"


def attr_be16(atype: int, value: int) -> bytes:
    return RTATTR.pack(6, atype) + _BE16.pack(value) + b"\0\0"


def attr_str(atype: int, value: str) -> bytes:
    """A NUL-terminated string attribute, as the kernel expects for names and kinds."""
    return attr(atype, value.encode() + b"\0")


def attrs(data: bytes, pos: int, end: int) -> dict[int, bytes]:
    """Attributes between ``pos`` and ``end`` by type; the last one wins when a type repeats."""
    out: dict[int, bytes] = {}
    while pos + 4 <= end:
        alen, atype = _ATTR_HDR(data, pos)
        if alen < 4:
            break
        out[atype & _NLA_TYPE_MASK] = data[pos + 4 : pos + alen]
        pos += (alen + 3) & ~3
    return out


def nested(payload: bytes) -> dict[int, bytes]:
    return attrs(payload, 0, len(payload))


def u32(payload: bytes) -> int:
    return int(_U32.unpack_from(payload)[0])


def u16(payload: bytes) -> int:
    return int(_U16.unpack_from(payload)[0])


def be16(payload: bytes) -> int:
    return int(_BE16.unpack_from(payload)[0])


def cstr(payload: bytes) -> str:
    """A string attribute without its NUL terminator."""
    return payload.split(b"\0", 1)[0].decode(errors="replace")


def ip_from(raw: bytes) -> IPAddress:
    """An address attribute of either family (the length tells which)."""
    return IPv4Address(raw) if len(raw) == 4 else IPv6Address(raw)


def network_from(raw: bytes | None, prefixlen: int, family_v6: bool) -> IPNetwork:
    """The route destination; a missing RTA_DST is the default route of the family."""
    if family_v6:
        value = int.from_bytes(raw, "big") if raw else 0
        return IPv6Network((value, prefixlen), strict=False)
    value = int.from_bytes(raw, "big") if raw else 0
    return IPv4Network((value, prefixlen), strict=False)


def mac_str(raw: bytes) -> str:
    return raw.hex(":")


def mac_bytes(mac: str) -> bytes:
    """Parse ``aa:bb:cc:dd:ee:ff`` (or with dashes); rejects anything that is not 6 bytes."""
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


def iter_messages(data: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, body start, message end) for every message in one datagram."""
    pos = 0
    size = len(data)
    while pos + _HDR_SIZE <= size:
        length, mtype, flags, seq, _pid = _HDR(data, pos)
        if length < _HDR_SIZE or pos + length > size:
            break
        yield mtype, flags, seq, pos + _HDR_SIZE, pos + length
        pos += (length + 3) & ~3
