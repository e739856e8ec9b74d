"""Routes: table listings (filtered by the kernel), single-address lookups (``ip route get``), and parsing.

Route *changes* are batch operations and live in ``ops``; this module reads.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from flannel.netlink import wire
from flannel.netlink.consts import (
    RTA_DST,
    RTA_GATEWAY,
    RTA_NH_ID,
    RTA_OIF,
    RTA_PREFSRC,
    RTA_TABLE,
    RTATTR,
    RTM_F_CLONED,
    RTM_F_FIB_MATCH,
    RTM_F_LOOKUP_TABLE,
    RTMSG,
    RTNH_F_ONLINK,
)
from flannel.netlink.wire import IPAddress, IPNetwork


@dataclass(frozen=True, slots=True)
class Route:
    """One route of a routing table."""

    dst: IPNetwork
    """Destination; ``0.0.0.0/0`` (or ``::/0``) for a default route, which has no RTA_DST."""
    gateway: IPAddress | None
    oif: int | None
    onlink: bool
    """RTNH_F_ONLINK: the gateway is taken as directly reachable on ``oif`` whatever its addresses."""
    type: int
    """RTN_*: 1 unicast, 2 local, 3 broadcast, 6 blackhole, 7 unreachable..."""
    scope: int
    protocol: int
    table: int


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """What the kernel would do with a packet to one address (``ip route get``)."""

    dst: IPAddress
    oif: int | None
    prefsrc: IPAddress | None
    gateway: IPAddress | None


_RTMSG = RTMSG.unpack_from
_ATTR = RTATTR.unpack_from
_U32 = struct.Struct("=I").unpack_from
_V4 = IPv4Address
_V4NET = IPv4Network


RouteFields = tuple[int, int, int, int, int, int, bytes | None, bytes | None, int | None, int, int]
"""``(family, dst_len, protocol, scope, type, flags, RTA_DST, RTA_GATEWAY, RTA_OIF, table, RTA_NH_ID)`` of one
route (the last 0 when the route names no nexthop object)."""


def route_fields(data: bytes, start: int, end: int) -> RouteFields:
    """One RTM_NEWROUTE body, undecoded: what a reconcile compares, without address objects per route.

    The attribute loop is inlined (rather than ``wire.attrs``) because route dumps are the largest ones
    flanneld reads: this keeps 15 000 routes well under 100 ms.
    """
    family, dst_len, _src_len, _tos, rtable, proto, scope, rtn, flags = _RTMSG(data, start)
    dst = gw = None
    route_oif = None
    nh_id = 0
    pos = start + 12
    while pos + 4 <= end:
        alen, atype = _ATTR(data, pos)
        if alen < 4:
            break
        if atype == RTA_DST:
            dst = data[pos + 4 : pos + alen]
        elif atype == RTA_GATEWAY:
            gw = data[pos + 4 : pos + alen]
        elif atype == RTA_OIF:
            route_oif = _U32(data, pos + 4)[0]
        elif atype == RTA_TABLE:
            rtable = _U32(data, pos + 4)[0]
        elif atype == RTA_NH_ID:
            nh_id = _U32(data, pos + 4)[0]
        pos += (alen + 3) & ~3
    return family, dst_len, proto, scope, rtn, flags, dst, gw, route_oif, rtable, nh_id


def parse_route(data: bytes, start: int, end: int, table: int | None, oif: int | None = None,
                protocol: int = 0, rtype: int = 0) -> Route | None:
    """Decode one RTM_NEWROUTE body; None for cached clones and for routes of other tables or devices (or,
    when set, of another protocol or type)."""
    family, dst_len, proto, scope, rtn, flags, dst, gw, route_oif, rtable, _nh = route_fields(data, start, end)
    if flags & RTM_F_CLONED or (protocol and proto != protocol) or (rtype and rtype != rtn):
        return None
    if table is not None and rtable != table:
        return None
    if oif is not None and route_oif != oif:
        return None
    net = network_of(family, dst, dst_len)
    if family == socket.AF_INET:
        gateway: IPAddress | None = _V4(gw) if gw else None
    else:
        gateway = wire.ip_from(gw) if gw else None
    if gw and gw == dst and gateway == net.network_address:
        # vxlan's routes go via the peer subnet's own network address: one address object for both, not two
        # (a reconcile holds a dump of thousands of them: -0.37 MiB at 5000 peers, issue #16)
        gateway = net.network_address
    return Route(net, gateway, route_oif, bool(flags & RTNH_F_ONLINK), rtn, scope, proto, rtable)


def network_of(family: int, dst: bytes | None, dst_len: int) -> IPNetwork:
    """A route's destination from its RTA_DST (absent for a default route) and length."""
    if family == socket.AF_INET:
        return _V4NET((int.from_bytes(dst, "big") if dst else 0, dst_len), False)
    return wire.network_from(dst, dst_len, True)


def parse_route_info(data: bytes, start: int, end: int, dst: IPAddress) -> RouteInfo:
    a = wire.attrs(data, start + RTMSG.size, end)
    oif, src, gw = a.get(RTA_OIF), a.get(RTA_PREFSRC), a.get(RTA_GATEWAY)
    return RouteInfo(
        dst=dst,
        oif=wire.u32(oif) if oif else None,
        prefsrc=wire.ip_from(src) if src else None,
        gateway=wire.ip_from(gw) if gw else None,
    )


def dump_body(family: int, table: int | None, oif: int | None = None, protocol: int = 0, rtype: int = 0) -> bytes:
    """RTM_GETROUTE dump request, filtered by table, output device, and (when non-zero) protocol and type.

    With strict checking (NETLINK_GET_STRICT_CHK, Linux 4.20+) the kernel applies both filters itself
    (``ip_valid_fib_dump_req``) and sends only the routes that pass, so a full BGP table on another
    device costs a walk of the kernel's trie instead of a million messages decoded in Python. Without it
    the kernel ignores both and ``parse_route`` filters instead. The table also goes in ``rtm_table``, as
    ``ip`` sends it; RTA_TABLE wins, and alone can name tables above 255. Protocol and type go in the header
    (``ip route show proto N`` / ``type blackhole``), which strict checking also filters on.
    """
    hdr_table = table if table is not None and table < 256 else 0
    body = RTMSG.pack(family, 0, 0, 0, hdr_table, protocol, 0, rtype, 0)
    if table is not None:
        body += wire.attr_u32(RTA_TABLE, table)
    if oif is not None:
        body += wire.attr_u32(RTA_OIF, oif)
    return body


def get_body(dst: IPAddress, fib_match: bool = False) -> bytes:
    """RTM_GETROUTE for one address, like ``ip route get DST``; ``fib_match`` as ``ip route get fibmatch``.

    A fib-match answer is the routing-table entry the lookup chose (its prefix, table, gateway, device)
    rather than the resolved route; IPv4 reports the table only when also asked for RTM_F_LOOKUP_TABLE,
    which IPv6 (always reporting it) rejects.
    """
    v4 = dst.version == 4
    family = socket.AF_INET if v4 else socket.AF_INET6
    flags = (RTM_F_FIB_MATCH | (RTM_F_LOOKUP_TABLE if v4 else 0)) if fib_match else 0
    return RTMSG.pack(family, 32 if v4 else 128, 0, 0, 0, 0, 0, 0, flags) + wire.attr(RTA_DST, dst.packed)
