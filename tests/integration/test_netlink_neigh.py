"""Neighbour and FDB entries of a VXLAN device: replace, delete and large dumps, checked with
``ip -j neigh`` and ``bridge -j fdb``."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from flannel.netlink import FdbDelete, FdbReplace, NeighDelete, NeighReplace, Netlink, Op, VxlanSpec, is_gone
from flannel.netlink.consts import NTF_SELF, NUD_PERMANENT
from tests.netns import NetNS, netns_fixture  # noqa: F401

pytestmark = pytest.mark.root

VTEP, MAC, PUBLIC = IPv4Address("10.244.3.0"), "0a:58:0a:f4:03:00", IPv4Address("198.18.0.3")


def _vxlan(nl: Netlink) -> int:
    spec = VxlanSpec("flannel.1", 1, 0, IPv4Address("198.18.0.1"), 8472, False, False, 1450, None)
    return nl.create_vxlan(spec).index


def _fdb_show(ns: NetNS) -> list[tuple[str, str | None, str]]:
    return [(e["mac"], e.get("dst"), e["state"]) for e in ns.bridge_json("fdb", "show", "dev", "flannel.1")]


def test_neigh_replace_and_delete(netns: NetNS) -> None:
    with Netlink(netns.name) as nl:
        idx = _vxlan(nl)
        assert nl.apply([NeighReplace(idx, VTEP, MAC)]) == [None]
        assert nl.apply([NeighReplace(idx, VTEP, "0A:58:0A:F4:03:01")]) == [None]  # replace moves the MAC
        shown = netns.ip_json("neigh", "show", "dev", "flannel.1")
        assert [(n["dst"], n["lladdr"], n["state"]) for n in shown] == [
            (str(VTEP), "0a:58:0a:f4:03:01", ["PERMANENT"])
        ]
        [n] = nl.neighbours(idx)
        assert (n.index, n.ip, n.lladdr, n.state) == (idx, VTEP, "0a:58:0a:f4:03:01", NUD_PERMANENT)
        assert nl.apply([NeighDelete(idx, VTEP)]) == [None]
        assert netns.ip_json("neigh", "show", "dev", "flannel.1") == []
        [err] = nl.apply([NeighDelete(idx, VTEP)])
    assert is_gone(err) and err is not None and err.op == "neigh del 10.244.3.0 dev flannel.1"


def test_fdb_replace_and_delete(netns: NetNS) -> None:
    with Netlink(netns.name) as nl:
        idx = _vxlan(nl)
        assert nl.apply([FdbReplace(idx, MAC, PUBLIC)]) == [None]
        assert nl.apply([FdbReplace(idx, MAC, PUBLIC)]) == [None]
        assert _fdb_show(netns) == [(MAC, str(PUBLIC), "permanent")]
        assert "self" in netns.bridge_json("fdb", "show", "dev", "flannel.1")[0]["flags"]
        [e] = nl.fdb(idx)
        assert (e.index, e.mac, e.dst, e.state) == (idx, MAC, PUBLIC, NUD_PERMANENT) and e.flags & NTF_SELF
        assert nl.apply([FdbDelete(idx, MAC, PUBLIC)]) == [None]
        assert _fdb_show(netns) == [] and nl.fdb(idx) == []
        [err] = nl.apply([FdbDelete(idx, MAC, PUBLIC)])
    assert is_gone(err)


def test_fdb_is_filtered_to_the_device(netns: NetNS) -> None:
    netns.ip("link", "add", "vx9", "type", "vxlan", "id", "9", "dstport", "4789")
    netns.run(["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx9", "dst", "198.18.0.9", "self"])
    with Netlink(netns.name) as nl:
        idx = _vxlan(nl)
        assert nl.fdb(idx) == []
        vx9 = nl.link_by_name("vx9")
        assert vx9 is not None
        assert [(e.mac, e.dst) for e in nl.fdb(vx9.index)] == [
            ("00:00:00:00:00:00", IPv4Address("198.18.0.9"))
        ]


def test_thousands_of_neighbours_and_fdb_entries_are_listed(netns: NetNS) -> None:
    count = 5000
    with Netlink(netns.name) as nl:
        idx = _vxlan(nl)
        ops: list[Op] = []
        want: dict[IPv4Address, str] = {}
        for i in range(count):
            ip, mac = IPv4Address(int(VTEP) + (i << 8)), f"0a:58:00:00:{i >> 8:02x}:{i & 0xFF:02x}"
            want[ip] = mac
            ops += [NeighReplace(idx, ip, mac), FdbReplace(idx, mac, IPv4Address(int(PUBLIC) + i))]
        assert not any(nl.apply(ops))
        assert {n.ip: n.lladdr for n in nl.neighbours(idx)} == want
        fdb = nl.fdb(idx)
    assert len(fdb) == count and {e.mac for e in fdb} == set(want.values())
    assert len(netns.ip_json("neigh", "show", "dev", "flannel.1")) == count
    assert len(netns.bridge_json("fdb", "show", "dev", "flannel.1")) == count
