"""The udp backend's userspace forwarder: TUN ⇄ UDP, in the event loop, one burst of packets per wake-up.

Upstream's C proxy, with three changes that matter in production:

* a datagram is accepted only from the public IP of a known lease (upstream writes whatever arrives on port
  8285 into the TUN, so anyone who can reach the port can inject packets into the pod network);
* every datagram is checked before it reaches the TUN (runts and garbage are counted and dropped);
* towards peers that advertise it, segmentation super-packets travel whole (``udp_packet``): one system call
  per ~64 KiB instead of per packet.

Routing is longest-prefix over the peers' subnets (upstream takes the first entry that contains the address,
which is the same thing while subnets do not overlap). Both descriptors are drained in bursts of ``BURST``
so that a flood on one side cannot starve the other, nor the rest of the daemon.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from flannel.backend.udp_packet import (
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    IPV4_HEADER_MIN,
    MAX_UDP_PAYLOAD,
    OFFLOAD_HDR_LEN,
    OFFLOAD_MAGIC,
    VNET_HDR,
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
    complete_checksum,
    decrement_ttl,
    ip_header_ok,
    net_unreachable,
    offload_header,
    segment_tcp4,
    vnet_from_offload,
)
from flannel.backend.udp_tun import TunDevice
from flannel.metrics import UDP_DROPPED, UDP_PACKETS
from flannel.metrics import Counter as MetricFamily

log = logging.getLogger(__name__)

BURST = 64
"""Packets handled per descriptor per wake-up."""
BUFFER = 65536 + VNET_HDR_LEN
WARN_LIMIT = 256
"""Distinct failures warned about (per source address, per errno); beyond it they are only counted, so a flood
of spoofed sources cannot grow memory or the log."""
_TUN_GONE = frozenset({errno.EBADFD, errno.ENODEV, errno.EBADF})
"""The descriptor is dead: its device was deleted. (EIO only means the device is down: a reconcile brings it up,
and the descriptor stays good.)"""


@dataclass(frozen=True, slots=True)
class Peer:
    """Where one remote subnet is reached."""

    key: str
    """The lease key, for logs."""
    network: int
    """The subnet's network address as an integer."""
    prefixlen: int
    """The subnet's prefix length."""
    addr: tuple[str, int]
    """The peer's public IP and the (cluster-wide) UDP port."""
    offload: bool
    """Whether the peer accepts super-packets (its lease advertises the offload header)."""


class Tally(Counter[str]):
    """Counts by key, mirrored into a labelled Prometheus counter so that ``/metrics`` shows them."""

    def __init__(self, family: MetricFamily) -> None:
        super().__init__()
        self._family = family

    def __setitem__(self, key: str, value: int) -> None:
        self._family.labels(key).inc(value - self.get(key, 0))
        super().__setitem__(key, value)


class PeerTable:
    """Remote subnets to peers, and the source addresses datagrams may come from."""

    def __init__(self) -> None:
        self._by_len: dict[int, dict[int, Peer]] = {}
        self._lens: list[int] = []
        self._by_key: dict[str, Peer] = {}
        self._sources: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: str) -> Peer | None:
        return self._by_key.get(key)

    def set(self, peer: Peer) -> None:
        """Add or replace the peer of ``peer.key``."""
        self.remove(peer.key)
        self._by_key[peer.key] = peer
        self._by_len.setdefault(peer.prefixlen, {})[peer.network] = peer
        self._lens = sorted(self._by_len, reverse=True)
        self._sources[peer.addr[0]] += 1

    def remove(self, key: str) -> Peer | None:
        """Forget the peer of ``key``; returns it (None if unknown)."""
        peer = self._by_key.pop(key, None)
        if peer is None:
            return None
        by_net = self._by_len.get(peer.prefixlen, {})
        if by_net.get(peer.network) is peer:
            del by_net[peer.network]
        if not by_net:
            self._by_len.pop(peer.prefixlen, None)
            self._lens = sorted(self._by_len, reverse=True)
        self._sources[peer.addr[0]] -= 1
        if self._sources[peer.addr[0]] <= 0:
            del self._sources[peer.addr[0]]
        return peer

    def lookup(self, dst: int) -> Peer | None:
        """The peer whose subnet holds ``dst`` (longest prefix first)."""
        for plen in self._lens:
            peer = self._by_len[plen].get(dst & (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF)
            if peer is not None:
                return peer
        return None

    def is_source(self, ip: str) -> bool:
        return ip in self._sources


class Forwarder:
    """Moves packets between one TUN device and one UDP socket; counts every packet it drops, by reason."""

    def __init__(self, tun: TunDevice, sock: socket.socket, tun_addr: IPv4Address, table: PeerTable,
                 on_tun_lost: Callable[[OSError], None]) -> None:
        self.tun = tun
        self.sock = sock
        self.tun_addr = tun_addr.packed
        self.table = table
        self.on_tun_lost = on_tun_lost
        self.dropped = Tally(UDP_DROPPED)
        """Dropped packets by reason (``runt``, ``garbage``, ``unknown_source``, ``no_route``, ...)."""
        self.forwarded = Tally(UDP_PACKETS)
        """Packets forwarded, by direction (``tun_to_udp``, ``udp_to_tun``)."""
        self._tbuf = bytearray(BUFFER)
        self._tview = memoryview(self._tbuf)
        self._rbuf = bytearray(BUFFER)
        self._rview = memoryview(self._rbuf)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warned: set[str] = set()
        self.broken = False
        """The TUN descriptor failed for good (its device was deleted): reconcile must reopen it."""

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start forwarding from the loop's readers."""
        self._loop = loop
        loop.add_reader(self.tun.fd, self.from_tun)
        loop.add_reader(self.sock.fileno(), self.from_udp)

    def detach(self) -> None:
        if self._loop is not None:
            if self.tun.fd >= 0:
                self._loop.remove_reader(self.tun.fd)
            self._loop.remove_reader(self.sock.fileno())

    def reopen_tun(self, opener: Callable[[], TunDevice]) -> None:
        """Forward through a new TUN device: the old one's descriptor is closed first (which removes its device,
        if it still exists), so the new one gets the same name."""
        if self._loop is not None and self.tun.fd >= 0:
            self._loop.remove_reader(self.tun.fd)
        self.tun.close()
        self.tun = opener()
        self.broken = False
        if self._loop is not None:
            self._loop.add_reader(self.tun.fd, self.from_tun)

    # -- TUN → UDP -----------------------------------------------------------------------------------

    def from_tun(self) -> None:
        for _ in range(BURST):
            try:
                n = os.readv(self.tun.fd, [self._tbuf])
            except BlockingIOError:
                return
            except OSError as exc:
                self._tun_failed(exc)
                return
            self.forward_to_peer(n)

    def forward_to_peer(self, n: int) -> None:
        """Send the packet of ``n`` bytes just read from the TUN to the peer that owns its destination."""
        buf, view = self._tbuf, self._tview
        off = VNET_HDR_LEN if self.tun.offload else 0
        if n - off < IPV4_HEADER_MIN or buf[off] >> 4 != 4:
            self.dropped["tun_not_ipv4"] += 1
            return
        peer = self.table.lookup(int.from_bytes(buf[off + 16:off + 20], "big"))
        if peer is None:
            self.dropped["no_route"] += 1
            icmp = net_unreachable(view[off:n], self.tun_addr)
            if icmp is not None:
                self._write_tun([ZERO_VNET_HDR, icmp] if self.tun.offload else [icmp])
            return
        if not decrement_ttl(buf, off):
            self.dropped["ttl_expired"] += 1
            return
        if not off:
            self._send([view[:n]], peer)
            return
        flags, gso_type, _, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(buf)
        # Only super-packets travel with the offload header: a packet that fits the MTU is sent plain, because
        # 12 more bytes would make the kernel fragment it on the underlay.
        if gso_type != GSO_NONE and peer.offload and n - off + OFFLOAD_HDR_LEN <= MAX_UDP_PAYLOAD:
            self._send([offload_header(buf), view[off:n]], peer)
        elif gso_type == GSO_TCPV4:
            for segment in segment_tcp4(view[off:n], gso_size):
                self._send([segment], peer)
        elif gso_type != GSO_NONE:
            self.dropped["gso_unsupported"] += 1
        elif flags & F_NEEDS_CSUM:
            self._send([complete_checksum(view[off:n], csum_start, csum_offset)], peer)
        else:
            self._send([view[off:n]], peer)

    def _send(self, parts: list[bytes | bytearray | memoryview], peer: Peer) -> None:
        try:
            self.sock.sendmsg(parts, (), 0, peer.addr)
        except BlockingIOError:
            self.dropped["udp_send_full"] += 1
            return
        except OSError as exc:
            self.dropped["udp_send_error"] += 1
            self._warn_once(f"send:{exc.errno}", "sending to %s:%d (lease %s) failed: %s", *peer.addr, peer.key, exc)
            return
        self.forwarded["tun_to_udp"] += 1

    # -- UDP → TUN -----------------------------------------------------------------------------------

    def from_udp(self) -> None:
        for _ in range(BURST):
            try:
                n, src = self.sock.recvfrom_into(self._rbuf)
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. an ICMP error queued on the socket: not fatal
                self.dropped["udp_recv_error"] += 1
                self._warn_once(f"recv:{exc.errno}", "receiving on the udp socket failed: %s", exc)
                continue
            self.deliver(n, src[0])

    def deliver(self, n: int, source: str) -> None:
        """Check the datagram of ``n`` bytes just received from ``source`` and write its packet to the TUN."""
        if not self.table.is_source(source):
            self.dropped["unknown_source"] += 1
            if len(self._warned) < WARN_LIMIT:
                self._warn_once(f"source:{source}", "dropped a datagram from %s, which is no lease's public IP "
                                "(a peer behind NAT must publish the address its datagrams come from)", source)
            return
        buf, view = self._rbuf, self._rview
        if n < IPV4_HEADER_MIN:
            self.dropped["runt"] += 1
            return
        if buf[0] == OFFLOAD_MAGIC:
            inner = n - OFFLOAD_HDR_LEN
            if inner < IPV4_HEADER_MIN:
                self.dropped["runt"] += 1
                return
            vnet = vnet_from_offload(view, inner) if self.tun.offload else None
            if vnet is None or not ip_header_ok(view[OFFLOAD_HDR_LEN:n], inner):
                self.dropped["garbage"] += 1
                return
            if not decrement_ttl(buf, OFFLOAD_HDR_LEN):
                self.dropped["ttl_expired"] += 1
                return
            self._write_tun([vnet, view[OFFLOAD_HDR_LEN:n]], count=True)
            return
        if not ip_header_ok(view, n):
            self.dropped["garbage"] += 1
            return
        if not decrement_ttl(buf, 0):
            self.dropped["ttl_expired"] += 1
            return
        self._write_tun([ZERO_VNET_HDR, view[:n]] if self.tun.offload else [view[:n]], count=True)

    def _write_tun(self, parts: list[bytes | memoryview], count: bool = False) -> None:
        try:
            os.writev(self.tun.fd, parts)
        except BlockingIOError:
            self.dropped["tun_write_full"] += 1
            return
        except OSError as exc:
            if exc.errno in _TUN_GONE:
                self._tun_failed(exc)
                return
            self.dropped["tun_write_error"] += 1  # e.g. EINVAL: the kernel refused the offload metadata
            self._warn_once(f"tun:{exc.errno}", "writing to %s failed: %s", self.tun.name, exc)
            return
        if count:
            self.forwarded["udp_to_tun"] += 1

    def _tun_failed(self, exc: OSError) -> None:
        """The device is gone: stop polling it (a dead descriptor polls readable forever) and say so, once."""
        if self._loop is not None and self.tun.fd >= 0:
            self._loop.remove_reader(self.tun.fd)
        if not self.broken:
            self.broken = True
            self.on_tun_lost(exc)

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        """Per-packet failures would flood the log: warn on the first of each kind, count the rest."""
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg + " (further such failures are only counted)", *args)
