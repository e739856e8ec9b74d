"""Pure checks of the netlink layer that need no kernel: wire encoding, op descriptions, error intent."""

from __future__ import annotations

import errno
import struct
from ipaddress import IPv4Address, IPv4Network

from flannel.netlink import FdbReplace, NeighReplace, NetlinkError, RouteReplace, is_exists, is_gone, wire
from flannel.netlink.consts import NLMSGHDR, RTM_NEWNEIGH
from flannel.netlink.neigh import parse_neigh


def test_neigh_replace_encodes_like_ip_neigh_replace() -> None:
    msg = NeighReplace(7, IPv4Address("10.244.3.0"), "0a:58:0a:f4:03:00").pack(42)
    length, mtype, flags, seq, pid = NLMSGHDR.unpack_from(msg)
    assert (length, mtype, flags, seq, pid) == (
        len(msg),
        RTM_NEWNEIGH,
        0x505,
        42,
        0,
    )  # REQUEST|ACK|CREATE|REPLACE
    family, index, state, nflags, ntype = struct.unpack_from("=BxxxiHBB", msg, 16)
    assert (family, index, state, nflags, ntype) == (2, 7, 0x80, 0, 1)
    assert wire.attrs(msg, 28, len(msg)) == {1: bytes([10, 244, 3, 0]), 2: bytes.fromhex("0a580af40300")}
    assert parse_neigh(msg, 16, len(msg), 7) is not None


def test_descriptions_read_like_ip_commands() -> None:
    names = {7: "flannel.1"}
    route = RouteReplace(IPv4Network("10.244.3.0/24"), IPv4Address("10.244.3.0"), 7, onlink=True)
    assert route.describe(names) == "route replace 10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink"
    fdb = FdbReplace(9, "0a:58:0a:f4:03:00", IPv4Address("198.18.0.3"))
    assert fdb.describe(names) == "fdb replace 0a:58:0a:f4:03:00 dev #9 dst 198.18.0.3 self permanent"


def test_errors_translate_errno_into_intent() -> None:
    assert is_exists(NetlinkError(errno.EEXIST, "link add x"))
    for code in (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL):
        assert is_gone(NetlinkError(code, "del"))
    assert not is_gone(NetlinkError(errno.EPERM, "del")) and not is_gone(OSError(errno.ENOENT, "x"))
    err = NetlinkError(errno.ENODEV, "route replace 10.0.0.0/24 dev #9", "Nexthop device required for onlink")
    assert str(err) == "route replace 10.0.0.0/24 dev #9: No such device (Nexthop device required for onlink)"
