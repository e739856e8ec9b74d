"""Nexthop messages: the one-``struct`` forms are the attribute-by-attribute ones, and a dump entry reads back.

``netlink.nexthops`` packs the nexthop object and the route naming it in one ``struct`` call each (as ``ops``
does for the other per-peer messages); the integration tests (tests/integration/test_vxlan_nexthops.py) prove
the kernel accepts them, this proves the bytes are the ones the generic builder makes from the uapi layout.
"""

from __future__ import annotations

import socket
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
    RTM_DELNEXTHOP,
    RTM_NEWNEXTHOP,
    RTM_NEWROUTE,
    RTMSG,
    RTN_UNICAST,
    RTNH_F_ONLINK,
    RTPROT_BOOT,
)
from flannel.netlink.nexthops import (
    NexthopDelete,
    NexthopReplace,
    RouteViaNexthop,
    dump_body,
    nexthop_fields,
    nexthop_id,
)

REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
GW = IPv4Address("10.244.3.0")


def test_the_id_is_the_gateway_as_a_number() -> None:
    assert nexthop_id(GW) == 0x0AF40300 == 183763712


def test_nexthop_replace_is_the_generic_message() -> None:
    op = NexthopReplace(id=nexthop_id(GW), gateway=GW, oif=7)
    body = NHMSG.pack(socket.AF_INET, 0, RTPROT_BOOT, RTNH_F_ONLINK)
    body += wire.attr_u32(NHA_ID, op.id) + wire.attr_u32(NHA_OIF, 7) + wire.attr(NHA_GATEWAY, GW.packed)
    assert op.pack(42) == wire.message(RTM_NEWNEXTHOP, REPLACE, 42, body)
    assert op.describe({7: "flannel.1"}) == "nexthop replace id 183763712 via 10.244.3.0 dev flannel.1 onlink"
    assert op.describe() == "nexthop replace id 183763712 via 10.244.3.0 dev #7 onlink"


def test_route_via_nexthop_is_the_generic_message() -> None:
    op = RouteViaNexthop(dst=IPv4Network("10.244.3.0/24"), id=nexthop_id(GW))
    body = RTMSG.pack(socket.AF_INET, 24, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
    body += wire.attr(RTA_DST, GW.packed) + wire.attr_u32(RTA_NH_ID, op.id)
    assert op.pack(7) == wire.message(RTM_NEWROUTE, REPLACE, 7, body)
    assert op.describe() == "route replace 10.244.3.0/24 nhid 183763712"


def test_nexthop_delete_names_the_id_only() -> None:
    body = NHMSG.pack(0, 0, 0, 0) + wire.attr_u32(NHA_ID, 5)
    assert NexthopDelete(id=5).pack(1) == wire.message(RTM_DELNEXTHOP, NLM_F_REQUEST | NLM_F_ACK, 1, body)
    assert NexthopDelete(id=5).describe() == "nexthop del id 5"


def test_a_dump_entry_reads_back() -> None:
    message = NexthopReplace(id=nexthop_id(GW), gateway=GW, oif=9).pack(1)
    assert nexthop_fields(message, 16, len(message)) == (nexthop_id(GW), 9, GW.packed, RTNH_F_ONLINK)
    blackhole = NHMSG.pack(socket.AF_INET, 0, 0, 0) + wire.attr_u32(NHA_ID, 3) + wire.attr(4, b"")
    assert nexthop_fields(blackhole, 0, len(blackhole)) == (3, None, None, 0)
    assert dump_body() == NHMSG.pack(0, 0, 0, 0)
