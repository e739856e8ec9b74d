"""In-kernel WireGuard over generic netlink: the ``wireguard`` family of ``include/uapi/linux/wireguard.h``.

Encoded by hand on ``flannel.netlink.wire`` (the project's own netlink packing) rather than with pyroute2,
whose import would add about 10 MiB of RSS to the daemon (docs/performance.md). The layout, from the kernel header:

* family ``wireguard`` (``WG_GENL_NAME``), version 1, resolved through ``nlctrl`` (``CTRL_CMD_GETFAMILY``);
* ``WG_CMD_SET_DEVICE`` (1) with ``WGDEVICE_A_IFNAME``, ``PRIVATE_KEY``, ``LISTEN_PORT`` (u16), ``FLAGS``
  (``REPLACE_PEERS``) and ``PEERS``: a nested array (each element's type is its index) of peers with
  ``PUBLIC_KEY``, ``PRESHARED_KEY``, ``FLAGS`` (``REMOVE_ME``, ``REPLACE_ALLOWEDIPS``), ``ENDPOINT`` (a
  ``struct sockaddr_in``/``sockaddr_in6``), ``PERSISTENT_KEEPALIVE_INTERVAL`` (u16) and ``ALLOWEDIPS`` (a
  nested array of ``FAMILY`` u16, ``IPADDR``, ``CIDR_MASK`` u8);
* ``WG_CMD_GET_DEVICE`` (0) as a dump, answered with the same attributes.

This machine's kernel has no WireGuard, so the path is tested here for its bytes (tests/unit, against layouts
derived from the header) and for its socket framing against the ``nlctrl`` family (tests/integration); it
runs wherever ``ip link add type wireguard`` works.
"""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import IPv4Address, IPv6Address, ip_network

from flannel.backend.wireguard_model import DeviceChange, DeviceState, Endpoint, Network, PeerSpec
from flannel.netlink import NetlinkError, wire
from flannel.netlink.consts import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from flannel.secret import NO_SECRET_BYTES, Secret

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLA_F_NESTED = 0x8000
WG_GENL_NAME = "wireguard"
WG_GENL_VERSION = 1
WG_CMD_GET_DEVICE = 0
WG_CMD_SET_DEVICE = 1
WGDEVICE_A_IFINDEX, WGDEVICE_A_IFNAME, WGDEVICE_A_PRIVATE_KEY, WGDEVICE_A_PUBLIC_KEY = 1, 2, 3, 4
WGDEVICE_A_FLAGS, WGDEVICE_A_LISTEN_PORT, WGDEVICE_A_FWMARK, WGDEVICE_A_PEERS = 5, 6, 7, 8
WGDEVICE_F_REPLACE_PEERS = 1
WGPEER_A_PUBLIC_KEY, WGPEER_A_PRESHARED_KEY, WGPEER_A_FLAGS, WGPEER_A_ENDPOINT = 1, 2, 3, 4
WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, WGPEER_A_ALLOWEDIPS = 5, 9
WGPEER_F_REMOVE_ME, WGPEER_F_REPLACE_ALLOWEDIPS = 1, 2
WGALLOWEDIP_A_FAMILY, WGALLOWEDIP_A_IPADDR, WGALLOWEDIP_A_CIDR_MASK = 1, 2, 3
PEERS_PER_MESSAGE = 128
"""Peers per ``SET_DEVICE`` message: ``wg`` also splits a large configuration over several messages."""
_GENL_HDR = struct.Struct("=BBH")


def genl_header(cmd: int, version: int) -> bytes:
    """``struct genlmsghdr``: command, version, reserved."""
    return _GENL_HDR.pack(cmd, version, 0)


def nest(atype: int, payload: bytes) -> bytes:
    """A nested attribute, flagged ``NLA_F_NESTED`` as the kernel's strict validation wants."""
    return wire.attr(atype | NLA_F_NESTED, payload)


def sockaddr(ep: Endpoint) -> bytes:
    """``struct sockaddr_in`` (16 bytes) or ``sockaddr_in6`` (28 bytes): family in host order, port big-endian."""
    addr, port = ep
    if isinstance(addr, IPv4Address):
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + addr.packed + bytes(8)
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + addr.packed + struct.pack("=I", 0)


def allowed_ip(index: int, net: Network) -> bytes:
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    body = (wire.attr(WGALLOWEDIP_A_FAMILY, struct.pack("=H", family))
            + wire.attr(WGALLOWEDIP_A_IPADDR, net.network_address.packed)
            + wire.attr_u8(WGALLOWEDIP_A_CIDR_MASK, net.prefixlen))
    return nest(index, body)


def peer_attr(index: int, peer: PeerSpec) -> bytes:
    """One element of ``WGDEVICE_A_PEERS`` creating or updating ``peer``."""
    body = wire.attr(WGPEER_A_PUBLIC_KEY, peer.public_key)
    body += wire.attr(WGPEER_A_PRESHARED_KEY, peer.psk.reveal() or bytes(32))
    body += wire.attr_u32(WGPEER_A_FLAGS, WGPEER_F_REPLACE_ALLOWEDIPS)
    if peer.endpoint is not None:
        body += wire.attr(WGPEER_A_ENDPOINT, sockaddr(peer.endpoint))
    body += wire.attr(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, struct.pack("=H", peer.keepalive))
    ips = sorted(peer.allowed_ips, key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    body += nest(WGPEER_A_ALLOWEDIPS, b"".join(allowed_ip(i, n) for i, n in enumerate(ips)))
    return nest(index, body)


def remove_attr(index: int, key: bytes) -> bytes:
    return nest(index, wire.attr(WGPEER_A_PUBLIC_KEY, key) + wire.attr_u32(WGPEER_A_FLAGS, WGPEER_F_REMOVE_ME))


def encode_set(family: int, seq: int, ifname: str, change: DeviceChange) -> list[bytes]:
    """The ``WG_CMD_SET_DEVICE`` messages for ``change`` (several when it has many peers); they hold keys in
    clear, so they are only ever written to the netlink socket."""
    head = wire.attr_str(WGDEVICE_A_IFNAME, ifname)
    first = head
    if change.private_key is not None:
        first += wire.attr(WGDEVICE_A_PRIVATE_KEY, change.private_key.reveal())
    if change.listen_port is not None:
        first += wire.attr(WGDEVICE_A_LISTEN_PORT, struct.pack("=H", change.listen_port))
    if change.replace_peers:
        first += wire.attr_u32(WGDEVICE_A_FLAGS, WGDEVICE_F_REPLACE_PEERS)
    elements = [remove_attr(i, k) for i, k in enumerate(change.remove)]
    elements += [peer_attr(len(change.remove) + i, p) for i, p in enumerate(change.peers)]
    chunks = [elements[i:i + PEERS_PER_MESSAGE] for i in range(0, len(elements), PEERS_PER_MESSAGE)] or [[]]
    out = []
    for n, chunk in enumerate(chunks):
        attrs = first if n == 0 else head
        if chunk:
            attrs += nest(WGDEVICE_A_PEERS, b"".join(chunk))
        body = genl_header(WG_CMD_SET_DEVICE, WG_GENL_VERSION) + attrs
        out.append(wire.message(family, NLM_F_REQUEST | NLM_F_ACK, seq + n, body))
    return out


def encode_get(family: int, seq: int, ifname: str) -> bytes:
    body = genl_header(WG_CMD_GET_DEVICE, WG_GENL_VERSION) + wire.attr_str(WGDEVICE_A_IFNAME, ifname)
    return wire.message(family, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def encode_get_family(seq: int, name: str = WG_GENL_NAME) -> bytes:
    body = genl_header(CTRL_CMD_GETFAMILY, 1) + wire.attr_str(CTRL_ATTR_FAMILY_NAME, name)
    return wire.message(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def _endpoint(raw: bytes) -> Endpoint | None:
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        return IPv4Address(raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        return IPv6Address(raw[8:24]), port
    return None


def decode_peer(payload: bytes) -> PeerSpec:
    a = wire.nested(payload)
    ips = []
    for element in wire.nested(a.get(WGPEER_A_ALLOWEDIPS, b"")).values():
        ip_attrs = wire.nested(element)
        addr = ip_attrs[WGALLOWEDIP_A_IPADDR]
        ips.append(ip_network((addr, ip_attrs[WGALLOWEDIP_A_CIDR_MASK][0]), strict=False))
    psk = a.get(WGPEER_A_PRESHARED_KEY, b"")
    keepalive = a.get(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL)
    return PeerSpec(public_key=a[WGPEER_A_PUBLIC_KEY],
                    endpoint=_endpoint(a[WGPEER_A_ENDPOINT]) if WGPEER_A_ENDPOINT in a else None,
                    allowed_ips=frozenset(ips), psk=Secret(psk) if psk.strip(b"\0") else NO_SECRET_BYTES,
                    keepalive=wire.u16(keepalive) if keepalive else 0)


def decode_device(bodies: list[bytes]) -> DeviceState:
    """A device from the attribute blocks (after the genl header) of a ``GET_DEVICE`` dump's messages; a
    device with many peers comes in several messages, each carrying some of them."""
    private, port = NO_SECRET_BYTES, 0
    peers: dict[bytes, PeerSpec] = {}
    for body in bodies:
        a = wire.nested(body)
        if WGDEVICE_A_PRIVATE_KEY in a:
            private = Secret(a[WGDEVICE_A_PRIVATE_KEY])
        if WGDEVICE_A_LISTEN_PORT in a:
            port = wire.u16(a[WGDEVICE_A_LISTEN_PORT])
        for element in wire.nested(a.get(WGDEVICE_A_PEERS, b"")).values():
            peer = decode_peer(element)
            old = peers.get(peer.public_key)
            if old is not None:  # a peer whose allowed IPs did not fit one message continues in the next
                peer = PeerSpec(peer.public_key, old.endpoint, old.allowed_ips | peer.allowed_ips, old.psk,
                                old.keepalive)
            peers[peer.public_key] = peer
    return DeviceState(private_key=private, listen_port=port, peers=peers)


class GenlClient:
    """A NETLINK_GENERIC socket bound to a family (``wireguard``); ``NetlinkError(ENOENT)`` without it."""

    def __init__(self, timeout: float = 2.0, name: str = WG_GENL_NAME) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
        self._sock.settimeout(timeout)
        self._sock.bind((0, 0))
        self._seq = 0
        try:
            op = f"resolve genl family {name}"
            replies = self._request([encode_get_family(self._next(), name)], op)
            fam = wire.nested(replies[0][4:]).get(CTRL_ATTR_FAMILY_ID) if replies else None
            if fam is None:
                raise NetlinkError(errno.ENOENT, op, "no family id")
            self.family = wire.u16(fam)
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def _next(self, count: int = 1) -> int:
        self._seq += count
        return self._seq - count + 1

    def _request(self, msgs: list[bytes], op: str) -> list[bytes]:
        """Send ``msgs`` and collect the bodies of their replies until every ACK (or the dump's end) arrives."""
        pending = len(msgs)
        self._sock.sendall(b"".join(msgs))
        bodies: list[bytes] = []
        while pending:
            try:
                data = self._sock.recv(1 << 18)
            except TimeoutError:
                raise NetlinkError(errno.ETIMEDOUT, op, "no answer from the kernel") from None
            for rtype, _flags, _seq, start, end in wire.iter_messages(data):
                if rtype == NLMSG_ERROR:
                    code = struct.unpack_from("=i", data, start)[0]
                    if code:
                        raise NetlinkError(-code, op)
                    pending -= 1
                elif rtype == NLMSG_DONE:
                    pending -= 1
                else:
                    bodies.append(data[start:end])
        return bodies

    def get(self, ifname: str) -> DeviceState:
        bodies = self._request([encode_get(self.family, self._next(), ifname)], f"wg show {ifname}")
        return decode_device([b[4:] for b in bodies])

    def set(self, ifname: str, change: DeviceChange) -> None:
        if change.empty:
            return
        msgs = encode_set(self.family, self._seq + 1, ifname, change)
        self._next(len(msgs))
        self._request(msgs, f"wg set {ifname}")
