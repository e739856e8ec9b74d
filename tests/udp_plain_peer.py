"""A minimal udp-backend peer that speaks only upstream's plain format, standing in for a Go flanneld.

Run inside a host namespace as ``python3 udp_plain_peer.py <own subnet> <bind ip> <port> <subnet>=<ip> ...``.
It does what upstream's C proxy does and nothing more: a TUN ``flannel0`` (no offloads) holding the whole
network route, one inner IPv4 packet per datagram, the TTL decremented. It takes every datagram it receives,
like upstream. The test gives it its peers on the command line and writes its lease into etcd itself, in
upstream's JSON. It exits on SIGTERM.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys

TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000


def decrement_ttl(pkt: bytearray) -> bool:
    if pkt[8] <= 1:
        return False
    pkt[8] -= 1
    pkt[10:12] = b"\0\0"
    s = sum(int.from_bytes(pkt[i:i + 2], "big") for i in range(0, (pkt[0] & 15) * 4, 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    pkt[10:12] = (~s & 0xFFFF).to_bytes(2, "big")
    return True


def main() -> None:
    own = ipaddress.ip_network(sys.argv[1])
    bind_ip, port = sys.argv[2], int(sys.argv[3])
    network = sys.argv[4]
    peers = {ipaddress.ip_network(k): v for k, v in (a.split("=") for a in sys.argv[5:])}
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", b"flannel%d", IFF_TUN | IFF_NO_PI))
    for cmd in (["ip", "link", "set", "flannel0", "mtu", "1472", "up"],
                ["ip", "addr", "add", f"{own.network_address}/32", "dev", "flannel0"],
                ["ip", "route", "add", network, "dev", "flannel0"]):
        subprocess.run(cmd, check=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind_ip, port))
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ, "tun")
    sel.register(sock, selectors.EVENT_READ, "udp")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data == "tun":
                pkt = bytearray(os.read(fd, 65536))
                dst = ipaddress.ip_address(bytes(pkt[16:20]))
                peer = next((ip for net, ip in peers.items() if dst in net), None)
                if peer is not None and decrement_ttl(pkt):
                    sock.sendto(pkt, (peer, port))
            else:
                data = bytearray(sock.recv(65536))
                if len(data) >= 20 and decrement_ttl(data):
                    os.write(fd, data)


if __name__ == "__main__":
    main()
