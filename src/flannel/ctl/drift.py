"""Drift on this node: kernel entries a remote lease needs and that are missing, and flannel's entries that
belong to no lease, for the vxlan, host-gw, ipip, udp and wireguard backends (wireguard's peers are read in
``drift_wireguard``).

Nothing here decides on its own what the kernel should hold. The leases go through the same ``LeaseTracker``
and ``LeaseGuard`` flanneld runs (so a lease the node refuses is not "missing"), each admitted lease through
the backend's own plane (``VXLANPlane.entries_for``, ``RoutePlane.route_for``), and the comparison is the
backend's reconcile (``VXLANPlane.drift_ops``, ``route_plane.route_drift``), whose repair operations are only
described, never applied: ``flannelctl`` reads the kernel and changes nothing.

ipip routes each peer through ``flannel.ipip`` (``IPIPRoutePlane``: ``via <public IP> dev flannel.ipip onlink``,
or the external interface under DirectRouting), compared by the same ``route_drift``. udp keeps its per-peer
table in flanneld's memory, out of the kernel's sight; what the kernel holds is ``flannel0`` with its /32
address and the one route of the whole ``Network`` through it, and that is what is compared.

Reading routes, neighbours and FDB entries over netlink needs no privilege, so this runs without root.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING

from flannel.config import NetworkConfig
from flannel.errors import ConfigError, LeaseDecodeError
from flannel.lease import EventType, Lease
from flannel.netlink import Netlink, NetlinkError
from flannel.subnet.lease_guard import LeaseGuard
from flannel.subnet.lease_tracker import LeaseTracker
from flannel.subnet.manager import WatchResult

if TYPE_CHECKING:
    from flannel.backend.route_network import RoutePlane
    from flannel.backend.route_plane import PeerRoute

SUPPORTED = ("vxlan", "host-gw", "ipip", "udp", "wireguard")
Network = IPv4Network | IPv6Network


@dataclass(frozen=True)
class Drift:
    """One difference between the kernel and the leases."""

    what: str
    """The backend's reason, e.g. ``route to 10.244.3.0/24 missing`` or ``stale fdb entry 0a:58:...``."""
    fix: str
    """The kernel operation flanneld's reconcile would apply, as an ``ip``-style line."""


def command(describe: str) -> str:
    """The shell command for an operation's description: ``bridge fdb ...`` or ``ip route ...``."""
    return f"{'bridge' if describe.startswith('fdb ') else 'ip'} {describe}"


class DriftUnchecked(Exception):
    """The comparison could not be made (the device is missing, netlink refused); ``str()`` says why."""


def admitted(config: NetworkConfig, own: Lease, leases: Sequence[Lease], backend_type: str) -> list[Lease]:
    """The remote leases flanneld on this node programs: through its tracker and guard, of its backend type."""
    guard = LeaseGuard.for_network(config, own, backend_type, vtep_macs=backend_type == "vxlan")
    tracker = LeaseTracker(own, guard)
    events = tracker.apply(WatchResult(snapshot=tuple(leases)))
    return [ev.lease for ev in events if ev.type is EventType.ADDED and ev.lease.attrs.backend_type == backend_type]


def check(nl: Netlink, config: NetworkConfig, own: Lease, leases: Sequence[Lease]) -> list[Drift]:
    """The drift of this node's backend; ``DriftUnchecked`` when it cannot be compared."""
    kind = config.backend_type.lower()
    remote = admitted(config, own, leases, kind)
    try:
        if kind == "vxlan":
            return _vxlan(nl, config, own, remote)
        if kind == "host-gw":
            return _host_gw(nl, config, own, remote)
        if kind == "ipip":
            return _ipip(nl, config, own, remote)
        if kind == "udp":
            return _udp(nl, config, own)
        if kind == "wireguard":
            return _wireguard(nl, config, own, remote)
    except (NetlinkError, OSError) as exc:
        raise DriftUnchecked(f"cannot read the kernel's state: {exc}") from None
    raise DriftUnchecked(f"drift is checked for {', '.join(SUPPORTED)} only, not {config.backend_type}")


def _families(config: NetworkConfig, own: Lease) -> list[tuple[int, Network, Network]]:
    out: list[tuple[int, Network, Network]] = []
    if config.enable_ipv4 and config.network is not None and own.subnet is not None:
        out.append((socket.AF_INET, config.network, own.subnet))
    if config.enable_ipv6 and config.ipv6_network is not None and own.ipv6_subnet is not None:
        out.append((socket.AF_INET6, config.ipv6_network, own.ipv6_subnet))
    return out


def _vxlan(nl: Netlink, config: NetworkConfig, own: Lease, remote: Sequence[Lease]) -> list[Drift]:
    from flannel.backend.vxlan_config import parse_vxlan_config
    from flannel.backend.vxlan_plane import VXLANPlane

    try:
        cfg = parse_vxlan_config(config.backend)
    except ConfigError as exc:
        raise DriftUnchecked(f"the config's Backend section is invalid: {exc}") from None
    out: list[Drift] = []
    for family, cluster, subnet in _families(config, own):
        name = cfg.device_name if family == socket.AF_INET else cfg.v6_device_name
        link = nl.link_by_name(name)
        if link is None:
            out.append(Drift(f"device {name} missing", f"wait for flanneld's reconcile to recreate {name}"))
            continue
        plane = VXLANPlane(nl=nl, family=family, dev_name=name, cluster=cluster,
                           own_subnet=subnet, direct_routing=cfg.direct_routing,
                           dev_index=link.index)
        if cfg.nexthop_objects:
            plane.use_nexthops()
        for lease in remote:
            try:
                entries = plane.entries_for(lease)
            except (LeaseDecodeError, ValueError):
                continue  # flanneld skips it too
            if entries is not None:
                plane.desired[lease.key] = entries
        names = {link.index: name}
        out += [Drift(reason, command(op.describe(names)))  # type: ignore[attr-defined]
                for reason, op in plane.drift_ops()]
    return out


def _host_gw(nl: Netlink, config: NetworkConfig, own: Lease, remote: Sequence[Lease]) -> list[Drift]:
    from flannel.backend.route_network import RoutePlane
    from flannel.backend.route_plane import route_drift

    out: list[Drift] = []
    for family, cluster, subnet in _families(config, own):
        public = own.attrs.public_ipv6 if family == socket.AF_INET6 else own.attrs.public_ip
        index = next((a.index for a in nl.addresses(family=family) if a.address == public), None)
        if index is None:
            raise DriftUnchecked(f"no interface holds this node's public IP {public}: host-gw routes go out of it")
        link = nl.link_by_index(index)
        names = {index: link.name if link is not None else f"#{index}"}
        plane = RoutePlane(family=family, cluster=cluster, own_subnet=subnet, oif=index)
        out += [Drift(reason, command(op.describe(names)))  # type: ignore[attr-defined]
                for reason, op in route_drift(nl, family, cluster, _wanted_routes(plane, remote))]
    return out


def _wanted_routes(plane: RoutePlane, remote: Sequence[Lease]) -> list[PeerRoute]:
    """The routes a route plane wants for the remote leases (a lease it cannot read wants none)."""
    wanted = []
    for lease in remote:
        try:
            route = plane.route_for(lease)
        except (LeaseDecodeError, ValueError):
            continue
        if route is not None:
            wanted.append(route)
    return wanted


def _external_index(nl: Netlink, own: Lease) -> int | None:
    return next((a.index for a in nl.addresses(family=socket.AF_INET) if a.address == own.attrs.public_ip), None)


def _ipip(nl: Netlink, config: NetworkConfig, own: Lease, remote: Sequence[Lease]) -> list[Drift]:
    from flannel.backend.ipip import DEVICE_NAME, IPIPRoutePlane, parse_ipip_config
    from flannel.backend.route_plane import route_drift

    try:
        cfg = parse_ipip_config(config.backend)
    except ConfigError as exc:
        raise DriftUnchecked(f"the config's Backend section is invalid: {exc}") from None
    out: list[Drift] = []
    for family, cluster, subnet in _families(config, own):
        if family != socket.AF_INET:
            continue  # ipip is IPv4 only
        link = nl.link_by_name(DEVICE_NAME)
        if link is None:
            out.append(Drift(f"device {DEVICE_NAME} missing",
                             f"wait for flanneld's reconcile to recreate {DEVICE_NAME}"))
            continue
        ext = _external_index(nl, own)
        if ext is None and cfg.direct_routing:
            raise DriftUnchecked(f"no interface holds this node's public IP {own.attrs.public_ip}: DirectRouting "
                                 "routes go out of it")
        names = {link.index: DEVICE_NAME}
        if ext is not None:
            ext_link = nl.link_by_index(ext)
            names[ext] = ext_link.name if ext_link is not None else f"#{ext}"
        plane = IPIPRoutePlane(family=family, cluster=cluster, own_subnet=subnet, oif=ext or 0, nl=nl,
                               tunnel_index=link.index, direct_routing=cfg.direct_routing)
        out += [Drift(reason, command(op.describe(names)))  # type: ignore[attr-defined]
                for reason, op in route_drift(nl, family, cluster, _wanted_routes(plane, remote))]
    return out


def _wireguard(nl: Netlink, config: NetworkConfig, own: Lease, remote: Sequence[Lease]) -> list[Drift]:
    from flannel.ctl import drift_wireguard

    try:
        return [Drift(what, fix) for what, fix in drift_wireguard.check(nl, config, own, remote)]
    except ConfigError as exc:
        raise DriftUnchecked(f"the config's Backend section is invalid: {exc}") from None
    except drift_wireguard.Unreadable as exc:
        raise DriftUnchecked(str(exc)) from None


def _udp(nl: Netlink, config: NetworkConfig, own: Lease) -> list[Drift]:
    """flannel0, its address and MTU-independent settings, and the route of the whole network through it."""
    name = "flannel0"
    if config.network is None or own.subnet is None:
        return []
    link = nl.link_by_name(name)
    if link is None:
        return [Drift(f"device {name} missing", "restart flanneld (its TUN device closed; flanneld re-creates it "
                      "at its next reconcile)")]
    out: list[Drift] = []
    address = own.subnet.network_address
    if not link.up:
        out.append(Drift(f"device {name} down", f"ip link set {name} up"))
    if not any(a.address == address and a.prefixlen == 32 for a in nl.addresses(link.index)):
        out.append(Drift(f"address {address}/32 on {name} missing", f"ip addr add {address}/32 dev {name}"))
    if not any(r.dst == config.network for r in nl.routes(socket.AF_INET, oif=link.index)):
        out.append(Drift(f"route to {config.network} missing", f"ip route replace {config.network} dev {name}"))
    return out
