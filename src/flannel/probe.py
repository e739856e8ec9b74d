"""Probe the overlay: for each peer lease, is it reachable, how long does an echo take, and what is the largest
packet that crosses with "don't fragment" set (the path MTU as the overlay really delivers it).

The answer to "pod A cannot reach pod B" is usually one of three: the peer is not reachable over the overlay at
all (a route, neighbour or FDB entry is missing, a firewall drops the encapsulation), it is reachable but large
packets vanish (an underlay MTU smaller than flannel assumed, a blocked "fragmentation needed"), or it is fine.
One ICMP echo per peer answers the first, a binary search over echo sizes with DF set the second, as
``cilium-health`` does.

**What is pinged.** An address inside the peer's subnet that the peer itself holds, so the echo follows the
same routes, neighbours and FDB entries as pod traffic: every backend but host-gw puts the subnet's first
address (``10.244.3.0``, ``fd00:10:244:3::``) on its device (``flannel.1``, ``flannel-v6.1``, ``flannel.ipip``,
``flannel0``, ``flannel-wg``), so that is the target. host-gw puts nothing on the node: the target is the pod
bridge's gateway ``10.244.3.1`` (``<subnet>::1``) on ``cni0``, which the flannel CNI plugin creates with the
node's first pod. A node without pods yet has nothing there to answer, so when it stays silent the peer's public
IP is pinged (the host-gw route's gateway, over the same interface): when *that* answers, the result is
``no_target`` (the node is up, but the overlay cannot be proven until it has a pod), neither reachable nor
unreachable; when it is silent too, the peer is unreachable. Dual-stack clusters are probed in both families,
each peer once per family.

**Which socket.** A datagram ICMP socket (``SOCK_DGRAM``/``IPPROTO_ICMP``, "ping socket") first: the kernel
gives each its own echo identifier and delivers only its own replies, and an unprivileged user may open one
where ``net.ipv4.ping_group_range`` includes its group. A fresh network namespace (and many distributions) has
that range empty, so where it is refused we fall back to a raw ICMP socket, which needs ``CAP_NET_RAW``:
flanneld has it (it runs as root to program the kernel); ``flannelctl probe`` says so when it has neither.
Both sockets are connected to the target (a connected raw socket receives only packets from that address)
and replies are matched on identifier and sequence, so concurrent probes never take each other's answers.

**DF.** ``IP_MTU_DISCOVER=IP_PMTUDISC_PROBE`` sets DF on every echo and lets a send larger than the route's
MTU fail locally (``EMSGSIZE``) rather than fragment: that size does not cross. The search starts at the
route's MTU (``IP_MTU`` of the connected socket) and usually ends there with one echo. IPv6 is never fragmented
in transit, only by the sender: ``IPV6_DONTFRAG`` makes a send above the path MTU fail instead, and
``IPV6_MTU_DISCOVER=IPV6_PMTUDISC_PROBE`` measures against the route's MTU (``IPV6_MTU``) rather than a cached
path MTU.

**Bounded.** At most ``concurrency`` peers at once, each with its own socket; a missing reply costs a timeout
scaled to the peer's measured round trip (never more than ``timeout``), so 100 peers take seconds.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flannel.config import NetworkConfig
    from flannel.lease import Lease

IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_PROBE = getattr(socket, "IP_PMTUDISC_PROBE", 3)
IP_MTU = getattr(socket, "IP_MTU", 14)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
IPV6_PMTUDISC_PROBE = getattr(socket, "IPV6_PMTUDISC_PROBE", 3)
IPV6_MTU = getattr(socket, "IPV6_MTU", 24)
IPV6_DONTFRAG = getattr(socket, "IPV6_DONTFRAG", 62)
HEADERS = 28
"""IPv4 header (20) and ICMP echo header (8): the packet size is the payload plus these."""
HEADERS_V6 = 48
"""IPv6 header (40) and ICMPv6 echo header (8)."""
SMALL = 84
"""The size of the reachability echo: ping's default (56 bytes of payload)."""
SMALL_V6 = 104
"""The same 56 bytes of payload over IPv6."""
MIN_SIZE = 68
"""The smallest MTU IPv4 allows (RFC 791)."""
MIN_SIZE_V6 = 1280
"""The smallest MTU IPv6 allows (RFC 8200): every IPv6 path carries it."""
ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
MAX_SIZE = 65535
ATTEMPTS = 3
"""Echoes sent before a peer counts as unreachable."""
DEFAULT_TIMEOUT = 1.0
DEFAULT_CONCURRENCY = 64


def lease_targets(config: NetworkConfig, lease: Lease) -> list[Target]:
    """A peer lease's probe targets in the families the network config enables."""
    a = lease.attrs
    public = a.public_ip if int(a.public_ip) else None
    return targets_for(lease.key, lease.subnet if config.enable_ipv4 else None,
                       lease.ipv6_subnet if config.enable_ipv6 else None, public, a.public_ipv6, config.backend_type)


class ProbeUnavailable(Exception):
    """No ICMP socket can be opened here; ``str()`` says what it takes."""


Address = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Target:
    """One peer to probe, in one family."""

    peer: str
    """The peer's lease key, e.g. ``10.244.3.0-24``: the ``peer`` label of the probe metrics."""
    address: Address
    """What is pinged (see the module docstring)."""
    fallback: Address | None = None
    """host-gw: the peer's public IP, pinged when ``address`` is silent, to tell "no target" from "unreachable"."""

    @property
    def family(self) -> int:
        """4 or 6."""
        return self.address.version


@dataclass(frozen=True)
class ProbeResult:
    """What one probe of one peer found."""

    peer: str
    """The lease key of the peer."""
    address: str
    """The address pinged."""
    reachable: bool
    """An echo reply came back."""
    rtt_seconds: float | None
    """Round trip of the first reply; None when unreachable."""
    path_mtu_bytes: int | None
    """The largest IPv4 packet (headers included) that crossed with DF set; None when unreachable."""
    error: str = ""
    """Why it is unreachable, when the kernel said (``no route to host``) or ``no reply``."""
    at: float = 0.0
    """Unix time the probe ended."""
    no_target: bool = False
    """host-gw: nothing answered in the subnet, but the peer's public IP did (module docstring)."""
    family: int = 4
    """4 or 6."""
    route_mtu_bytes: int | None = None
    """The MTU of the route to the target (what this node sends at most): where the path carries less, full-size
    packets are lost."""

    @property
    def state(self) -> str:
        """``ok``, ``unreachable`` or ``no_target``."""
        return "ok" if self.reachable else "no_target" if self.no_target else "unreachable"

    def as_json(self) -> dict[str, Any]:
        return {"peer": self.peer, "address": self.address, "reachable": self.reachable,
                "rtt_seconds": self.rtt_seconds, "path_mtu_bytes": self.path_mtu_bytes, "error": self.error or None,
                "state": self.state, "family": f"ipv{self.family}", "route_mtu_bytes": self.route_mtu_bytes}


def target_address(subnet: IPv4Network | IPv6Network, backend_type: str) -> Address:
    """The address in a peer's subnet that the peer answers on, for a backend (module docstring)."""
    if backend_type.lower() == "host-gw":
        return subnet.network_address + 1
    return subnet.network_address


def targets_for(peer: str, subnet: IPv4Network | None, ipv6_subnet: IPv6Network | None, public_ip: Address | None,
                public_ipv6: Address | None, backend_type: str) -> list[Target]:
    """The peer's targets: one per family it has a subnet in (with host-gw's public-IP fallback)."""
    hostgw = backend_type.lower() == "host-gw"
    out = []
    for net, public in ((subnet, public_ip), (ipv6_subnet, public_ipv6)):
        if net is not None:
            out.append(Target(peer, target_address(net, backend_type), public if hostgw else None))
    return out


async def largest_passing(lo: int, hi: int, passes: Callable[[int], Awaitable[bool]]) -> int:
    """The largest size in ``[lo, hi]`` for which ``passes`` holds, given that ``lo`` passes.

    ``hi`` is tried first (the common answer: the path carries what the route's MTU promises), then a binary
    search: about ``log2(hi - lo)`` calls when it does not.
    """
    if hi <= lo or await passes(hi):
        return max(lo, hi)
    good, bad = lo, hi
    while bad - good > 1:
        mid = (good + bad) // 2
        if await passes(mid):
            good = mid
        else:
            bad = mid
    return good


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, size: int, family: int = 4) -> bytes:
    """An ICMP (ICMPv6) echo request whose IP packet is ``size`` bytes long.

    ICMPv6's checksum covers a pseudo-header with both addresses; the kernel computes it on every ICMPv6
    socket (RFC 3542 §3.1), so it is left zero here.
    """
    payload = bytes((i & 0xFF) for i in range(max(size - (HEADERS if family == 4 else HEADERS_V6), 0)))
    head = struct.pack("!BBHHH", ECHO_REQUEST[family], 0, 0, ident, seq)
    csum = _checksum(head + payload) if family == 4 else 0
    return struct.pack("!BBHHH", ECHO_REQUEST[family], 0, csum, ident, seq) + payload


def parse_reply(data: bytes, raw: bool, family: int = 4) -> tuple[int, int] | None:
    """``(ident, seq)`` of an echo reply (raw IPv4 sockets deliver the IP header too, raw ICMPv6 ones do not),
    or None for anything else."""
    if raw and family == 4:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < 8 or data[0] != ECHO_REPLY[family]:
        return None
    _, _, _, ident, seq = struct.unpack("!BBHHH", data[:8])
    return ident, seq


def open_socket(address: Address) -> tuple[socket.socket, bool]:
    """A non-blocking ICMP (ICMPv6) socket connected to ``address`` with DF on, and whether it is raw."""
    v6 = address.version == 6
    af, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    sock: socket.socket | None = None
    raw = False
    try:
        sock = socket.socket(af, socket.SOCK_DGRAM, proto)
    except PermissionError:
        try:
            sock = socket.socket(af, socket.SOCK_RAW, proto)
            raw = True
        except PermissionError:
            raise ProbeUnavailable(
                "cannot open an ICMP socket: run as root (CAP_NET_RAW), or allow ping sockets for your group "
                "(sysctl net.ipv4.ping_group_range)") from None
    try:
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        sock.setblocking(False)
        sock.connect((str(address), 0))
    except OSError:
        sock.close()
        raise
    return sock, raw


class _Pinger:
    """Echoes to one target over one socket."""

    def __init__(self, sock: socket.socket, raw: bool, family: int = 4) -> None:
        self.sock = sock
        self.raw = raw
        self.family = family
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.seq = 0
        self.error = ""

    async def echo(self, size: int, timeout: float) -> float | None:
        """The round trip of one echo of ``size`` bytes, or None (no reply in time, too big to send)."""
        loop = asyncio.get_running_loop()
        self.seq = (self.seq + 1) & 0xFFFF
        packet = echo_request(self.ident, self.seq, size, self.family)
        start = time.monotonic()
        try:
            await loop.sock_sendall(self.sock, packet)
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:
                self.error = exc.strerror or str(exc)
            return None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    data = await loop.sock_recv(self.sock, MAX_SIZE)
                    reply = parse_reply(data, self.raw, self.family)
                    # A ping socket's kernel replaces the identifier with its own: match on seq alone there.
                    if reply is not None and reply[1] == self.seq and (not self.raw or reply[0] == self.ident):
                        return time.monotonic() - start
        except TimeoutError:
            self.error = "no reply"
        except OSError as exc:  # an ICMP error reported on the connected socket: no route, host unreachable
            self.error = exc.strerror or str(exc)
        return None


async def _first_echo(pinger: _Pinger, timeout: float) -> float | None:
    """The round trip of the first of ``ATTEMPTS`` small echoes answered, or None."""
    small = SMALL if pinger.family == 4 else SMALL_V6
    for _ in range(ATTEMPTS):
        rtt = await pinger.echo(small, timeout)
        if rtt is not None:
            return rtt
    return None


async def _answers(address: Address, timeout: float) -> bool:
    """Whether ``address`` answers an echo (host-gw's fallback)."""
    try:
        sock, raw = open_socket(address)
    except OSError:
        return False
    try:
        return await _first_echo(_Pinger(sock, raw, address.version), timeout) is not None
    finally:
        sock.close()


async def probe_one(target: Target, timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    """Reachability, RTT and DF path MTU of one peer (``ProbeUnavailable`` when no ICMP socket can be had)."""
    fam = target.family
    where = str(target.address)
    try:
        sock, raw = open_socket(target.address)
    except OSError as exc:
        return ProbeResult(target.peer, where, False, None, None, exc.strerror or str(exc), time.time(), family=fam)
    try:
        pinger = _Pinger(sock, raw, fam)
        rtt = await _first_echo(pinger, timeout)
        if rtt is None:
            error = pinger.error or "no reply"
            if target.fallback is not None and await _answers(target.fallback, timeout):
                return ProbeResult(target.peer, where, False, None, None,
                                   f"{error} from {where}, but the public IP {target.fallback} answers: the node "
                                   "has no pod bridge (cni0) yet, nothing in its subnet to probe", time.time(),
                                   no_target=True, family=fam)
            return ProbeResult(target.peer, where, False, None, None, error, time.time(), family=fam)
        try:
            route_mtu = sock.getsockopt(*((socket.IPPROTO_IP, IP_MTU) if fam == 4 else (socket.IPPROTO_IPV6,
                                                                                          IPV6_MTU)))
        except OSError:
            route_mtu = 1500
        step_timeout = min(timeout, max(0.2, 4 * rtt))

        async def passes(size: int) -> bool:
            return await pinger.echo(size, step_timeout) is not None

        small = SMALL if fam == 4 else SMALL_V6
        mtu = await largest_passing(small, min(max(route_mtu, small), MAX_SIZE), passes)
        return ProbeResult(target.peer, where, True, rtt, mtu, "", time.time(), family=fam,
                           route_mtu_bytes=route_mtu)
    finally:
        sock.close()


async def probe_all(targets: Iterable[Target], timeout: float = DEFAULT_TIMEOUT,
                    concurrency: int = DEFAULT_CONCURRENCY) -> list[ProbeResult]:
    """Probe every target, at most ``concurrency`` at once; results in the order of ``targets``.

    ``ProbeUnavailable`` is raised before anything is sent when this process cannot open an ICMP socket.
    """
    todo = list(targets)
    if not todo:
        return []
    try:  # fail once, clearly, rather than once per peer
        open_socket(todo[0].address)[0].close()
    except ProbeUnavailable:
        raise
    except OSError:
        pass  # that peer's own trouble: its probe reports it
    gate = asyncio.Semaphore(concurrency)

    async def bounded(t: Target) -> ProbeResult:
        async with gate:
            return await probe_one(t, timeout)

    return list(await asyncio.gather(*(bounded(t) for t in todo)))
