"""Kernel changes as values, so that thousands of them can be packed and sent in one go.

Each operation knows its wire form (``pack``) and its ``ip``/``bridge`` command equivalent (``describe``,
for logs and errors). All of them are idempotent "replace"/"delete" requests, in felix's spirit: applying
the same batch twice leaves the kernel in the same state. The one exception, an exclusive blackhole add,
fails with EEXIST on a second apply rather than change anything.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

from flannel.netlink import wire
from flannel.netlink.consts import (
    AF_BRIDGE,
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NTF_SELF,
    NUD_PERMANENT,
    RT_SCOPE_LINK,
    RT_SCOPE_NOWHERE,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTMSG,
    RTN_BLACKHOLE,
    RTN_UNICAST,
    RTNH_F_ONLINK,
    RTPROT_BOOT,
)
from flannel.netlink.nexthops import NexthopDelete, NexthopReplace, RouteViaNexthop
from flannel.netlink.wire import IPAddress, IPNetwork

_REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
_ADD = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
_DELETE = NLM_F_REQUEST | NLM_F_ACK
_INET = {4: socket.AF_INET, 6: socket.AF_INET6}

Names: TypeAlias = Mapping[int, str] | None


def _ip(ip: IPAddress) -> str:
    """``str(ip)``; IPv4 through the C formatter: a snapshot of 5000 peers logs 25 000 addresses, and
    ``ipaddress`` formats each in Python."""
    return socket.inet_ntoa(ip.packed) if ip.version == 4 else str(ip)


def _net(net: IPNetwork) -> str:
    """``str(net)``, the same way."""
    return f"{_ip(net.network_address)}/{net.prefixlen}"


def _dev(index: int | None, names: Names) -> str:
    """A device for ``describe``: its name when known, ``#INDEX`` otherwise."""
    if names and index is not None and index in names:
        return names[index]
    return f"#{index}"


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", "")) if len(mac) == 17 else wire.mac_bytes(mac)


# Whole IPv4 messages of the three kinds a vxlan peer needs, each packed by one ``struct`` call: a snapshot
# of 5000 peers packs 15 000 of them, and building them attribute by attribute was 2.4 µs each (issue #16).
# Header (len, type, flags, seq, pid), then the body exactly as the generic path below builds it.
_NEIGH4 = struct.Struct("=IHHII BxxxiHBB HH4s HH6sxx")
_FDB4 = struct.Struct("=IHHII BxxxiHBB HH6sxx HH4s")
_ROUTE4 = struct.Struct("=IHHII BBBBBBBBI HH4s HH4s HHI")


@dataclass(frozen=True, slots=True)
class NeighReplace:
    """``ip neigh replace IP lladdr MAC dev DEV nud permanent``: the remote VTEP's MAC for its IP."""

    index: int
    ip: IPAddress
    mac: str

    def pack(self, seq: int) -> bytes:
        ip = self.ip
        if ip.version == 4 and len(self.mac) == 17:
            return _NEIGH4.pack(_NEIGH4.size, RTM_NEWNEIGH, _REPLACE, seq, 0,
                                socket.AF_INET, self.index, NUD_PERMANENT, 0, RTN_UNICAST,
                                8, NDA_DST, ip.packed, 10, NDA_LLADDR, _mac(self.mac))
        body = NDMSG.pack(_INET[ip.version], self.index, NUD_PERMANENT, 0, RTN_UNICAST)
        body += wire.attr(NDA_DST, ip.packed) + wire.attr(NDA_LLADDR, _mac(self.mac))
        return wire.message(RTM_NEWNEIGH, _REPLACE, seq, body)

    def describe(self, names: Names = None) -> str:
        return f"neigh replace {_ip(self.ip)} lladdr {self.mac} dev {_dev(self.index, names)} nud permanent"


@dataclass(frozen=True, slots=True)
class NeighDelete:
    """``ip neigh del IP dev DEV``."""

    index: int
    ip: IPAddress

    def pack(self, seq: int) -> bytes:
        ip = self.ip
        body = NDMSG.pack(_INET[ip.version], self.index, 0, 0, 0) + wire.attr(NDA_DST, ip.packed)
        return wire.message(RTM_DELNEIGH, _DELETE, seq, body)

    def describe(self, names: Names = None) -> str:
        return f"neigh del {self.ip} dev {_dev(self.index, names)}"


@dataclass(frozen=True, slots=True)
class FdbReplace:
    """``bridge fdb replace MAC dev DEV dst IP self permanent``: where to send frames for a remote VTEP."""

    index: int
    mac: str
    dst: IPAddress

    def pack(self, seq: int) -> bytes:
        if self.dst.version == 4 and len(self.mac) == 17:
            return _FDB4.pack(_FDB4.size, RTM_NEWNEIGH, _REPLACE, seq, 0,
                              AF_BRIDGE, self.index, NUD_PERMANENT, NTF_SELF, 0,
                              10, NDA_LLADDR, _mac(self.mac), 8, NDA_DST, self.dst.packed)
        body = NDMSG.pack(AF_BRIDGE, self.index, NUD_PERMANENT, NTF_SELF, 0)
        body += wire.attr(NDA_LLADDR, _mac(self.mac)) + wire.attr(NDA_DST, self.dst.packed)
        return wire.message(RTM_NEWNEIGH, _REPLACE, seq, body)

    def describe(self, names: Names = None) -> str:
        return f"fdb replace {self.mac} dev {_dev(self.index, names)} dst {_ip(self.dst)} self permanent"


@dataclass(frozen=True, slots=True)
class FdbDelete:
    """``bridge fdb del MAC dev DEV [dst IP] self``; with ``dst`` only that remote of the MAC goes."""

    index: int
    mac: str
    dst: IPAddress | None = None

    def pack(self, seq: int) -> bytes:
        body = NDMSG.pack(AF_BRIDGE, self.index, 0, NTF_SELF, 0) + wire.attr(NDA_LLADDR, _mac(self.mac))
        if self.dst is not None:
            body += wire.attr(NDA_DST, self.dst.packed)
        return wire.message(RTM_DELNEIGH, _DELETE, seq, body)

    def describe(self, names: Names = None) -> str:
        dst = f" dst {self.dst}" if self.dst is not None else ""
        return f"fdb del {self.mac} dev {_dev(self.index, names)}{dst} self"


def _route_attrs(dst: IPNetwork, gateway: IPAddress | None, oif: int | None) -> bytes:
    out = wire.attr(RTA_DST, dst.network_address.packed) if dst.prefixlen else b""
    if gateway is not None:
        out += wire.attr(RTA_GATEWAY, gateway.packed)
    if oif is not None:
        out += wire.attr_u32(RTA_OIF, oif)
    return out


@dataclass(frozen=True, slots=True)
class RouteReplace:
    """``ip route replace DST [via GW] [dev DEV] [onlink]`` in the main table.

    Protocol ``boot`` and scope ``universe`` (``link`` without a gateway) are what ``ip`` and Go's
    netlink library send, so routes made by upstream flanneld and by us compare equal. ``protocol`` marks a
    route as made by a given owner (``ip route ... proto N``), so that it can be told apart later.
    """

    dst: IPNetwork
    gateway: IPAddress | None
    oif: int | None = None
    onlink: bool = False
    protocol: int = RTPROT_BOOT
    scope: int | None = None
    """None: ``universe`` with a gateway, ``link`` without (as ``ip`` chooses)."""

    def pack(self, seq: int) -> bytes:
        dst = self.dst
        scope = self.scope if self.scope is not None else (
            RT_SCOPE_UNIVERSE if self.gateway is not None else RT_SCOPE_LINK)
        gw = self.gateway
        if dst.version == 4 and dst.prefixlen and gw is not None and gw.version == 4 and self.oif is not None:
            return _ROUTE4.pack(_ROUTE4.size, RTM_NEWROUTE, _REPLACE, seq, 0,
                                socket.AF_INET, dst.prefixlen, 0, 0, RT_TABLE_MAIN, self.protocol, scope,
                                RTN_UNICAST, RTNH_F_ONLINK if self.onlink else 0,
                                8, RTA_DST, dst.network_address.packed, 8, RTA_GATEWAY, gw.packed,
                                8, RTA_OIF, self.oif)
        body = RTMSG.pack(
            _INET[dst.version],
            dst.prefixlen,
            0,
            0,
            RT_TABLE_MAIN,
            self.protocol,
            scope,
            RTN_UNICAST,
            RTNH_F_ONLINK if self.onlink else 0,
        )
        body += _route_attrs(dst, self.gateway, self.oif)
        return wire.message(RTM_NEWROUTE, _REPLACE, seq, body)

    def describe(self, names: Names = None) -> str:
        text = f"route replace {_net(self.dst)}"
        text += f" via {_ip(self.gateway)}" if self.gateway is not None else ""
        text += f" dev {_dev(self.oif, names)}" if self.oif is not None else ""
        text += " onlink" if self.onlink else ""
        text += f" scope {self.scope}" if self.scope is not None else ""
        return text + (f" proto {self.protocol}" if self.protocol != RTPROT_BOOT else "")


@dataclass(frozen=True, slots=True)
class RouteDelete:
    """``ip route del DST [via GW] [dev DEV] [proto N]`` from the main table; unset fields match any route.

    The kernel honours ``protocol`` on delete (IPv4 and IPv6), so a delete restricted to our own protocol can
    never remove a route someone else made, even one that raced in since we looked.
    """

    dst: IPNetwork
    gateway: IPAddress | None = None
    oif: int | None = None
    protocol: int = 0

    def pack(self, seq: int) -> bytes:
        dst = self.dst
        body = RTMSG.pack(_INET[dst.version], dst.prefixlen, 0, 0, RT_TABLE_MAIN, self.protocol,
                          RT_SCOPE_NOWHERE, 0, 0)
        body += _route_attrs(dst, self.gateway, self.oif)
        return wire.message(RTM_DELROUTE, _DELETE, seq, body)

    def describe(self, names: Names = None) -> str:
        text = f"route del {self.dst}"
        text += f" via {self.gateway}" if self.gateway is not None else ""
        text += f" dev {_dev(self.oif, names)}" if self.oif is not None else ""
        return text + (f" proto {self.protocol}" if self.protocol else "")


@dataclass(frozen=True, slots=True)
class BlackholeRouteReplace:
    """``ip route replace blackhole DST``: drop traffic to a network instead of leaking it elsewhere.

    With ``exclusive`` it is ``ip route add`` instead (upstream's ``RouteAdd``): it fails with EEXIST rather
    than replacing another route to the same destination, such as the bridge's route to the own subnet.
    """

    dst: IPNetwork
    exclusive: bool = False

    def pack(self, seq: int) -> bytes:
        dst = self.dst
        body = RTMSG.pack(
            _INET[dst.version],
            dst.prefixlen,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            RT_SCOPE_UNIVERSE,
            RTN_BLACKHOLE,
            0,
        )
        body += _route_attrs(dst, None, None)
        return wire.message(RTM_NEWROUTE, _ADD if self.exclusive else _REPLACE, seq, body)

    def describe(self, names: Names = None) -> str:
        return f"route {'add' if self.exclusive else 'replace'} blackhole {self.dst}"


Op: TypeAlias = (
    NeighReplace | NeighDelete | FdbReplace | FdbDelete | RouteReplace | RouteDelete | BlackholeRouteReplace
    | NexthopReplace | NexthopDelete | RouteViaNexthop
)
"""Anything ``Netlink.apply`` accepts."""
