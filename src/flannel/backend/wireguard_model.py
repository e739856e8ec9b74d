"""What a WireGuard device holds and what a change to it says, independent of how the device is reached.

The kernel (generic netlink) and ``wireguard-go`` (the UAPI text protocol) configure the same object: a
private key, a listen port and a set of peers, each with an endpoint, allowed IPs, an optional pre-shared key
and a keepalive. Both encoders turn a ``DeviceChange`` into their wire format and decode a device back into a
``DeviceState``, so the backend compares and repairs peers the same way over either path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flannel.secret import NO_SECRET_BYTES, Secret

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
Endpoint = tuple[Address, int]
"""A peer's UDP endpoint: address and port."""


def endpoint_text(ep: Endpoint | None) -> str:
    """``1.2.3.4:51820`` or ``[fd00::1]:51821``, as ``wg`` and the UAPI write it."""
    if ep is None:
        return "(none)"
    addr, port = ep
    return f"[{addr}]:{port}" if isinstance(addr, IPv6Address) else f"{addr}:{port}"


@dataclass(frozen=True)
class PeerSpec:
    """One peer as flannel wants it (or as the device reports it)."""

    public_key: bytes
    """The peer's 32-byte public key: its identity on the device."""
    endpoint: Endpoint | None
    """Where to send its packets."""
    allowed_ips: frozenset[Network]
    """The subnets routed to it (and accepted from it)."""
    psk: Secret[bytes] = field(default=NO_SECRET_BYTES)
    """Pre-shared key (empty: none)."""
    keepalive: int = 0
    """Persistent keepalive interval in seconds (0: off)."""

    def differs(self, other: PeerSpec) -> list[str]:
        """Names of the fields in which ``other`` (the device's view) is not what this one wants."""
        out = []
        if self.endpoint != other.endpoint:
            out.append(f"endpoint {endpoint_text(other.endpoint)}")
        if self.allowed_ips != other.allowed_ips:
            out.append("allowed-ips " + ",".join(sorted(str(n) for n in other.allowed_ips)))
        if _psk_bytes(self.psk) != _psk_bytes(other.psk):
            out.append("preshared-key")
        if self.keepalive != other.keepalive:
            out.append(f"persistent-keepalive {other.keepalive}")
        return out


def _psk_bytes(psk: Secret[bytes]) -> bytes:
    # All zeros is how both interfaces report "no pre-shared key".
    raw = psk.reveal()
    return b"" if raw == bytes(32) else raw


@dataclass(frozen=True)
class DeviceState:
    """A device as read back: its key, port and peers by public key."""

    private_key: Secret[bytes]
    """The device's private key (empty when none is set)."""
    listen_port: int
    """Its UDP port (0 when unset)."""
    peers: dict[bytes, PeerSpec]
    """Its peers by public key."""


@dataclass(frozen=True)
class DeviceChange:
    """One configuration request: optional key and port, peers to set, peers to remove."""

    private_key: Secret[bytes] | None = None
    """Set the private key (None: leave it)."""
    listen_port: int | None = None
    """Set the listen port (None: leave it)."""
    replace_peers: bool = False
    """Drop every peer not in ``peers`` first."""
    peers: tuple[PeerSpec, ...] = ()
    """Peers to create or update; their allowed IPs replace the existing ones."""
    remove: tuple[bytes, ...] = ()
    """Public keys of peers to remove."""

    @property
    def empty(self) -> bool:
        """Nothing to send."""
        return (self.private_key is None and self.listen_port is None and not self.replace_peers
                and not self.peers and not self.remove)
