"""``Netlink.apply``: big pipelined batches, per-operation errors, and a clean root namespace."""

from __future__ import annotations

import errno
import subprocess
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel.netlink import FdbReplace, NeighReplace, Netlink, NetlinkError, Op, RouteDelete, RouteReplace, VxlanSpec
from tests.netns import NetNS, netns_fixture  # noqa: F401

pytestmark = pytest.mark.root

POD_BASE, PUBLIC_BASE = int(IPv4Address("10.244.0.0")), int(IPv4Address("198.18.1.0"))


def _device(nl: Netlink) -> int:
    link = nl.create_vxlan(VxlanSpec("flannel.1", 1, 0, IPv4Address("198.18.0.1"), 8472, False, False, 1450, None))
    nl.set_link_up(link.index)
    return link.index


def _peer_ops(idx: int, i: int) -> list[Op]:
    vtep, mac = IPv4Address(POD_BASE + (i << 8)), f"0a:58:0a:f4:{i >> 8:02x}:{i & 0xFF:02x}"
    return [
        NeighReplace(idx, vtep, mac),
        FdbReplace(idx, mac, IPv4Address(PUBLIC_BASE + i)),
        RouteReplace(IPv4Network((int(vtep), 24)), vtep, idx, onlink=True),
    ]


def test_a_batch_of_2000_operations_is_all_applied(netns: NetNS) -> None:
    with Netlink(netns.name) as nl:
        idx = _device(nl)
        ops = [op for i in range(250) for op in _peer_ops(idx, i)]
        ops += [
            NeighReplace(idx, IPv4Address(POD_BASE + (1 << 16) + i), "0a:00:00:00:00:01") for i in range(1250)
        ]
        assert len(ops) == 2000
        results = nl.apply(ops)
    assert results == [None] * 2000
    assert len(netns.ip_json("route", "show", "dev", "flannel.1")) == 250
    assert len(netns.ip_json("neigh", "show", "dev", "flannel.1")) == 1500
    assert len(netns.bridge_json("fdb", "show", "dev", "flannel.1")) == 250
    assert netns.ip_json("route", "show", "10.244.7.0/24")[0]["gateway"] == "10.244.7.0"


def test_failures_are_reported_for_exactly_the_failing_operations(netns: NetNS) -> None:
    with Netlink(netns.name) as nl:
        idx = _device(nl)
        ops = [op for i in range(300) for op in _peer_ops(idx, i)]
        bad: dict[int, Op] = {
            7: RouteReplace(IPv4Network("10.245.7.0/24"), IPv4Address("10.245.7.0"), 99999, onlink=True),
            500: RouteDelete(IPv4Network("10.246.0.0/24")),
            899: NeighReplace(99999, IPv4Address("10.245.9.0"), "0a:00:00:00:00:09"),
        }
        for pos, op in bad.items():
            ops.insert(pos, op)
        results = nl.apply(ops)
    failed = {i: r for i, r in enumerate(results) if r is not None}
    assert sorted(failed) == sorted(bad)
    assert all(isinstance(r, NetlinkError) for r in failed.values())
    assert failed[7].errno == errno.ENODEV
    assert failed[7].op == "route replace 10.245.7.0/24 via 10.245.7.0 dev #99999 onlink"
    assert failed[500].errno == errno.ESRCH and failed[500].op == "route del 10.246.0.0/24"
    assert failed[899].errno == errno.ENODEV and "neigh replace 10.245.9.0" in str(failed[899])
    assert len(netns.ip_json("route", "show", "dev", "flannel.1")) == 300


def test_more_operations_than_fit_in_flight_at_once(netns: NetNS) -> None:
    """Far more failing requests (larger ACKs) than the in-flight bound: no ACK may be lost."""
    with Netlink(netns.name) as nl:
        ops: list[Op] = [RouteDelete(IPv4Network((POD_BASE + (i << 8), 24))) for i in range(12000)]
        results = nl.apply(ops)
        assert all(r is not None and r.errno == errno.ESRCH for r in results)
        assert nl.apply([]) == []
        assert nl.link_by_name("eth0") is not None  # the socket is still in step


def _root_state() -> str:
    out = []
    for cmd in (
        ["ip", "-d", "link"],
        ["ip", "addr"],
        ["ip", "route", "show", "table", "all"],
        ["ip", "neigh"],
        ["bridge", "fdb", "show"],
    ):
        out.append(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return "\n".join(out)


def test_nothing_appears_in_the_root_namespace(netns: NetNS) -> None:
    before = _root_state()
    with Netlink(netns.name) as nl:
        idx = _device(nl)
        nl.add_address(idx, IPv4Address("10.244.0.0"), 32)
        assert not any(nl.apply([op for i in range(1, 50) for op in _peer_ops(idx, i)]))
    after = _root_state()
    for marker in ("flannel.1", "10.244.", "198.18.", "0a:58:0a:f4"):
        assert after.count(marker) == before.count(marker), marker
