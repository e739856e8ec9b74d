"""The two WireGuard control encodings: wireguard-go's UAPI text and the kernel's generic netlink messages.

The genetlink bytes are compared with layouts built here from ``include/uapi/linux/wireguard.h`` and
``linux/genetlink.h`` with nothing but ``struct``: this machine's kernel has no WireGuard, so these bytes are
all that can be checked of that path here.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path

import pytest

from flannel.backend.wireguard_genetlink import decode_device, encode_get_family, encode_set
from flannel.backend.wireguard_model import DeviceChange, PeerSpec
from flannel.backend.wireguard_uapi import UAPIClient, UAPIError, decode_get, parse_endpoint
from flannel.backend.wireguard_uapi import encode_set as uapi_set
from flannel.secret import Secret

K1, K2, PSK = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
PEER = PeerSpec(public_key=K2, endpoint=(IPv4Address("1.2.3.4"), 51820),
                allowed_ips=frozenset({ip_network("10.0.0.0/24")}), psk=Secret(PSK), keepalive=25)


def test_uapi_set_is_wireguard_gos_text() -> None:
    change = DeviceChange(private_key=Secret(K1), listen_port=51820, replace_peers=True, peers=(PEER,),
                          remove=(bytes([9]) * 32,))
    assert uapi_set(change).decode() == (
        f"set=1\nprivate_key={K1.hex()}\nlisten_port=51820\nreplace_peers=true\n"
        f"public_key={'09' * 32}\nremove=true\n"
        f"public_key={K2.hex()}\npreshared_key={PSK.hex()}\nendpoint=1.2.3.4:51820\n"
        "persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.0.0.0/24\n\n")


def test_uapi_get_is_decoded_with_every_peer_field() -> None:
    text = (f"private_key={K1.hex()}\nlisten_port=51820\npublic_key={K2.hex()}\npreshared_key={'00' * 32}\n"
            "protocol_version=1\nendpoint=[fd00::1]:51821\nlast_handshake_time_sec=0\ntx_bytes=0\nrx_bytes=0\n"
            "persistent_keepalive_interval=0\nallowed_ip=fd00:10:244:1::/64\nallowed_ip=10.244.1.0/24\n"
            f"public_key={'04' * 32}\npersistent_keepalive_interval=25\nerrno=0\n\n")
    state = decode_get(text)
    assert state.private_key == Secret(K1) and state.listen_port == 51820
    p = state.peers[K2]
    assert p.endpoint == (IPv6Address("fd00::1"), 51821) and p.keepalive == 0
    assert p.allowed_ips == {ip_network("fd00:10:244:1::/64"), ip_network("10.244.1.0/24")}
    assert state.peers[bytes([4]) * 32].endpoint is None and state.peers[bytes([4]) * 32].keepalive == 25
    # all-zero pre-shared key reads as "none"
    assert PeerSpec(K2, p.endpoint, p.allowed_ips).differs(p) == []


def test_endpoints_parse_both_families() -> None:
    assert parse_endpoint("198.18.0.1:51820") == (IPv4Address("198.18.0.1"), 51820)
    assert parse_endpoint("[2001:db8::1%eth0]:1") == (IPv6Address("2001:db8::1"), 1)


def _nla(atype: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, atype) + payload + b"\0" * (-length & 3)


def test_genetlink_set_device_bytes_follow_the_kernel_header() -> None:
    change = DeviceChange(private_key=Secret(K1), listen_port=51820, replace_peers=True, peers=(PEER,))
    [msg] = encode_set(family=0x1F, seq=7, ifname="flannel-wg", change=change)
    nested = 0x8000
    allowed = _nla(0 | nested, _nla(1, struct.pack("=H", socket.AF_INET)) + _nla(2, bytes([10, 0, 0, 0]))
                   + _nla(3, bytes([24])))
    sockaddr = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 51820) + bytes([1, 2, 3, 4]) + bytes(8)
    peer = _nla(0 | nested, _nla(1, K2) + _nla(2, PSK) + _nla(3, struct.pack("=I", 2)) + _nla(4, sockaddr)
                + _nla(5, struct.pack("=H", 25)) + _nla(9 | nested, allowed))
    attrs = (_nla(2, b"flannel-wg\0") + _nla(3, K1) + _nla(6, struct.pack("=H", 51820))
             + _nla(5, struct.pack("=I", 1)) + _nla(8 | nested, peer))
    body = struct.pack("=BBH", 1, 1, 0) + attrs  # WG_CMD_SET_DEVICE, WG_GENL_VERSION
    header = struct.pack("=IHHII", 16 + len(body), 0x1F, 0x1 | 0x4, 7, 0)  # NLM_F_REQUEST | NLM_F_ACK
    assert msg == header + body


def test_genetlink_removal_and_ipv6_endpoint() -> None:
    peer = PeerSpec(public_key=K2, endpoint=(IPv6Address("fd00::1"), 51821),
                    allowed_ips=frozenset({ip_network("fd00:10:244:1::/64")}))
    [msg] = encode_set(0x1F, 1, "wg0", DeviceChange(peers=(peer,), remove=(K1,)))
    assert _nla(0 | 0x8000, _nla(1, K1) + _nla(3, struct.pack("=I", 1))) in msg  # WGPEER_F_REMOVE_ME
    sockaddr6 = (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 51821, 0) + IPv6Address("fd00::1").packed
                 + bytes(4))
    assert _nla(4, sockaddr6) in msg and len(sockaddr6) == 28


def test_genetlink_splits_many_peers_over_messages() -> None:
    peers = tuple(PeerSpec((1000 + i).to_bytes(2, "big") * 16, None, frozenset()) for i in range(300))
    msgs = encode_set(0x1F, 1, "wg0", DeviceChange(private_key=Secret(K1), peers=peers))
    assert len(msgs) == 3
    assert [struct.unpack_from("=I", m, 8)[0] for m in msgs] == [1, 2, 3]  # one sequence number each
    assert K1 in msgs[0] and all(K1 not in m for m in msgs[1:])  # the key travels once


def test_genetlink_family_lookup_names_wireguard() -> None:
    msg = encode_get_family(5)
    assert struct.unpack_from("=IHHII", msg) == (len(msg), 0x10, 0x5, 5, 0)  # GENL_ID_CTRL, REQUEST|ACK
    assert msg[16:20] == struct.pack("=BBH", 3, 1, 0)  # CTRL_CMD_GETFAMILY
    assert msg[20:] == _nla(2, b"wireguard\0")


def test_genetlink_get_device_reply_is_decoded() -> None:
    sockaddr = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 51820) + bytes([1, 2, 3, 4]) + bytes(8)
    allowed = _nla(0x8000, _nla(1, struct.pack("=H", socket.AF_INET)) + _nla(2, bytes([10, 0, 0, 0]))
                   + _nla(3, bytes([24])))
    peer = _nla(0x8000, _nla(1, K2) + _nla(2, bytes(32)) + _nla(4, sockaddr) + _nla(5, struct.pack("=H", 25))
                + _nla(9 | 0x8000, allowed))
    first = _nla(1, struct.pack("=I", 3)) + _nla(3, K1) + _nla(6, struct.pack("=H", 51820)) + _nla(8 | 0x8000, peer)
    more = _nla(8 | 0x8000, _nla(0x8000, _nla(1, K2) + _nla(9 | 0x8000, _nla(0x8000, _nla(1, struct.pack(
        "=H", socket.AF_INET6)) + _nla(2, IPv6Address("fd00::").packed) + _nla(3, bytes([64]))))))
    state = decode_device([first, more])
    assert state.private_key == Secret(K1) and state.listen_port == 51820
    p = state.peers[K2]
    assert p.endpoint == (IPv4Address("1.2.3.4"), 51820) and p.keepalive == 25 and not p.psk
    assert p.allowed_ips == {ip_network("10.0.0.0/24"), ip_network("fd00::/64")}


def test_keys_never_show_in_repr_or_str() -> None:
    change = DeviceChange(private_key=Secret(K1), peers=(PEER,))
    for text in (repr(change), str(change), repr(PEER), f"{PEER}"):
        assert K1.hex() not in text and PSK.hex() not in text and "redacted" in text
        assert "AQEBAQEB" not in text and "AwMDAwMD" not in text  # base64 of K1 and of the PSK


def test_uapi_answer_split_over_writes_is_read_to_its_blank_line(tmp_path: Path) -> None:
    """wireguard-go keeps the connection open after answering: the end is the blank line, however it arrives."""
    path = tmp_path / "wg0.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            got.append(conn.recv(4096))
            conn.sendall(b"listen_port=51820\nerrno=0\n")
            time.sleep(0.05)
            conn.sendall(b"\n")
            conn.recv(1)  # stays open until the client hangs up, as wireguard-go does

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        state = UAPIClient("wg0", str(tmp_path), timeout=5).get()
    finally:
        thread.join(5)
        server.close()
    assert got == [b"get=1\n\n"] and state.listen_port == 51820 and not state.peers


def test_uapi_refusal_carries_the_errno(tmp_path: Path) -> None:
    path = tmp_path / "wg0.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"errno=-22\n\n")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with pytest.raises(UAPIError) as err:
            UAPIClient("wg0", str(tmp_path), timeout=5).set(DeviceChange(listen_port=1))
    finally:
        thread.join(5)
        server.close()
    assert err.value.errno == -22 and "refused" in str(err.value)


def test_uapi_without_a_daemon_is_an_error_naming_the_socket(tmp_path: Path) -> None:
    with pytest.raises(UAPIError, match=f"get on {tmp_path}/flannel-wg.sock"):
        UAPIClient("flannel-wg", str(tmp_path)).get()
