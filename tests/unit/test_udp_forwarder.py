"""The udp backend's forwarder (``backend/udp_forwarder.py``) without root.

The TUN device is stood in for by one end of an ``AF_UNIX``/``SOCK_DGRAM`` socketpair (it keeps packet
boundaries as a TUN does); the test reads and writes "the kernel's side" through the other end. The UDP side
is a real socket on 127.0.0.1, and the peer is another socket on 127.0.0.1 whose address is in the peer table.
``from_tun()`` and ``from_udp()`` are called directly, as the event loop would on readability.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import select
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel.backend.udp_forwarder import BURST, Forwarder, Peer, PeerTable
from flannel.backend.udp_packet import F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4
from flannel.backend.udp_tun import TunDevice
from tests.unit.test_udp_packet import (
    SRC,
    TCP_ACK,
    TCP_PSH,
    check_net_unreachable,
    check_segments,
    icmp_echo,
    ip_checksum_ok,
    super_packet,
    tcp_packet,
    transport_checksum_ok,
    udp_packet,
)

HOST_VNET = struct.Struct("=BBHHHH")
"""``struct virtio_net_hdr`` in host byte order, as a TUN with ``IFF_VNET_HDR`` reads and writes it."""
WIRE_HDR = struct.Struct("!BBBxHHHH")
"""The offload wire header: 0xF1, then the virtio-net header in network byte order."""
TUN_ADDR = IPv4Address("10.244.1.0")
PEER_SUBNET = IPv4Network("10.244.2.0/24")
PEER_DST = IPv4Address("10.244.2.9")
WAIT = 5.0
"""Seconds to wait for a datagram that must arrive (a guard against hanging, not a timing assertion)."""


def peer_entry(subnet: IPv4Network, addr: tuple[str, int], offload: bool = False, key: str | None = None) -> Peer:
    return Peer(key=key or str(subnet).replace("/", "-"), network=int(subnet.network_address),
                prefixlen=subnet.prefixlen, addr=addr, offload=offload)


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def wait_readable(sock: socket.socket) -> None:
    ready, _, _ = select.select([sock], [], [], WAIT)
    assert ready, "nothing arrived"


def nothing_pending(sock: socket.socket) -> bool:
    try:
        sock.recv(70000)
    except BlockingIOError:
        return True
    return False


@dataclass
class Rig:
    """A forwarder between a socketpair "TUN" and a UDP socket, with a peer socket in its table."""

    fwd: Forwarder
    kernel: socket.socket
    """The other end of the TUN stand-in: what the kernel would read from and write into the device."""
    sock: socket.socket
    """The forwarder's UDP socket."""
    peer: socket.socket
    """The remote node's UDP socket, on 127.0.0.1."""
    lost: list[OSError] = field(default_factory=list)

    def send_udp(self, datagram: bytes | bytearray) -> None:
        """The peer sends a datagram to the forwarder; the forwarder handles it."""
        self.peer.sendto(datagram, self.sock.getsockname())
        wait_readable(self.sock)
        self.fwd.from_udp()

    def write_tun(self, data: bytes | bytearray) -> None:
        """The kernel routes a packet into the TUN; the forwarder handles it."""
        self.kernel.send(data)
        self.fwd.from_tun()

    def read_tun(self) -> bytes:
        wait_readable(self.kernel)
        return self.kernel.recv(70000)

    def read_peer(self) -> bytes:
        wait_readable(self.peer)
        return self.peer.recv(70000)


def make_rig(offload: bool, peer_offload: bool = False, table_has_peer: bool = True) -> Rig:
    tun_end, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for end in (tun_end, kernel):
        end.setblocking(False)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    tun = TunDevice(fd=tun_end.detach(), name="tun-test", offload=offload)
    sock, peer = udp_socket(), udp_socket()
    table = PeerTable()
    ip = "127.0.0.1" if table_has_peer else "127.0.0.2"
    table.set(peer_entry(PEER_SUBNET, (ip, peer.getsockname()[1]), offload=peer_offload))
    lost: list[OSError] = []
    fwd = Forwarder(tun, sock, TUN_ADDR, table, lost.append)
    return Rig(fwd=fwd, kernel=kernel, sock=sock, peer=peer, lost=lost)


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.fwd.tun.close()
        for s in (rig.kernel, rig.sock, rig.peer):
            s.close()


@pytest.fixture
def rig(rigs: list[Rig]) -> Rig:
    rigs.append(make_rig(offload=False))
    return rigs[-1]


@pytest.fixture
def otun(rigs: list[Rig]) -> Rig:
    """An offload TUN; the peer is a plain one."""
    rigs.append(make_rig(offload=True))
    return rigs[-1]


def to_peer(payload: bytes = b"x" * 64, ttl: int = 64, ident: int = 0x1234) -> bytearray:
    return udp_packet(payload, src=IPv4Address("10.244.2.9"), dst=IPv4Address("10.244.1.7"), ttl=ttl, ident=ident)


def expect_ttl(pkt: bytes | bytearray, ttl: int) -> bytes:
    """``pkt`` with TTL ``ttl`` and its header checksum recomputed from scratch."""
    out = bytearray(pkt)
    out[8] = ttl
    out[10:12] = b"\0\0"
    total = 0
    for i in range(0, 20, 2):
        total += out[i] << 8 | out[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    out[10:12] = (~total & 0xFFFF).to_bytes(2, "big")
    return bytes(out)


# -- PeerTable --------------------------------------------------------------------------------------------------


def test_peer_table_set_replace_remove() -> None:
    table = PeerTable()
    a = peer_entry(IPv4Network("10.244.2.0/24"), ("192.0.2.2", 8285))
    table.set(a)
    assert len(table) == 1 and table.get(a.key) == a
    assert table.lookup(int(IPv4Address("10.244.2.77"))) == a
    moved = peer_entry(IPv4Network("10.244.2.0/24"), ("192.0.2.3", 8285), offload=True)
    table.set(moved)
    assert len(table) == 1 and table.get(a.key) == moved
    assert table.lookup(int(IPv4Address("10.244.2.1"))) == moved
    assert table.is_source("192.0.2.3") and not table.is_source("192.0.2.2")
    assert table.remove(a.key) == moved
    assert table.remove(a.key) is None
    assert len(table) == 0 and table.get(a.key) is None
    assert table.lookup(int(IPv4Address("10.244.2.1"))) is None
    assert not table.is_source("192.0.2.3")


def test_peer_table_lookup_is_longest_prefix_first() -> None:
    table = PeerTable()
    wide = peer_entry(IPv4Network("10.250.0.0/16"), ("192.0.2.16", 8285))
    narrow = peer_entry(IPv4Network("10.250.7.0/24"), ("192.0.2.24", 8285))
    table.set(wide)
    table.set(narrow)
    assert table.lookup(int(IPv4Address("10.250.7.1"))) == narrow
    assert table.lookup(int(IPv4Address("10.250.7.255"))) == narrow
    assert table.lookup(int(IPv4Address("10.250.8.1"))) == wide
    assert table.lookup(int(IPv4Address("10.250.0.0"))) == wide
    assert table.lookup(int(IPv4Address("10.251.7.1"))) is None
    table.remove(narrow.key)
    assert table.lookup(int(IPv4Address("10.250.7.1"))) == wide
    table.set(narrow)
    table.remove(wide.key)
    assert table.lookup(int(IPv4Address("10.250.8.1"))) is None
    assert table.lookup(int(IPv4Address("10.250.7.1"))) == narrow


def test_peer_table_default_route_and_host_route() -> None:
    table = PeerTable()
    everything = peer_entry(IPv4Network("0.0.0.0/0"), ("192.0.2.1", 8285))
    host = peer_entry(IPv4Network("10.9.9.9/32"), ("192.0.2.2", 8285))
    table.set(everything)
    table.set(host)
    assert table.lookup(int(IPv4Address("10.9.9.9"))) == host
    assert table.lookup(int(IPv4Address("10.9.9.8"))) == everything
    assert table.lookup(0xFFFFFFFF) == everything


def test_peer_table_sources_are_reference_counted() -> None:
    table = PeerTable()
    a = peer_entry(IPv4Network("10.244.2.0/24"), ("192.0.2.2", 8285))
    b = peer_entry(IPv4Network("10.244.3.0/24"), ("192.0.2.2", 8285))
    table.set(a)
    table.set(b)
    table.set(b)  # replacing with itself does not count twice
    assert table.is_source("192.0.2.2")
    table.remove(a.key)
    assert table.is_source("192.0.2.2"), "b still lives at that address"
    table.remove(b.key)
    assert not table.is_source("192.0.2.2")
    table.set(a)
    table.set(peer_entry(IPv4Network("10.244.2.0/24"), ("192.0.2.9", 8285)))  # a moves away
    assert not table.is_source("192.0.2.2") and table.is_source("192.0.2.9")


def test_peer_table_removing_a_superseded_key_keeps_the_route_of_its_successor() -> None:
    # A subnet re-leased under a new key (added before the old key's removal arrives) keeps its route.
    table = PeerTable()
    old = peer_entry(IPv4Network("10.244.4.0/24"), ("192.0.2.4", 8285), key="10.244.4.0-24")
    new = peer_entry(IPv4Network("10.244.4.0/24"), ("192.0.2.5", 8285), key="10.244.4.0-24&fd00:4::-64")
    table.set(old)
    table.set(new)
    assert table.remove(old.key) == old
    assert table.lookup(int(IPv4Address("10.244.4.1"))) == new
    assert table.is_source("192.0.2.5") and not table.is_source("192.0.2.4")


# -- UDP → TUN --------------------------------------------------------------------------------------------------


def test_a_plain_datagram_reaches_a_plain_tun_with_its_ttl_decremented(rig: Rig) -> None:
    pkt = to_peer()
    rig.send_udp(pkt)
    out = rig.read_tun()
    assert out == expect_ttl(pkt, 63)
    assert rig.fwd.forwarded["udp_to_tun"] == 1 and not rig.fwd.dropped
    assert nothing_pending(rig.kernel)


def test_a_plain_datagram_reaches_an_offload_tun_behind_a_zero_vnet_header(otun: Rig) -> None:
    pkt = to_peer(b"y" * 1000)
    otun.send_udp(pkt)
    out = otun.read_tun()
    assert out[:10] == bytes(10)
    assert out[10:] == expect_ttl(pkt, 63)
    assert otun.fwd.forwarded["udp_to_tun"] == 1 and not otun.fwd.dropped


@pytest.mark.parametrize(
    "vnet",
    [
        (F_NEEDS_CSUM, GSO_TCPV4, 52, 1448, 20, 16),
        (F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16),
        (0, GSO_NONE, 0, 0, 0, 0),
    ],
)
def test_an_offload_datagram_reaches_an_offload_tun_with_a_host_order_vnet_header(
        otun: Rig, vnet: tuple[int, int, int, int, int, int]) -> None:
    pkt = super_packet(10000)
    otun.send_udp(WIRE_HDR.pack(0xF1, *vnet) + pkt)
    out = otun.read_tun()
    assert out[:10] == HOST_VNET.pack(*vnet)
    assert out[10:] == expect_ttl(pkt, 63)
    assert otun.fwd.forwarded["udp_to_tun"] == 1 and not otun.fwd.dropped


def test_an_offload_datagram_to_a_plain_tun_is_dropped_as_garbage(rig: Rig) -> None:
    rig.send_udp(WIRE_HDR.pack(0xF1, F_NEEDS_CSUM, GSO_TCPV4, 52, 1448, 20, 16) + super_packet(10000))
    assert rig.fwd.dropped == {"garbage": 1}
    assert not rig.fwd.forwarded and nothing_pending(rig.kernel)


def _bad_header(pkt: bytearray) -> bytearray:
    pkt[10] ^= 0x5A
    return pkt


def _version6(pkt: bytearray) -> bytearray:
    pkt[0] = 0x60
    return pkt


GARBAGE = {
    "random": bytes.fromhex("3c9a0e51d27b88f10342aa6e9f0b11c4d6e2a7305b9c18ee4f7a2d60c3b5e918"),
    "version 6": bytes(_version6(to_peer())),
    "bad header checksum": bytes(_bad_header(to_peer())),
    "truncated": bytes(to_peer()[:-4]),
    "trailing bytes": bytes(to_peer() + b"\0\0\0\0"),
    "offload unknown gso type": WIRE_HDR.pack(0xF1, F_NEEDS_CSUM, 3, 52, 1448, 20, 16) + bytes(super_packet(3000)),
    "offload bad inner header": WIRE_HDR.pack(0xF1, 0, 0, 0, 0, 0, 0) + bytes(_bad_header(to_peer())),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_is_dropped_and_counted(otun: Rig, name: str) -> None:
    otun.send_udp(GARBAGE[name])
    assert otun.fwd.dropped == {"garbage": 1}
    assert not otun.fwd.forwarded and nothing_pending(otun.kernel)


@pytest.mark.parametrize("datagram", [b"", b"\x45" * 19, bytes(to_peer()[:19]),
                                      WIRE_HDR.pack(0xF1, 0, 0, 0, 0, 0, 0) + bytes(to_peer()[:19])])
def test_runts_are_dropped_and_counted(otun: Rig, datagram: bytes) -> None:
    otun.send_udp(datagram)
    assert otun.fwd.dropped == {"runt": 1}
    assert not otun.fwd.forwarded and nothing_pending(otun.kernel)


@pytest.mark.parametrize("ttl", [0, 1])
def test_a_datagram_whose_ttl_expires_is_dropped_and_counted(rig: Rig, ttl: int) -> None:
    rig.send_udp(to_peer(ttl=ttl))
    assert rig.fwd.dropped == {"ttl_expired": 1}
    assert not rig.fwd.forwarded and nothing_pending(rig.kernel)


def test_an_offload_datagram_whose_ttl_expires_is_dropped_and_counted(otun: Rig) -> None:
    otun.send_udp(WIRE_HDR.pack(0xF1, 0, 0, 0, 0, 0, 0) + to_peer(ttl=1))
    assert otun.fwd.dropped == {"ttl_expired": 1}
    assert not otun.fwd.forwarded and nothing_pending(otun.kernel)


def test_a_datagram_from_an_unknown_source_is_dropped_and_counted(rigs: list[Rig]) -> None:
    rigs.append(make_rig(offload=False, table_has_peer=False))
    stranger = rigs[-1]
    stranger.send_udp(to_peer())
    stranger.send_udp(b"tiny")
    assert stranger.fwd.dropped == {"unknown_source": 2}
    assert not stranger.fwd.forwarded and nothing_pending(stranger.kernel)


def nothing_pending_into(sock: socket.socket, into: list[bytes]) -> bool:
    """Read one datagram into ``into``; True when there was none."""
    try:
        into.append(sock.recv(70000))
    except BlockingIOError:
        return True
    return False


def test_a_burst_of_200_datagrams_is_delivered_over_several_calls(rig: Rig) -> None:
    sent = [to_peer(i.to_bytes(2, "big") * 20, ident=i) for i in range(200)]
    for pkt in sent:
        rig.peer.sendto(pkt, rig.sock.getsockname())
    received: list[bytes] = []
    calls = 0
    while len(received) < len(sent):
        wait_readable(rig.sock)
        before = rig.fwd.forwarded["udp_to_tun"]
        rig.fwd.from_udp()
        calls += 1
        assert rig.fwd.forwarded["udp_to_tun"] - before <= BURST
        while not nothing_pending_into(rig.kernel, received):  # drain what this call wrote
            pass
    assert calls >= -(-len(sent) // BURST)
    assert received == [expect_ttl(p, 63) for p in sent]
    assert rig.fwd.forwarded["udp_to_tun"] == 200 and not rig.fwd.dropped


# -- TUN → UDP --------------------------------------------------------------------------------------------------


def from_pod(payload: bytes = b"z" * 100, ttl: int = 64) -> bytearray:
    return udp_packet(payload, src=IPv4Address("10.244.1.7"), dst=PEER_DST, ttl=ttl)


def test_a_packet_to_a_known_peer_is_sent_with_its_ttl_decremented(rig: Rig) -> None:
    pkt = from_pod()
    rig.write_tun(pkt)
    assert rig.read_peer() == expect_ttl(pkt, 63)
    assert rig.fwd.forwarded == {"tun_to_udp": 1} and not rig.fwd.dropped
    assert nothing_pending(rig.kernel)


def test_a_packet_from_an_offload_tun_without_offload_metadata_is_sent_plain(rigs: list[Rig]) -> None:
    for peer_offload in (False, True):
        rigs.append(make_rig(offload=True, peer_offload=peer_offload))
        r = rigs[-1]
        pkt = from_pod()
        r.write_tun(bytes(10) + pkt)
        assert r.read_peer() == expect_ttl(pkt, 63)
        assert r.fwd.forwarded == {"tun_to_udp": 1}


def test_a_packet_to_an_unknown_destination_gets_net_unreachable_back(rig: Rig) -> None:
    pkt = udp_packet(b"q" * 40, src=IPv4Address("10.244.1.7"), dst=IPv4Address("10.250.0.1"))
    rig.write_tun(pkt)
    icmp = rig.read_tun()
    check_net_unreachable(icmp, pkt, TUN_ADDR)
    assert icmp[16:20] == IPv4Address("10.244.1.7").packed
    assert rig.fwd.dropped == {"no_route": 1} and not rig.fwd.forwarded
    assert nothing_pending(rig.peer)


def test_net_unreachable_on_an_offload_tun_has_a_zero_vnet_header(otun: Rig) -> None:
    pkt = tcp_packet(b"w" * 40, dst=IPv4Address("10.250.0.1"))
    otun.write_tun(bytes(10) + pkt)
    out = otun.read_tun()
    assert out[:10] == bytes(10)
    check_net_unreachable(out[10:], pkt, TUN_ADDR)
    assert out[26:30] == SRC.packed
    assert otun.fwd.dropped == {"no_route": 1}


def test_no_net_unreachable_answers_icmp_to_an_unknown_destination(rig: Rig) -> None:
    ping = icmp_echo()
    ping[16:20] = IPv4Address("10.250.0.1").packed
    ping[10:12] = b"\0\0"
    rig.write_tun(ping)  # header checksum is not checked on this side
    assert rig.fwd.dropped == {"no_route": 1}
    assert nothing_pending(rig.kernel) and nothing_pending(rig.peer)


def test_a_packet_whose_ttl_expires_is_not_sent(rig: Rig) -> None:
    rig.write_tun(from_pod(ttl=1))
    assert rig.fwd.dropped == {"ttl_expired": 1}
    assert nothing_pending(rig.peer) and nothing_pending(rig.kernel)


@pytest.mark.parametrize("data", [b"\x45" * 19, bytes(0x60 for _ in range(40))])
def test_a_tun_read_that_is_not_ipv4_is_dropped(rig: Rig, data: bytes) -> None:
    rig.write_tun(data)
    assert rig.fwd.dropped == {"tun_not_ipv4": 1}
    assert nothing_pending(rig.peer) and nothing_pending(rig.kernel)


GSO_VNET = (F_NEEDS_CSUM, GSO_TCPV4, 52, 1448, 20, 16)


def test_a_super_packet_travels_whole_to_an_offload_peer(rigs: list[Rig]) -> None:
    rigs.append(make_rig(offload=True, peer_offload=True))
    r = rigs[-1]
    pkt = super_packet(10000)
    assert pkt[16:20] == PEER_DST.packed
    r.write_tun(HOST_VNET.pack(*GSO_VNET) + pkt)
    out = r.read_peer()
    assert out[:12] == bytes([0xF1, F_NEEDS_CSUM, GSO_TCPV4, 0]) + struct.pack("!HHHH", 52, 1448, 20, 16)
    assert out[12:] == expect_ttl(pkt, 63)
    assert r.fwd.forwarded == {"tun_to_udp": 1} and nothing_pending(r.peer)


def test_a_super_packet_is_cut_into_valid_plain_segments_for_a_plain_peer(otun: Rig) -> None:
    pkt = super_packet(10000)
    otun.write_tun(HOST_VNET.pack(*GSO_VNET) + pkt)
    segments = [otun.read_peer() for _ in range(7)]
    assert nothing_pending(otun.peer)
    check_segments(segments, expect_ttl(pkt, 63), 1448)
    assert all(s[8] == 63 and ip_checksum_ok(s) and transport_checksum_ok(s) for s in segments)
    assert otun.fwd.forwarded == {"tun_to_udp": 7}


def test_a_super_packet_too_big_for_the_offload_header_is_segmented_even_for_an_offload_peer(
        rigs: list[Rig]) -> None:
    rigs.append(make_rig(offload=True, peer_offload=True))
    r = rigs[-1]
    pkt = super_packet(65496 - 52)  # 65496 + 12 > 65507: one byte too many for a datagram
    assert len(pkt) == 65496
    r.write_tun(HOST_VNET.pack(*GSO_VNET) + pkt)
    count = -(-(65496 - 52) // 1448)
    segments = [r.read_peer() for _ in range(count)]
    assert nothing_pending(r.peer)
    check_segments(segments, expect_ttl(pkt, 63), 1448)


def test_a_super_packet_just_small_enough_travels_whole(rigs: list[Rig]) -> None:
    rigs.append(make_rig(offload=True, peer_offload=True))
    r = rigs[-1]
    pkt = super_packet(65495 - 52)
    r.write_tun(HOST_VNET.pack(*GSO_VNET) + pkt)
    out = r.read_peer()
    assert len(out) == 65507 and out[0] == 0xF1 and out[12:] == expect_ttl(pkt, 63)


@pytest.mark.parametrize(("proto", "csum_offset"), [("tcp", 16), ("udp", 6)])
@pytest.mark.parametrize("peer_offload", [False, True])
def test_a_needs_csum_packet_gets_its_checksum_completed_and_is_sent_plain(
        rigs: list[Rig], proto: str, csum_offset: int, peer_offload: bool) -> None:
    rigs.append(make_rig(offload=True, peer_offload=peer_offload))
    r = rigs[-1]
    payload = bytes(range(256)) * 3
    src = IPv4Address("10.244.1.7")
    if proto == "tcp":
        partial = tcp_packet(payload, src=src, dst=PEER_DST, partial=True)
        complete = tcp_packet(payload, src=src, dst=PEER_DST)
    else:
        partial = udp_packet(payload, src=src, dst=PEER_DST, partial=True)
        complete = udp_packet(payload, src=src, dst=PEER_DST)
    assert not transport_checksum_ok(partial)
    r.write_tun(HOST_VNET.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, csum_offset) + partial)
    out = r.read_peer()
    assert out[0] == 0x45  # no offload header
    assert transport_checksum_ok(out)
    assert out == expect_ttl(complete, 63)


def test_a_ping_through_a_plain_peer_and_back(rig: Rig) -> None:
    """Both directions on one forwarder: the peer's answer comes back into the TUN."""
    request = udp_packet(b"ping", src=IPv4Address("10.244.1.7"), dst=PEER_DST, ident=1)
    rig.write_tun(request)
    assert rig.read_peer() == expect_ttl(request, 63)
    reply = udp_packet(b"pong", src=PEER_DST, dst=IPv4Address("10.244.1.7"), ident=2, ttl=63)
    rig.send_udp(reply)
    assert rig.read_tun() == expect_ttl(reply, 62)
    assert rig.fwd.forwarded == {"tun_to_udp": 1, "udp_to_tun": 1}


def test_a_burst_from_the_tun_is_handled_at_most_burst_packets_per_call(rig: Rig) -> None:
    for i in range(BURST + 6):
        rig.kernel.send(udp_packet(b"p", src=IPv4Address("10.244.1.7"), dst=PEER_DST, ident=i))
    rig.fwd.from_tun()
    assert rig.fwd.forwarded["tun_to_udp"] == BURST
    rig.fwd.from_tun()
    assert rig.fwd.forwarded["tun_to_udp"] == BURST + 6
    idents = [int.from_bytes(rig.read_peer()[4:6], "big") for _ in range(BURST + 6)]
    assert idents == list(range(BURST + 6))


def test_send_errors_are_counted_and_warned_about_once(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.fwd.table.set(peer_entry(PEER_SUBNET, ("127.0.0.1", 0)))  # port 0: sendmsg fails with EINVAL
    for _ in range(3):
        rig.write_tun(from_pod())
    assert rig.fwd.dropped == {"udp_send_error": 3} and not rig.fwd.forwarded
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "127.0.0.1:0" in warned[0] and "10.244.2.0-24" in warned[0] and "only counted" in warned[0]


# -- a failing TUN ----------------------------------------------------------------------------------------------


def test_reading_a_closed_tun_descriptor_reports_the_tun_lost(rig: Rig) -> None:
    rig.fwd.tun.close()  # fd -1: EBADF, as a TUN whose device went away reports EBADFD
    rig.fwd.from_tun()
    assert [e.errno for e in rig.lost] == [errno.EBADF]


def test_writing_to_a_closed_tun_descriptor_reports_the_tun_lost(rig: Rig) -> None:
    rig.fwd.tun.close()
    rig.send_udp(to_peer())
    assert [e.errno for e in rig.lost] == [errno.EBADF]
    assert not rig.fwd.forwarded


def test_a_tun_failure_stops_polling_the_tun_but_not_the_socket(rig: Rig) -> None:
    loop = asyncio.new_event_loop()
    try:
        rig.fwd.attach(loop)
        stale = rig.fwd.tun.fd
        rig.fwd.tun.close()
        rig.fwd.tun.fd = stale  # a descriptor that has gone bad under the forwarder
        rig.fwd.from_tun()
        assert [e.errno for e in rig.lost] == [errno.EBADF]
        assert loop.remove_reader(stale) is False, "the TUN reader should already be gone"
        assert loop.remove_reader(rig.sock.fileno()) is True, "the socket reader should remain"
    finally:
        rig.fwd.tun.fd = -1
        loop.close()


def test_a_write_error_other_than_a_lost_device_is_counted_not_fatal(rig: Rig) -> None:
    # With the kernel's end of the socketpair closed, writes fail with ECONNREFUSED: not a lost device.
    rig.kernel.close()
    rig.send_udp(to_peer())
    rig.send_udp(to_peer())
    assert rig.fwd.dropped == {"tun_write_error": 2}
    assert not rig.lost and not rig.fwd.forwarded


def test_reopen_tun_closes_the_old_device_first_and_forwards_through_the_new(rig: Rig) -> None:
    old = rig.fwd.tun
    new_end, new_kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    new_end.setblocking(False)
    new_kernel.setblocking(False)
    try:
        closed_first = []

        def opener() -> TunDevice:
            closed_first.append(old.fd == -1)
            return TunDevice(fd=new_end.detach(), name="tun-test", offload=False)

        rig.fwd.broken = True
        rig.fwd.reopen_tun(opener)
        assert closed_first == [True] and old.fd == -1 and not rig.fwd.broken
        pkt = from_pod()
        new_kernel.send(pkt)
        rig.fwd.from_tun()
        assert rig.read_peer() == expect_ttl(pkt, 63)
        rig.send_udp(to_peer())
        wait_readable(new_kernel)
        assert new_kernel.recv(70000) == expect_ttl(to_peer(), 63)
    finally:
        new_kernel.close()


def test_tcp_from_a_pod_reaches_the_peer_unchanged_but_for_the_ttl(rig: Rig) -> None:
    pkt = tcp_packet(b"GET / HTTP/1.1\r\n\r\n", src=IPv4Address("10.244.1.7"), dst=PEER_DST, flags=TCP_ACK | TCP_PSH)
    rig.write_tun(pkt)
    out = rig.read_peer()
    assert out == expect_ttl(pkt, 63) and transport_checksum_ok(out)
