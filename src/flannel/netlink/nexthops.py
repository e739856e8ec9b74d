"""Nexthop objects (Linux 5.3+): ``ip nexthop replace id N via GW dev DEV onlink``, and routes that use one.

Why flanneld uses them for vxlan's IPv4 routes: the kernel shares ``fib_info`` records between identical
routes and finds a match through a hash that, for a route with its own gateway, mixes in the device but not the
gateway. Every ``<subnet> via <vtep> dev flannel.1 onlink`` therefore lands in one hash bucket, and adding
route N compares it with the N-1 before it: programming 10 000 peers spent 2.3 s of kernel time on routes alone
(quadratic, the same for ``ip -batch`` and Go flanneld). A route that names a nexthop object is hashed by the
object's id instead, which spreads them: 10 000 nexthops and their routes took 0.38 s (issue #16,
docs/performance.md "Nexthop objects").

**Ids.** A nexthop's id is its gateway's IPv4 address as a number (``10.244.3.0`` is ``0x0af40300``), so that
it needs no allocation state and is the same after a restart, and so that one of ours is recognised by its
shape: on our device, gateway equal to id, onlink. Nothing else in the kernel can hold such an object except by
accident; an id taken by someone else's object (another shape) is left alone, and that peer gets a plain route.

Nexthop ids only exist in the kernel; what ``ip route`` shows gains ``nhid N`` before the same ``via GW dev
DEV onlink`` (``net.ipv4.nexthop_compat_mode``, on by default, keeps gateway and device in route listings).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from flannel.netlink import wire
from flannel.netlink.consts import (
    NHA_GATEWAY,
    NHA_ID,
    NHA_OIF,
    NHMSG,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_NH_ID,
    RTATTR,
    RTM_DELNEXTHOP,
    RTM_NEWNEXTHOP,
    RTM_NEWROUTE,
    RTN_UNICAST,
    RTNH_F_ONLINK,
    RTPROT_BOOT,
)

_REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
_DELETE = NLM_F_REQUEST | NLM_F_ACK
# Whole messages, each packed by one ``struct`` call as ops.py does for the other per-peer kinds.
_NEXTHOP4 = struct.Struct("=IHHII BBBxI HHI HHI HH4s")
_ROUTE_NH4 = struct.Struct("=IHHII BBBBBBBBI HH4s HHI")
_NHMSG = NHMSG.unpack_from
_ATTR = RTATTR.unpack_from
_U32 = struct.Struct("=I").unpack_from


def nexthop_id(gateway: IPv4Address | int) -> int:
    """The id flanneld gives the nexthop object of ``gateway`` (see the module docstring): its number."""
    return int(gateway)


@dataclass(frozen=True, slots=True)
class NexthopReplace:
    """``ip nexthop replace id ID via GATEWAY dev DEV onlink`` (IPv4)."""

    id: int
    gateway: IPv4Address | int
    """The gateway, or its number (as the vxlan plane holds it)."""
    oif: int

    def pack(self, seq: int) -> bytes:
        return _NEXTHOP4.pack(_NEXTHOP4.size, RTM_NEWNEXTHOP, _REPLACE, seq, 0,
                              socket.AF_INET, 0, RTPROT_BOOT, RTNH_F_ONLINK,
                              8, NHA_ID, self.id, 8, NHA_OIF, self.oif, 8, NHA_GATEWAY, _packed(self.gateway))

    def describe(self, names: Mapping[int, str] | None = None) -> str:
        dev = names.get(self.oif, f"#{self.oif}") if names else f"#{self.oif}"
        return f"nexthop replace id {self.id} via {socket.inet_ntoa(_packed(self.gateway))} dev {dev} onlink"


@dataclass(frozen=True, slots=True)
class NexthopDelete:
    """``ip nexthop del id ID``: the kernel removes every route using it as well."""

    id: int

    def pack(self, seq: int) -> bytes:
        return wire.message(RTM_DELNEXTHOP, _DELETE, seq, NHMSG.pack(0, 0, 0, 0) + wire.attr_u32(NHA_ID, self.id))

    def describe(self, names: Mapping[int, str] | None = None) -> str:
        return f"nexthop del id {self.id}"


@dataclass(frozen=True, slots=True)
class RouteViaNexthop:
    """``ip route replace DST nhid ID`` in the main table (IPv4), protocol ``boot`` like the plain routes."""

    dst: IPv4Network | tuple[int, int]
    """The destination, or (its address as a number, its prefix length) as the vxlan plane holds it."""
    id: int

    def pack(self, seq: int) -> bytes:
        address, prefixlen = _parts(self.dst)
        return _ROUTE_NH4.pack(_ROUTE_NH4.size, RTM_NEWROUTE, _REPLACE, seq, 0,
                               socket.AF_INET, prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE,
                               RTN_UNICAST, 0, 8, RTA_DST, address, 8, RTA_NH_ID, self.id)

    def describe(self, names: Mapping[int, str] | None = None) -> str:
        address, prefixlen = _parts(self.dst)
        return f"route replace {socket.inet_ntoa(address)}/{prefixlen} nhid {self.id}"


def _packed(gateway: IPv4Address | int) -> bytes:
    return gateway.to_bytes(4, "big") if isinstance(gateway, int) else gateway.packed


def _parts(dst: IPv4Network | tuple[int, int]) -> tuple[bytes, int]:
    if isinstance(dst, tuple):
        return dst[0].to_bytes(4, "big"), dst[1]
    return dst.network_address.packed, dst.prefixlen


def dump_body() -> bytes:
    """RTM_GETNEXTHOP dump request for every nexthop object (the ids on other devices matter too)."""
    return NHMSG.pack(0, 0, 0, 0)


NexthopFields = tuple[int, int | None, bytes | None, int]
"""``(NHA_ID, NHA_OIF, NHA_GATEWAY, nh_flags)`` of one nexthop object, undecoded."""


def nexthop_fields(data: bytes, start: int, end: int) -> NexthopFields:
    """One RTM_NEWNEXTHOP body, undecoded (compared as it is read, like ``routes.route_fields``)."""
    _family, _scope, _proto, flags = _NHMSG(data, start)
    nh_id = 0
    oif = gw = None
    pos = start + NHMSG.size
    while pos + 4 <= end:
        alen, atype = _ATTR(data, pos)
        if alen < 4:
            break
        if atype == NHA_ID:
            nh_id = _U32(data, pos + 4)[0]
        elif atype == NHA_OIF:
            oif = _U32(data, pos + 4)[0]
        elif atype == NHA_GATEWAY:
            gw = data[pos + 4 : pos + alen]
        pos += (alen + 3) & ~3
    return nh_id, oif, gw, flags
