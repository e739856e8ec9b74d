"""What the vxlan plane wants for one remote lease (``PeerEntries``), held as numbers (issue #16).

Apart from ``vxlan_plane.py`` so that the plane's module stays about its logic: the record, and the view of
the tunnel destinations that the route reconciler asks about.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network


@dataclass(frozen=True, slots=True)
class PeerEntries:
    """The kernel entries one remote lease needs on one family's device.

    Addresses are numbers (32 bits for IPv4, 128 for IPv6; the plane knows the family) and the MAC a 48-bit
    number: the very numbers the lease holds, so that a peer costs this record and its MAC's number, where the
    lease's network and address objects and a MAC text were 330 bytes (issue #16). The plane builds text for
    logs and messages only, and gives the numbers to the netlink operations as they are (IPv4).
    """

    dst: int
    """The remote subnet's network address."""
    prefixlen: int
    """The remote subnet's prefix length."""
    gateway: int
    """Next hop: the remote subnet's network address (tunnel) or the remote public IP (direct)."""
    direct: bool
    """DirectRouting: a plain underlay route, no neighbour or FDB entry."""
    mac: int = 0
    """The remote VTEP MAC (tunnel only)."""
    public_ip: int = 0
    """The remote public IP, the FDB destination (tunnel only)."""


class TunnelDestinations:
    """The destinations of the tunnel entries in ``desired``, for ``route_drift``'s ``claimed``: a set of numbers
    made only if the reconciler asks (it asks about our underlay routes alone, which only DirectRouting makes),
    rather than a network object per peer and round."""

    def __init__(self, desired: dict[str, PeerEntries]) -> None:
        self._desired = desired
        self._keys: set[int] | None = None

    def __contains__(self, net: object) -> bool:
        if not isinstance(net, IPv4Network | IPv6Network):
            return False
        if self._keys is None:
            self._keys = {e.dst << 8 | e.prefixlen for e in self._desired.values() if not e.direct}
        return int(net.network_address) << 8 | net.prefixlen in self._keys
