"""What one remote lease needs on this node's WireGuard devices (spec §10.6, "Per remote lease").

A pure function of the lease and this node's settings, so that the endpoint and allowed-IPs rules, upstream's
subtlest part, are unit-tested without a device:

* ``separate``: the IPv4 device gets the peer at ``<PublicIP>:<Port>`` with the remote IPv4 subnet, the IPv6
  device at ``[<PublicIPv6>]:<V6 Port>`` with the remote IPv6 subnet;
* single-device modes: one peer with every subnet of the remote; its endpoint is the IPv4 one (``ipv4``), the
  IPv6 one (``ipv6``), or chosen by upstream's ``auto`` rules (``select_endpoint``);
* a ``Port`` of 0 or none (nodes older than v0.26.6) means our own listen port for that device.

A lease whose key is not a WireGuard key, or whose subnet is not a peer subnet of the network, raises
``LeaseDecodeError``: the caller skips that lease alone, with a warning naming it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from flannel.backend.route_plane import is_peer_subnet
from flannel.backend.wireguard_config import KEY_LEN, Mode
from flannel.backend.wireguard_model import Endpoint, Network, PeerSpec
from flannel.errors import LeaseDecodeError
from flannel.gojson import fold
from flannel.lease import Lease
from flannel.secret import NO_SECRET_BYTES, Secret

_PRIVATE_V4 = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16"))
_PRIVATE_V6 = IPv6Network("fc00::/7")


@dataclass(frozen=True)
class PeerRules:
    """This node's side of the rules: mode, ports, networks, own subnets and external addresses."""

    mode: Mode
    """Device layout."""
    port: int
    """``flannel-wg``'s listen port."""
    port_v6: int
    """``flannel-wg-v6``'s listen port (separate mode)."""
    network: IPv4Network | None
    """The IPv4 cluster network (None: IPv4 disabled)."""
    network_v6: IPv6Network | None
    """The IPv6 cluster network (None: IPv6 disabled)."""
    own: IPv4Network | None
    """Our IPv4 subnet."""
    own_v6: IPv6Network | None
    """Our IPv6 subnet."""
    ext_v4: IPv4Address | None
    """Our IPv4 external address (auto mode)."""
    ext_v6: IPv6Address | None
    """Our IPv6 external address (auto mode)."""
    psk: Secret[bytes] = NO_SECRET_BYTES
    """Pre-shared key for every peer."""
    keepalive: int = 0
    """Persistent keepalive in seconds."""


def is_private_v4(addr: IPv4Address) -> bool:
    """RFC 1918, as flannel's ``ip.IP4.IsPrivate``."""
    return any(addr in net for net in _PRIVATE_V4)


def select_endpoint(rules: PeerRules, v4: IPv4Address | None, v6: IPv6Address | None) -> int:
    """Upstream's ``auto`` choice between the remote's IPv4 (returns 4) and IPv6 (returns 6) addresses.

    ⚠ Beyond upstream: a remote without an IPv4 address (``0.0.0.0``, an IPv6-only node) is reached over IPv6;
    upstream would pick ``0.0.0.0``, a public address by its test, and send nowhere.
    """
    if v6 is None:
        return 4
    if v4 is None:
        return 6
    if not is_private_v4(v4) and rules.ext_v4 is not None:
        return 4
    if v6 not in _PRIVATE_V6 and rules.ext_v6 is not None and rules.ext_v6 not in _PRIVATE_V6:
        return 6
    return 4


def decode_key(text: object, field: str) -> bytes:
    """A public key from lease data; ``LeaseDecodeError`` naming the field when it is not one."""
    if not isinstance(text, str):
        raise LeaseDecodeError(f"{field}.PublicKey is missing or not a string: {text!r}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = b""
    if len(raw) != KEY_LEN:
        raise LeaseDecodeError(f"{field}.PublicKey {text[:60]!r} is not a base64 WireGuard key")
    return raw


def _data(lease: Lease, v6: bool) -> dict[str, Any] | None:
    text = lease.attrs.backend_v6_data if v6 else lease.attrs.backend_data
    if not text:
        return None
    return fold(lease.attrs.backend_json(v6), ["PublicKey", "Port"])


def _port(data: dict[str, Any] | None, local: int, field: str) -> int:
    value = (data or {}).get("Port")
    if value in (None, 0):
        return local  # nodes before v0.26.6 did not publish their port
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 65535:
        raise LeaseDecodeError(f"{field}.Port {value!r} is not a UDP port")
    return value


def _subnet(rules: PeerRules, subnet: Network | None, v6: bool) -> Network | None:
    cluster = rules.network_v6 if v6 else rules.network
    own = rules.own_v6 if v6 else rules.own
    if subnet is None or cluster is None or own is None:
        return None
    if not is_peer_subnet(subnet, cluster, own):
        raise LeaseDecodeError(f"subnet {subnet} is not a peer subnet of the network {cluster}")
    return subnet


def peers_for(rules: PeerRules, lease: Lease) -> tuple[PeerSpec | None, PeerSpec | None]:
    """The peer wanted on ``flannel-wg`` and on ``flannel-wg-v6`` (separate mode only) for ``lease``."""
    pub4 = lease.attrs.public_ip if int(lease.attrs.public_ip) else None
    pub6 = lease.attrs.public_ipv6
    sub4 = _subnet(rules, lease.subnet, False)
    sub6 = _subnet(rules, lease.ipv6_subnet, True)
    d4 = _data(lease, False) if sub4 is not None else None
    d6 = _data(lease, True) if sub6 is not None else None
    if rules.mode is Mode.SEPARATE:
        p4 = p6 = None
        if sub4 is not None and pub4 is not None and d4 is not None:
            p4 = _peer(rules, decode_key(d4.get("PublicKey"), "BackendData"),
                       (pub4, _port(d4, rules.port, "BackendData")), [sub4])
        if sub6 is not None and pub6 is not None and d6 is not None:
            p6 = _peer(rules, decode_key(d6.get("PublicKey"), "BackendV6Data"),
                       (pub6, _port(d6, rules.port_v6, "BackendV6Data")), [sub6])
        return p4, p6
    subnets = [s for s in (sub4, sub6) if s is not None]
    data, field = (d4, "BackendData") if d4 is not None else (d6, "BackendV6Data")
    if not subnets or data is None:
        return None, None
    key = decode_key(data.get("PublicKey"), field)
    if rules.mode is Mode.IPV4:
        family = 4
    elif rules.mode is Mode.IPV6:
        family = 6
    else:
        family = select_endpoint(rules, pub4, pub6)
    endpoint: Endpoint | None
    if family == 4:
        endpoint = (pub4, _port(d4, rules.port, "BackendData")) if pub4 is not None else None
    else:
        endpoint = (pub6, _port(d6, rules.port, "BackendV6Data")) if pub6 is not None else None
    if endpoint is None:
        raise LeaseDecodeError(f"no IPv{family} public address to reach it on (Mode {rules.mode.value})")
    return _peer(rules, key, endpoint, subnets), None


def _peer(rules: PeerRules, key: bytes, endpoint: Endpoint, subnets: list[Network]) -> PeerSpec:
    return PeerSpec(public_key=key, endpoint=endpoint, allowed_ips=frozenset(subnets), psk=rules.psk,
                    keepalive=rules.keepalive)
