"""The one-``struct`` IPv4 packing of the vxlan peer messages is byte for byte the attribute-by-attribute form.

``ops`` packs the three messages a vxlan peer needs (neighbour, FDB entry, onlink route) for IPv4 in one
``struct`` call each, for speed (issue #16); the integration tests prove the kernel accepts them, this proves
they are exactly what the generic builder (``wire.attr``, used for every other message) makes.
"""

from __future__ import annotations

import random
import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from flannel.netlink import wire
from flannel.netlink.consts import (
    AF_BRIDGE,
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NTF_SELF,
    NUD_PERMANENT,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTMSG,
    RTN_UNICAST,
    RTNH_F_ONLINK,
)
from flannel.netlink.ops import FdbReplace, NeighReplace, RouteReplace

REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def generic_neigh(op: NeighReplace, seq: int) -> bytes:
    body = NDMSG.pack(socket.AF_INET, op.index, NUD_PERMANENT, 0, RTN_UNICAST)
    body += wire.attr(NDA_DST, op.ip.packed) + wire.attr(NDA_LLADDR, mac_bytes(op.mac))
    return wire.message(RTM_NEWNEIGH, REPLACE, seq, body)


def generic_fdb(op: FdbReplace, seq: int) -> bytes:
    body = NDMSG.pack(AF_BRIDGE, op.index, NUD_PERMANENT, NTF_SELF, 0)
    body += wire.attr(NDA_LLADDR, mac_bytes(op.mac)) + wire.attr(NDA_DST, op.dst.packed)
    return wire.message(RTM_NEWNEIGH, REPLACE, seq, body)


def generic_route(op: RouteReplace, seq: int) -> bytes:
    assert op.gateway is not None and op.oif is not None
    scope = op.scope if op.scope is not None else RT_SCOPE_UNIVERSE
    body = RTMSG.pack(socket.AF_INET, op.dst.prefixlen, 0, 0, RT_TABLE_MAIN, op.protocol, scope, RTN_UNICAST,
                      RTNH_F_ONLINK if op.onlink else 0)
    body += wire.attr(RTA_DST, op.dst.network_address.packed) + wire.attr(RTA_GATEWAY, op.gateway.packed)
    body += wire.attr_u32(RTA_OIF, op.oif)
    return wire.message(RTM_NEWROUTE, REPLACE, seq, body)


@pytest.mark.parametrize("seed", range(5))
def test_fast_ipv4_packing_equals_the_generic_form(seed: int) -> None:
    rnd = random.Random(seed)
    for _ in range(200):
        net = IPv4Network((rnd.getrandbits(24) << 8, 24))
        ip = IPv4Address(rnd.getrandbits(32))
        mac = ":".join(f"{rnd.getrandbits(8):02x}" for _ in range(6))
        index, seq = rnd.randint(1, 2**31 - 1), rnd.getrandbits(32)
        neigh = NeighReplace(index=index, ip=ip, mac=mac)
        assert neigh.pack(seq) == generic_neigh(neigh, seq)
        fdb = FdbReplace(index=index, mac=mac, dst=ip)
        assert fdb.pack(seq) == generic_fdb(fdb, seq)
        for onlink in (True, False):
            for scope in (None, RT_SCOPE_LINK):
                route = RouteReplace(dst=net, gateway=ip, oif=index, onlink=onlink, protocol=rnd.choice((4, 11)),
                                     scope=scope)
                assert route.pack(seq) == generic_route(route, seq)


def test_an_ipv4_route_via_an_ipv6_gateway_keeps_the_generic_form() -> None:
    """The fast layout has room for an IPv4 gateway only; anything else must not be cut to four bytes."""
    route = RouteReplace(dst=IPv4Network("10.1.2.0/24"), gateway=IPv6Address("fe80::1"), oif=3)
    body = RTMSG.pack(socket.AF_INET, 24, 0, 0, RT_TABLE_MAIN, route.protocol, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
    body += wire.attr(RTA_DST, bytes([10, 1, 2, 0])) + wire.attr(RTA_GATEWAY, IPv6Address("fe80::1").packed)
    body += wire.attr_u32(RTA_OIF, 3)
    assert route.pack(9) == wire.message(RTM_NEWROUTE, REPLACE, 9, body)
