"""The udp backend's packet surgery (``backend/udp_packet.py``), checked against independent implementations.

Every checksum here is verified with ``word_sum``: a plain loop over 16-bit big-endian words with end-around
carry (RFC 1071), sharing no code with the module under test. The packet builders below are reused by
``test_udp_forwarder.py``.
"""

from __future__ import annotations

import random
import struct
from ipaddress import IPv4Address

import pytest

from flannel.backend.udp_packet import (
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    OFFLOAD_MAGIC,
    checksum,
    complete_checksum,
    decrement_ttl,
    ip_header_ok,
    net_unreachable,
    offload_header,
    ones_sum,
    segment_tcp4,
    vnet_from_offload,
)

SRC = IPv4Address("10.244.1.5")
DST = IPv4Address("10.244.2.9")
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = 1, 2, 4, 8, 16, 32, 64, 128

# -- independent reference implementations ---------------------------------------------------------------------


def word_sum(data: bytes | bytearray) -> int:
    """The ones' complement sum of ``data`` as 16-bit big-endian words, folded after every addition."""
    total = 0
    for i in range(0, len(data), 2):
        word = data[i] << 8
        if i + 1 < len(data):
            word |= data[i + 1]
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def inet_checksum(data: bytes | bytearray, seed: int = 0) -> int:
    """RFC 1071: the complement of the folded sum of ``data`` plus ``seed``."""
    total = word_sum(data) + seed
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + struct.pack("!BBH", 0, proto, length)


def ip_checksum_ok(pkt: bytes | bytearray, off: int = 0) -> bool:
    ihl = (pkt[off] & 0x0F) * 4
    return word_sum(pkt[off:off + ihl]) == 0xFFFF


def transport_checksum_ok(pkt: bytes | bytearray) -> bool:
    """The TCP or UDP checksum of an IPv4 packet verifies (the whole sum including the field is 0xFFFF)."""
    ihl = (pkt[0] & 0x0F) * 4
    tot = pkt[2] << 8 | pkt[3]
    segment = bytes(pkt[ihl:tot])
    return word_sum(pseudo_header(bytes(pkt[12:16]), bytes(pkt[16:20]), pkt[9], len(segment)) + segment) == 0xFFFF


# -- packet builders --------------------------------------------------------------------------------------------


def ipv4_header(payload_len: int, proto: int, *, src: IPv4Address = SRC, dst: IPv4Address = DST, ttl: int = 64,
                ident: int = 0x1234, frag: int = 0x4000, options: bytes = b"") -> bytearray:
    """An IPv4 header (checksum computed independently) for ``payload_len`` bytes of ``proto``."""
    assert len(options) % 4 == 0
    ihl = 5 + len(options) // 4
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + payload_len, ident, frag, ttl, proto, 0,
                                src.packed, dst.packed) + options)
    hdr[10:12] = inet_checksum(hdr).to_bytes(2, "big")
    return hdr


def udp_packet(payload: bytes, *, ttl: int = 64, ident: int = 0x1234, src: IPv4Address = SRC,
               dst: IPv4Address = DST, frag: int = 0x4000, options: bytes = b"", partial: bool = False) -> bytearray:
    """A UDP/IPv4 packet with a complete checksum, or (``partial``) the pseudo-header sum as Linux leaves it."""
    length = 8 + len(payload)
    udp = bytearray(struct.pack("!HHHH", 40000, 8472, length, 0) + payload)
    pseudo = pseudo_header(src.packed, dst.packed, 17, length)
    value = word_sum(pseudo) if partial else (inet_checksum(pseudo + udp) or 0xFFFF)
    udp[6:8] = value.to_bytes(2, "big")
    return ipv4_header(length, 17, src=src, dst=dst, ttl=ttl, ident=ident, frag=frag, options=options) + udp


def tcp_packet(payload: bytes, *, seq: int = 1000, flags: int = TCP_ACK | TCP_PSH, ttl: int = 64, ident: int = 0x1234,
               src: IPv4Address = SRC, dst: IPv4Address = DST, tcp_options: bytes = b"",
               partial: bool = False) -> bytearray:
    """A TCP/IPv4 packet with a complete checksum, or (``partial``) the pseudo-header sum as Linux leaves it."""
    assert len(tcp_options) % 4 == 0
    doff = 5 + len(tcp_options) // 4
    tcp = bytearray(struct.pack("!HHIIBBHHH", 34567, 5201, seq, 777, doff << 4, flags, 501, 0, 0) + tcp_options
                    + payload)
    pseudo = pseudo_header(src.packed, dst.packed, 6, len(tcp))
    value = word_sum(pseudo) if partial else inet_checksum(pseudo + tcp)
    tcp[16:18] = value.to_bytes(2, "big")
    return ipv4_header(len(tcp), 6, src=src, dst=dst, ttl=ttl, ident=ident) + tcp


def icmp_echo(payload: bytes = b"ping" * 8, ttl: int = 64) -> bytearray:
    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 0x77, 1) + payload)
    icmp[2:4] = inet_checksum(icmp).to_bytes(2, "big")
    return ipv4_header(len(icmp), 1, ttl=ttl) + icmp


# -- ones_sum / checksum ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 2, 3, 19, 20, 21, 1499, 1500])
@pytest.mark.parametrize("fill", [0x00, 0xFF])
def test_ones_sum_of_constant_data_matches_the_word_loop(length: int, fill: int) -> None:
    data = bytes([fill]) * length
    assert ones_sum(data) == word_sum(data)
    assert checksum(data) == inet_checksum(data)


def test_ones_sum_of_all_zero_is_zero_and_of_all_ff_is_ffff() -> None:
    assert ones_sum(bytes(40)) == 0 and checksum(bytes(40)) == 0xFFFF
    assert ones_sum(b"\xff" * 40) == 0xFFFF and checksum(b"\xff" * 40) == 0
    assert ones_sum(b"\xff") == 0xFF00  # odd length: padded with a zero byte


def test_ones_sum_and_checksum_of_random_data_match_the_word_loop() -> None:
    rng = random.Random(20240611)
    for _ in range(600):
        data = rng.randbytes(rng.randrange(0, 300))
        seed = rng.randrange(0, 0x10000)
        assert ones_sum(data) == word_sum(data), data.hex()
        assert checksum(data) == inet_checksum(data), data.hex()
        assert checksum(data, seed) == inet_checksum(data, seed), (data.hex(), seed)
    big = rng.randbytes(65535)
    assert ones_sum(big) == word_sum(big)
    assert ones_sum(memoryview(big)[1:]) == word_sum(big[1:])
    assert ones_sum(bytearray(big[:777])) == word_sum(big[:777])


def test_ones_sum_of_words_summing_to_a_multiple_of_ffff_is_ffff_not_zero() -> None:
    for data in (b"\x00\x01\xff\xfe", b"\xff\xff\x00\x00", b"\x80\x00\x7f\xff", b"\xff\xfe\xff\xfe\x00\x02"):
        assert ones_sum(data) == word_sum(data) == 0xFFFF


def test_a_checksum_written_into_data_verifies() -> None:
    rng = random.Random(7)
    for _ in range(100):
        data = bytearray(rng.randbytes(2 * rng.randrange(2, 60)))
        data[2:4] = b"\0\0"
        data[2:4] = checksum(data).to_bytes(2, "big")
        assert word_sum(data) == 0xFFFF


# -- ip_header_ok -----------------------------------------------------------------------------------------------


def test_ip_header_ok_accepts_a_good_packet_and_one_with_options() -> None:
    pkt = udp_packet(b"hello")
    assert ip_header_ok(pkt, len(pkt))
    opt = udp_packet(b"hello", options=b"\x01\x01\x01\x00")  # NOP NOP NOP EOL
    assert opt[0] == 0x46 and ip_header_ok(opt, len(opt))
    assert ip_header_ok(memoryview(bytes(pkt) + b"trailing bytes not part of it"), len(pkt))


def _resum(pkt: bytearray) -> bytearray:
    ihl = (pkt[0] & 0x0F) * 4
    pkt[10:12] = b"\0\0"
    pkt[10:12] = inet_checksum(pkt[:ihl]).to_bytes(2, "big")
    return pkt


def test_ip_header_ok_rejects_version_6() -> None:
    pkt = udp_packet(b"hello")
    pkt[0] = 0x65
    assert not ip_header_ok(_resum(pkt), len(pkt))


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_ip_header_ok_rejects_an_ihl_below_5(ihl: int) -> None:
    pkt = udp_packet(b"hello world, and some more")
    pkt[0] = 0x40 | ihl
    pkt[10:12] = b"\0\0"
    pkt[10:12] = inet_checksum(pkt[:20]).to_bytes(2, "big")  # the 20 bytes still sum correctly: only IHL is bad
    assert not ip_header_ok(pkt, len(pkt))


def test_ip_header_ok_rejects_an_ihl_longer_than_the_packet() -> None:
    pkt = _resum(bytearray(udp_packet(b"")[:20]))
    pkt[0] = 0x4F  # 60-byte header in a 20-byte packet
    pkt[2:4] = (20).to_bytes(2, "big")
    assert not ip_header_ok(_resum(pkt), len(pkt))


def test_ip_header_ok_rejects_a_total_length_mismatch() -> None:
    pkt = udp_packet(b"hello world")
    assert not ip_header_ok(pkt, len(pkt) - 1)  # truncated
    longer = pkt + b"xx"
    assert not ip_header_ok(longer, len(longer))  # trailing bytes
    wrong = _resum(bytearray(pkt))
    wrong[2:4] = (len(pkt) + 4).to_bytes(2, "big")
    assert not ip_header_ok(_resum(wrong), len(wrong))


def test_ip_header_ok_rejects_a_bad_header_checksum() -> None:
    pkt = udp_packet(b"hello")
    pkt[11] ^= 0x01
    assert not ip_header_ok(pkt, len(pkt))
    pkt = udp_packet(b"hello")
    pkt[8] -= 1  # TTL changed without patching the checksum
    assert not ip_header_ok(pkt, len(pkt))


@pytest.mark.parametrize("length", [0, 1, 19])
def test_ip_header_ok_rejects_fewer_than_20_bytes(length: int) -> None:
    pkt = udp_packet(b"hello")
    assert not ip_header_ok(pkt[:length], length)


# -- decrement_ttl ----------------------------------------------------------------------------------------------


def random_header(rng: random.Random) -> bytearray:
    hdr = bytearray(rng.randbytes(20))
    hdr[0] = 0x45
    hdr[8] = rng.randrange(2, 256)
    hdr[10:12] = b"\0\0"
    hdr[10:12] = inet_checksum(hdr).to_bytes(2, "big")
    return hdr


def test_decrement_ttl_keeps_the_header_checksum_valid_over_many_random_headers() -> None:
    rng = random.Random(99)
    for _ in range(3000):
        hdr = random_header(rng)
        before = bytes(hdr)
        assert decrement_ttl(hdr)
        assert hdr[8] == before[8] - 1
        assert word_sum(hdr) == 0xFFFF, before.hex()
        assert hdr[:8] == before[:8] and hdr[9] == before[9] and hdr[12:] == before[12:]


def test_decrement_ttl_from_64_to_63() -> None:
    pkt = tcp_packet(b"data", ttl=64)
    assert decrement_ttl(pkt)
    assert pkt[8] == 63 and ip_checksum_ok(pkt) and ip_header_ok(pkt, len(pkt))
    assert pkt == tcp_packet(b"data", ttl=63)  # the same bytes as a header checksummed from scratch


def _header_with_checksum(field: int) -> bytearray:
    """A valid header whose checksum field is exactly ``field`` (the identification word is solved for)."""
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 84, 0, 0x4000, 64, 17, 0, SRC.packed, DST.packed))
    # Want word_sum(hdr with ident w and the field) == 0xFFFF, i.e. s + w + field ≡ 0 (mod 0xFFFF).
    s = word_sum(hdr)
    ident = (-(s + field)) % 0xFFFF
    hdr[4:6] = ident.to_bytes(2, "big")
    hdr[10:12] = field.to_bytes(2, "big")
    assert word_sum(hdr) == 0xFFFF
    return hdr


@pytest.mark.parametrize("field", [0x0000, 0xFFFF, 0xFEFF, 0xFF00, 0xFF01, 0xFF80, 0xFFFE, 0x00FF, 0x0100, 0x1234])
def test_decrement_ttl_handles_the_carry_edge_cases_of_the_incremental_update(field: int) -> None:
    hdr = _header_with_checksum(field)
    assert decrement_ttl(hdr)
    assert hdr[8] == 63 and word_sum(hdr) == 0xFFFF


@pytest.mark.parametrize("ttl", [0, 1])
def test_decrement_ttl_refuses_ttl_1_and_0_and_leaves_the_buffer_alone(ttl: int) -> None:
    pkt = udp_packet(b"x", ttl=ttl)
    before = bytes(pkt)
    assert decrement_ttl(pkt) is False
    assert pkt == before


def test_decrement_ttl_works_at_an_offset() -> None:
    rng = random.Random(5)
    for off in (1, 10, 12, 33):
        prefix, pkt = rng.randbytes(off), udp_packet(rng.randbytes(50), ttl=rng.randrange(2, 256))
        buf = bytearray(prefix) + pkt
        assert decrement_ttl(buf, off)
        assert buf[:off] == prefix
        assert buf[off + 8] == pkt[8] - 1 and ip_checksum_ok(buf, off)
        assert buf[off + 20:] == pkt[20:]
    expired = bytearray(b"\xf1" * 12) + udp_packet(b"x", ttl=1)
    before = bytes(expired)
    assert not decrement_ttl(expired, 12) and expired == before


# -- net_unreachable --------------------------------------------------------------------------------------------

TUN_ADDR = IPv4Address("10.244.1.0")


def check_net_unreachable(icmp: bytes, original: bytes | bytearray, src: IPv4Address) -> None:
    """Type 3 code 0, TTL 8, from ``src`` back to the original source, quoting header + 8 bytes, checksums valid."""
    ihl = (original[0] & 0x0F) * 4
    quoted = bytes(original[:ihl + 8])
    assert icmp[0] == 0x45
    assert int.from_bytes(icmp[2:4], "big") == len(icmp) == 20 + 8 + len(quoted)
    assert icmp[8] == 8 and icmp[9] == 1
    assert icmp[12:16] == src.packed and icmp[16:20] == bytes(original[12:16])
    assert ip_checksum_ok(icmp) and ip_header_ok(icmp, len(icmp))
    body = icmp[20:]
    assert (body[0], body[1]) == (3, 0)
    assert body[4:8] == bytes(4)
    assert body[8:] == quoted
    assert word_sum(body) == 0xFFFF


def test_net_unreachable_answers_a_udp_packet() -> None:
    pkt = udp_packet(b"A" * 100)
    icmp = net_unreachable(pkt, TUN_ADDR.packed)
    assert icmp is not None
    check_net_unreachable(icmp, pkt, TUN_ADDR)
    assert icmp[16:20] == SRC.packed


def test_net_unreachable_quotes_ip_options_too() -> None:
    pkt = tcp_packet(b"payload" * 10)
    opt = udp_packet(b"B" * 30, options=b"\x01\x01\x01\x00\x01\x01\x01\x00")
    for original in (pkt, opt, memoryview(bytes(opt))):
        icmp = net_unreachable(original, TUN_ADDR.packed)
        assert icmp is not None
        check_net_unreachable(icmp, bytes(original), TUN_ADDR)


def test_net_unreachable_is_none_for_icmp() -> None:
    assert net_unreachable(icmp_echo(), TUN_ADDR.packed) is None


def test_net_unreachable_is_none_for_a_non_first_fragment() -> None:
    assert net_unreachable(udp_packet(b"x" * 40, frag=185), TUN_ADDR.packed) is None  # offset 1480, no MF
    assert net_unreachable(udp_packet(b"x" * 40, frag=0x2000 | 1), TUN_ADDR.packed) is None  # MF, offset 8


def test_net_unreachable_answers_a_first_fragment_with_more_fragments_set() -> None:
    pkt = udp_packet(b"x" * 40, frag=0x2000)
    icmp = net_unreachable(pkt, TUN_ADDR.packed)
    assert icmp is not None
    check_net_unreachable(icmp, pkt, TUN_ADDR)


# -- complete_checksum ------------------------------------------------------------------------------------------


def test_complete_checksum_finishes_a_partial_tcp_checksum() -> None:
    rng = random.Random(11)
    for size in (0, 1, 2, 3, 100, 1447, 1448, 8000):
        payload = rng.randbytes(size)
        partial = tcp_packet(payload, partial=True)
        done = complete_checksum(partial, 20, 16)
        assert transport_checksum_ok(done)
        assert done == tcp_packet(payload)  # the same bytes as a checksum computed from scratch
        assert partial == tcp_packet(payload, partial=True)  # the input is not modified


def test_complete_checksum_finishes_a_partial_udp_checksum() -> None:
    rng = random.Random(12)
    for size in (0, 1, 7, 64, 1472):
        payload = rng.randbytes(size)
        done = complete_checksum(udp_packet(payload, partial=True), 20, 6)
        assert transport_checksum_ok(done)
        assert done == udp_packet(payload)


def _payload_making_the_sum_ffff(proto_packet: bytearray, field_at: int) -> bytearray:
    """Patch the last two payload bytes so that the finished checksum comes out as 0."""
    pkt = bytearray(proto_packet)
    pkt[-2:] = b"\0\0"
    segment = pkt[20:]
    partial = int.from_bytes(segment[field_at:field_at + 2], "big")
    rest = bytearray(segment)
    rest[field_at:field_at + 2] = b"\0\0"
    s = word_sum(rest) + partial
    s = (s & 0xFFFF) + (s >> 16)
    pkt[-2:] = ((0xFFFF - s) % 0xFFFF).to_bytes(2, "big")
    full = bytearray(pkt[20:])
    assert word_sum(full) == 0xFFFF  # so the checksum of the segment, field included, is 0
    return pkt


def test_complete_checksum_writes_ffff_for_a_udp_checksum_of_zero() -> None:
    partial = _payload_making_the_sum_ffff(udp_packet(b"0123456789ab", partial=True), 6)
    done = complete_checksum(partial, 20, 6)
    assert done[26:28] == b"\xff\xff"  # 0 would mean "no checksum"
    assert transport_checksum_ok(done)


def test_complete_checksum_keeps_a_tcp_checksum_of_zero() -> None:
    partial = _payload_making_the_sum_ffff(tcp_packet(b"0123456789ab", partial=True), 16)
    done = complete_checksum(partial, 20, 16)
    assert done[36:38] == b"\0\0"
    assert transport_checksum_ok(done)


# -- segment_tcp4 -----------------------------------------------------------------------------------------------

TIMESTAMPS = b"\x01\x01\x08\x0a" + struct.pack("!II", 123456, 654321)


def check_segments(segments: list[bytes], original: bytes | bytearray, gso_size: int) -> None:
    """Everything the kernel's software GSO guarantees about the segments of ``original``."""
    ihl = (original[0] & 0x0F) * 4
    thl = (original[ihl + 12] >> 4) * 4
    payload = bytes(original[ihl + thl:])
    seq0 = int.from_bytes(original[ihl + 4:ihl + 8], "big")
    ident0 = int.from_bytes(original[4:6], "big")
    flags0 = original[ihl + 13]
    expected_count = max(1, -(-len(payload) // gso_size))
    assert len(segments) == expected_count
    joined = b""
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        chunk = seg[ihl + thl:]
        assert len(chunk) <= gso_size
        assert last or len(chunk) == gso_size
        assert int.from_bytes(seg[2:4], "big") == len(seg) == ihl + thl + len(chunk)
        assert int.from_bytes(seg[4:6], "big") == (ident0 + i) & 0xFFFF
        assert ip_checksum_ok(seg) and ip_header_ok(seg, len(seg))
        assert transport_checksum_ok(seg)
        assert int.from_bytes(seg[ihl + 4:ihl + 8], "big") == (seq0 + len(joined)) & 0xFFFFFFFF
        expect_flags = flags0
        if not last:
            expect_flags &= ~(TCP_FIN | TCP_PSH)
        if i:
            expect_flags &= ~TCP_CWR
        assert seg[ihl + 13] == expect_flags, (i, seg[ihl + 13])
        # Everything else in the headers is copied: addresses, TTL, DF, ports, ack, window, options.
        assert seg[:2] == original[:2] and seg[6:10] == original[6:10] and seg[12:ihl] == original[12:ihl]
        assert seg[ihl:ihl + 4] == original[ihl:ihl + 4] and seg[ihl + 8:ihl + 13] == original[ihl + 8:ihl + 13]
        assert seg[ihl + 14:ihl + 16] == original[ihl + 14:ihl + 16]
        assert seg[ihl + 18:ihl + thl] == original[ihl + 18:ihl + thl]
        joined += chunk
    assert joined == payload


def super_packet(size: int, *, seq: int = 0xFFFFF000, ident: int = 0xFFFE, flags: int = TCP_ACK | TCP_PSH | TCP_FIN
                 | TCP_CWR, tcp_options: bytes = TIMESTAMPS, seed: int = 1) -> bytearray:
    """A TSO super-packet as the TUN hands it over: full-length IP header, partial TCP checksum."""
    payload = random.Random(seed).randbytes(size)
    return tcp_packet(payload, seq=seq, ident=ident, flags=flags, tcp_options=tcp_options, partial=True)


def test_segment_tcp4_cuts_a_10000_byte_super_packet_into_7_mss_segments() -> None:
    pkt = super_packet(10000)
    segments = segment_tcp4(pkt, 1448)
    assert [len(s) - 52 for s in segments] == [1448] * 6 + [10000 - 6 * 1448]
    check_segments(segments, pkt, 1448)
    # The sequence numbers wrap past 2**32 and the IP IDs past 0xFFFF along the way.
    assert int.from_bytes(segments[-1][24:28], "big") == (0xFFFFF000 + 6 * 1448) & 0xFFFFFFFF
    assert [int.from_bytes(s[4:6], "big") for s in segments] == [0xFFFE, 0xFFFF, 0, 1, 2, 3, 4]
    assert segments[0][33] & TCP_CWR and not segments[0][33] & (TCP_FIN | TCP_PSH)
    assert segments[-1][33] & (TCP_FIN | TCP_PSH) == TCP_FIN | TCP_PSH and not segments[-1][33] & TCP_CWR


def test_segment_tcp4_without_tcp_options() -> None:
    pkt = super_packet(5000, tcp_options=b"", seq=1, ident=7, flags=TCP_ACK)
    segments = segment_tcp4(pkt, 1460)
    assert len(segments) == 4
    check_segments(segments, pkt, 1460)


def test_segment_tcp4_with_a_payload_an_exact_multiple_of_gso_size() -> None:
    pkt = super_packet(3 * 1448)
    segments = segment_tcp4(pkt, 1448)
    assert [len(s) - 52 for s in segments] == [1448, 1448, 1448]
    check_segments(segments, pkt, 1448)


def test_segment_tcp4_with_a_payload_smaller_than_gso_size_gives_one_complete_packet() -> None:
    pkt = super_packet(500)
    segments = segment_tcp4(pkt, 1448)
    assert len(segments) == 1
    check_segments(segments, pkt, 1448)
    payload = random.Random(1).randbytes(500)
    expected = tcp_packet(payload, seq=0xFFFFF000, ident=0xFFFE, flags=TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR,
                          tcp_options=TIMESTAMPS)
    assert segments[0] == expected  # exactly the packet with its checksum finished


def test_segment_tcp4_with_no_payload_gives_the_header_alone() -> None:
    pkt = super_packet(0, flags=TCP_ACK | TCP_FIN)
    segments = segment_tcp4(pkt, 1448)
    assert len(segments) == 1
    check_segments(segments, pkt, 1448)


def test_segment_tcp4_ignores_bytes_after_the_ip_total_length() -> None:
    pkt = super_packet(3000)
    segments = segment_tcp4(bytes(pkt) + b"padding", 1000)
    check_segments(segments, pkt, 1000)


# -- offload header ---------------------------------------------------------------------------------------------

HOST_VNET = struct.Struct("=BBHHHH")
"""``struct virtio_net_hdr`` in host byte order (written out here, not taken from the module)."""


@pytest.mark.parametrize(
    "fields",
    [
        (F_NEEDS_CSUM, GSO_TCPV4, 52, 1448, 20, 16),
        (F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6),
        (0, GSO_NONE, 0, 0, 0, 0),
        (F_NEEDS_CSUM, GSO_TCPV4, 0x1234, 0xABCD, 0x0102, 16),
    ],
)
def test_offload_header_is_the_vnet_header_in_network_order_and_round_trips(
        fields: tuple[int, int, int, int, int, int]) -> None:
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = fields
    vnet = HOST_VNET.pack(*fields)
    wire = offload_header(vnet)
    assert wire == bytes([OFFLOAD_MAGIC, flags, gso_type, 0]) + struct.pack("!HHHH", hdr_len, gso_size, csum_start,
                                                                              csum_offset)
    assert wire[0] >> 4 == 15  # never an IPv4 version nibble
    assert vnet_from_offload(wire + bytes(0x10000), 0x10000) == vnet
    assert vnet_from_offload(memoryview(wire), 0x10000) == vnet


def _wire(flags: int, gso_type: int, gso_size: int = 1448, csum_start: int = 20, csum_offset: int = 16) -> bytes:
    return struct.pack("!BBBxHHHH", OFFLOAD_MAGIC, flags, gso_type, 52, gso_size, csum_start, csum_offset)


@pytest.mark.parametrize(
    ("wire", "inner_len"),
    [
        (_wire(F_NEEDS_CSUM, 2), 10052),  # GSO_UDP
        (_wire(F_NEEDS_CSUM, 3), 10052),  # GSO_TCPV6
        (_wire(F_NEEDS_CSUM, 4), 10052),  # GSO_UDP_L4
        (_wire(F_NEEDS_CSUM, GSO_TCPV4 | 0x80), 10052),  # GSO_ECN
        (_wire(F_NEEDS_CSUM | 2, GSO_TCPV4), 10052),  # DATA_VALID as well
        (_wire(2, GSO_NONE, 0), 10052),  # DATA_VALID alone
        (_wire(0x80, GSO_NONE, 0), 10052),
        (_wire(0, GSO_TCPV4), 10052),  # a super-packet without NEEDS_CSUM
        (_wire(F_NEEDS_CSUM, GSO_TCPV4, gso_size=0), 10052),
        (_wire(F_NEEDS_CSUM, GSO_TCPV4), 35),  # csum field at 36..37 past the end
        (_wire(F_NEEDS_CSUM, GSO_NONE, 0, csum_start=20, csum_offset=6), 27),
        (_wire(F_NEEDS_CSUM, GSO_NONE, 0, csum_start=0xFFFF, csum_offset=0xFFFF), 65000),
    ],
)
def test_vnet_from_offload_rejects_what_this_forwarder_never_sends(wire: bytes, inner_len: int) -> None:
    assert vnet_from_offload(wire, inner_len) is None


def test_vnet_from_offload_accepts_a_csum_field_ending_exactly_at_the_end() -> None:
    assert vnet_from_offload(_wire(F_NEEDS_CSUM, GSO_TCPV4), 38) == HOST_VNET.pack(F_NEEDS_CSUM, GSO_TCPV4, 52, 1448,
                                                                                  20, 16)
    assert vnet_from_offload(_wire(0, GSO_NONE, 0, csum_start=60000, csum_offset=60000), 20) is not None
