"""The overlay probe's parts that need no second host: the DF size search, the echo packets, the targets, and a
real probe of this host's loopback (ICMP to 127.0.0.1 changes nothing anywhere)."""

from __future__ import annotations

import io
import json
import socket
import struct
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from flannel import probe
from flannel.ctl import probe as ctl_probe
from flannel.ctl.cli import main
from flannel.lease import Lease, LeaseAttrs


def threshold(limit: int, calls: list[int]) -> Callable[[int], Awaitable[bool]]:
    async def passes(size: int) -> bool:
        calls.append(size)
        return size <= limit

    return passes


@pytest.mark.parametrize("limit", [84, 85, 500, 1000, 1399, 1400, 1449])
async def test_the_search_finds_the_largest_size_that_crosses(limit: int) -> None:
    calls: list[int] = []
    assert await probe.largest_passing(84, 1450, threshold(limit, calls)) == limit
    assert calls[0] == 1450  # the route's MTU is tried first
    assert len(calls) <= 1 + (1450 - 84).bit_length()  # then a binary search, never a linear walk


async def test_a_path_that_carries_the_route_mtu_costs_one_echo() -> None:
    calls: list[int] = []
    assert await probe.largest_passing(84, 1450, threshold(9000, calls)) == 1450
    assert calls == [1450]


async def test_an_empty_range_asks_nothing() -> None:
    calls: list[int] = []
    assert await probe.largest_passing(84, 84, threshold(0, calls)) == 84
    assert calls == []


def test_an_echo_request_has_the_asked_size_and_a_valid_checksum() -> None:
    packet = probe.echo_request(0x1234, 7, 1450)
    assert len(packet) + 20 == 1450
    kind, code, _, ident, seq = struct.unpack("!BBHHH", packet[:8])
    assert (kind, code, ident, seq) == (8, 0, 0x1234, 7)
    assert probe._checksum(packet) == 0  # the one's complement sum over a packet with its checksum is zero


def test_replies_are_parsed_from_raw_and_datagram_sockets() -> None:
    icmp = struct.pack("!BBHHH", 0, 0, 0, 0xBEEF, 3) + b"x" * 56
    ip_header = bytes([0x45]) + bytes(19)
    assert probe.parse_reply(icmp, raw=False) == (0xBEEF, 3)
    assert probe.parse_reply(ip_header + icmp, raw=True) == (0xBEEF, 3)
    request = struct.pack("!BBHHH", 8, 0, 0, 0xBEEF, 3)
    assert probe.parse_reply(request, raw=False) is None  # our own request seen on a raw socket is no reply
    assert probe.parse_reply(b"\x00\x00", raw=False) is None


def test_the_target_is_an_address_the_peer_holds_for_its_backend() -> None:
    subnet = IPv4Network("10.244.3.0/24")
    for backend in ("vxlan", "ipip", "udp", "wireguard"):
        assert probe.target_address(subnet, backend) == IPv4Address("10.244.3.0")  # the flannel device's address
    assert probe.target_address(subnet, "host-gw") == IPv4Address("10.244.3.1")  # cni0's gateway


def test_a_result_has_stable_json_keys() -> None:
    r = probe.ProbeResult("10.244.3.0-24", "10.244.3.0", True, 0.001, 1450)
    assert r.as_json() == {"peer": "10.244.3.0-24", "address": "10.244.3.0", "reachable": True,
                           "rtt_seconds": 0.001, "path_mtu_bytes": 1450, "error": None, "state": "ok",
                           "family": "ipv4", "route_mtu_bytes": None}


async def test_loopback_is_reachable_with_its_whole_mtu() -> None:
    try:
        [result] = await probe.probe_all([probe.Target("lo", IPv4Address("127.0.0.1"))])
    except probe.ProbeUnavailable as exc:
        pytest.skip(f"no ICMP socket for this user: {exc}")
    assert result.reachable and result.rtt_seconds is not None
    assert result.path_mtu_bytes == probe.MAX_SIZE  # lo's MTU (65536) is above the largest IPv4 packet


async def test_many_targets_are_probed_concurrently_and_in_order() -> None:
    targets = [probe.Target(f"t{i}", IPv4Address(f"127.0.0.{i}")) for i in range(1, 41)]
    try:
        results = await probe.probe_all(targets, concurrency=8)
    except probe.ProbeUnavailable as exc:
        pytest.skip(f"no ICMP socket for this user: {exc}")
    assert [r.peer for r in results] == [t.peer for t in targets]
    assert all(r.reachable for r in results)


# -- flannelctl probe: its findings and table ---------------------------------------------------------------

def peer_lease(n: int) -> Lease:
    return Lease(IPv4Network(f"10.244.{n}.0/24"), attrs=LeaseAttrs(IPv4Address(f"198.18.0.{10 + n}"), None, "vxlan"))


def test_unreachable_peers_and_narrow_paths_are_errors() -> None:
    results = [probe.ProbeResult("10.244.2.0-24", "10.244.2.0", True, 0.0001, 1450),
               probe.ProbeResult("10.244.3.0-24", "10.244.3.0", False, None, None, "no reply"),
               probe.ProbeResult("10.244.4.0-24", "10.244.4.0", True, 0.0001, 1400)]
    rows, findings = ctl_probe.assess(results, [peer_lease(2), peer_lease(3), peer_lease(4)], mtu=1450)
    assert [(f.code, f.subject) for f in findings] == [("unreachable", "10.244.3.0-24"),
                                                       ("path_mtu_below_mtu", "10.244.4.0-24")]
    assert "1400 bytes, but pods use MTU 1450" in findings[1].message
    v6 = [probe.ProbeResult("10.244.2.0-24", "fd00::", True, 0.0001, 1430, family=6, route_mtu_bytes=1430),
          probe.ProbeResult("10.244.3.0-24", "fd00:0:0:1::", True, 0.0001, 1330, family=6, route_mtu_bytes=1430)]
    _, v6_findings = ctl_probe.assess(v6, [peer_lease(2), peer_lease(3)], mtu=1450)  # below FLANNEL_MTU is by design
    assert [(f.code, f.subject) for f in v6_findings] == [("path_mtu_below_mtu", "10.244.3.0-24")]
    assert "IPv6 packet that crosses with DF set is 1330 bytes, but the IPv6 overlay device sends 1430" in \
        v6_findings[0].message
    assert rows[0] == {"peer": "10.244.2.0-24", "address": "10.244.2.0", "reachable": True, "rtt_seconds": 0.0001,
                       "path_mtu_bytes": 1450, "error": None, "subnet": "10.244.2.0/24", "public_ip": "198.18.0.12",
                       "state": "ok", "family": "ipv4", "route_mtu_bytes": None}
    text = ctl_probe.render({"self": "10.244.1.0-24", "backend_type": "vxlan", "mtu": 1450, "peers": rows},
                            findings, colour=False)
    assert "UNREACHABLE" in text and "0.10 ms" in text and "ERROR unreachable 10.244.3.0-24" in text


def test_a_host_gw_peer_without_pods_is_a_warning_not_unreachable() -> None:
    quiet = probe.ProbeResult("10.244.3.0-24", "10.244.3.1", False, None, None, "no reply from 10.244.3.1, but the "
                              "public IP 198.18.0.13 answers", no_target=True)
    assert quiet.state == "no_target" and quiet.as_json()["state"] == "no_target"
    rows, findings = ctl_probe.assess([quiet], [peer_lease(3)], mtu=1500)
    assert [(f.severity, f.code) for f in findings] == [("warning", "no_target")]
    text = ctl_probe.render({"self": "10.244.1.0-24", "backend_type": "host-gw", "mtu": 1500, "peers": rows},
                            findings, colour=False)
    assert "no target" in text and "UNREACHABLE" not in text


def test_host_gw_targets_fall_back_to_the_public_ip_in_each_family() -> None:
    v6 = IPv6Network("fd00:10:244:3::/64")
    got = probe.targets_for("k", IPv4Network("10.244.3.0/24"), v6, IPv4Address("198.18.0.3"),
                            IPv6Address("fd00:198:18::3"), "host-gw")
    assert [(t.address, t.fallback, t.family) for t in got] == [
        (IPv4Address("10.244.3.1"), IPv4Address("198.18.0.3"), 4),
        (IPv6Address("fd00:10:244:3::1"), IPv6Address("fd00:198:18::3"), 6)]
    got = probe.targets_for("k", None, v6, None, IPv6Address("fd00:198:18::3"), "vxlan")
    assert [(t.address, t.fallback) for t in got] == [(IPv6Address("fd00:10:244:3::"), None)]


def test_an_icmpv6_echo_is_type_128_and_its_reply_129() -> None:
    packet = probe.echo_request(0x1234, 9, 1280, family=6)
    assert len(packet) == 1280 - 40 and packet[0] == 128  # the IPv6 header is the kernel's
    reply = bytes([129, 0, 0, 0]) + struct.pack("!HH", 0x1234, 9)
    assert probe.parse_reply(reply, raw=True, family=6) == (0x1234, 9)  # raw ICMPv6 sockets carry no IP header
    assert probe.parse_reply(packet, raw=True, family=6) is None


async def test_ipv6_loopback_is_reachable_with_dontfrag() -> None:
    if not socket.has_ipv6 or not Path("/proc/net/if_inet6").read_text().strip():
        pytest.skip("no IPv6 on this host")
    try:
        [result] = await probe.probe_all([probe.Target("lo6", IPv6Address("::1"))])
    except probe.ProbeUnavailable as exc:
        pytest.skip(f"no ICMPv6 socket for this user: {exc}")
    assert result.reachable and result.family == 6 and result.path_mtu_bytes == probe.MAX_SIZE, result


def test_probe_without_subnet_env_says_so_and_exits_1(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(["probe", f"--subnet-file={tmp_path / 'subnet.env'}", "-o", "json"], {}, out, err)
    doc = json.loads(out.getvalue())
    assert code == 1 and [f["code"] for f in doc["findings"]] == ["no_subnet_env"], err.getvalue()
