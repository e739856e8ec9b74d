"""Drift of the wireguard backend: per remote lease the peer it needs on the right device (public key, endpoint,
allowed IPs), each device's own address and the route of the cluster network through it, and flannel-owned
peers whose key belongs to no lease.

What a lease needs is the backend's own rule (``wireguard_peers.peers_for``, the function flanneld programs
from), and the comparison is the backend reconcile's (``PeerSpec.differs``). The devices are read through the
backend's own drivers, chosen by the link's kind as flanneld chooses them when it adopts a device: a
``wireguard`` link over generic netlink (``GenlClient``), a ``tun`` link through ``wireguard-go``'s UAPI socket
(``UAPIClient``). Nothing is written. Reading a device needs root (both the genetlink dump and the socket are
privileged); without it the drift is reported as unchecked, with that reason.

Every peer on a ``flannel-wg*`` device is flannel's (flanneld sets the device with ``replace_peers``), so a peer
whose key no lease wants is stale, as flanneld's reconcile judges it once it has its first snapshot.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network

from flannel.backend.wireguard_config import DEVICE, DEVICE_V6, Mode, parse_wireguard_config
from flannel.backend.wireguard_key import b64
from flannel.backend.wireguard_model import DeviceState, PeerSpec, endpoint_text
from flannel.backend.wireguard_peers import PeerRules, peers_for
from flannel.backend.wireguard_uapi import UAPIClient, UAPIError
from flannel.config import NetworkConfig
from flannel.errors import LeaseDecodeError
from flannel.lease import UNSET_IPV4, Lease
from flannel.netlink import Link, Netlink, NetlinkError

Network = IPv4Network | IPv6Network
Entry = tuple[str, str]
"""A drift entry: what differs, and the command that repairs it (``drift.Drift``'s fields)."""


class Unreadable(Exception):
    """A device could not be read; ``str()`` says which and why."""


def layout(config: NetworkConfig, mode: Mode) -> list[tuple[str, int, list[int]]]:
    """``(device, slot, families)`` as the backend lays them out (``WireGuardBackend._layout``)."""
    fams: list[int] = [f for f, on in ((socket.AF_INET, config.enable_ipv4),
                                       (socket.AF_INET6, config.enable_ipv6)) if on]
    if mode is not Mode.SEPARATE:
        return [(DEVICE, 0, fams)]
    out: list[tuple[str, int, list[int]]] = []
    if config.enable_ipv4:
        out.append((DEVICE, 0, [int(socket.AF_INET)]))
    if config.enable_ipv6:
        out.append((DEVICE_V6, 1, [int(socket.AF_INET6)]))
    return out


def read_device(link: Link) -> DeviceState:
    """The device as its driver reports it: the kernel's over generic netlink, ``wireguard-go``'s over UAPI."""
    if link.kind == "wireguard":
        from flannel.backend.wireguard_genetlink import GenlClient

        client = GenlClient()
        try:
            return client.get(link.name)
        finally:
            client.close()
    return UAPIClient(link.name).get()


def peer_line(dev: str, peer: PeerSpec) -> str:
    """The ``wg set`` line that makes the peer as wanted (a pre-shared key, a secret, is left out)."""
    ips = ",".join(sorted(str(n) for n in peer.allowed_ips))
    ep = f" endpoint {endpoint_text(peer.endpoint)}" if peer.endpoint is not None else ""
    ka = f" persistent-keepalive {peer.keepalive}" if peer.keepalive else ""
    return f"wg set {dev} peer {b64(peer.public_key)}{ep}{ka} allowed-ips {ips}"


def check(nl: Netlink, config: NetworkConfig, own: Lease, remote: Sequence[Lease]) -> list[Entry]:
    """The wireguard drift of this node; ``Unreadable`` when a device cannot be read, ``ConfigError`` when the
    Backend section is invalid."""
    cfg = parse_wireguard_config(config.backend)
    v4 = own.attrs.public_ip if own.attrs.public_ip != UNSET_IPV4 else None
    rules = PeerRules(mode=cfg.mode, port=cfg.listen_port, port_v6=cfg.listen_port_v6,
                      network=config.network if config.enable_ipv4 else None,
                      network_v6=config.ipv6_network if config.enable_ipv6 else None,
                      own=own.subnet, own_v6=own.ipv6_subnet, ext_v4=v4, ext_v6=own.attrs.public_ipv6,
                      psk=cfg.psk, keepalive=cfg.keepalive)
    out: list[Entry] = []
    for name, slot, fams in layout(config, cfg.mode):
        link = nl.link_by_name(name)
        if link is None:
            out.append((f"device {name} missing", f"wait for flanneld's reconcile to recreate {name}"))
            continue
        try:
            state = read_device(link)
        except (UAPIError, NetlinkError, OSError) as exc:
            raise Unreadable(f"cannot read the wireguard device {name} ({link.kind or 'unknown kind'}): {exc}"
                                 " (reading WireGuard peers needs root)") from None
        wanted: dict[bytes, PeerSpec] = {}
        for lease in remote:
            try:
                peer = peers_for(rules, lease)[slot]
            except (LeaseDecodeError, ValueError):
                continue  # flanneld skips it too
            if peer is not None:
                wanted[peer.public_key] = peer
        for key, peer in sorted(wanted.items(), key=lambda kv: sorted(str(n) for n in kv[1].allowed_ips)):
            have = state.peers.get(key)
            nets = ",".join(sorted(str(n) for n in peer.allowed_ips))
            if have is None:
                out.append((f"wireguard peer {b64(key)} for {nets} missing on {name}", peer_line(name, peer)))
                continue
            diff = peer.differs(have)
            if diff:
                out.append((f"wireguard peer {b64(key)} for {nets} on {name} has {', '.join(diff)}",
                                 peer_line(name, peer)))
        for key in sorted(state.peers.keys() - wanted.keys()):
            out.append((f"stale wireguard peer {b64(key)} on {name}: no lease has this key",
                             f"wg set {name} peer {b64(key)} remove"))
        out += _layer3(nl, link, name, fams, config, own)
    return out


def _layer3(nl: Netlink, link: Link, name: str, fams: list[int], config: NetworkConfig, own: Lease) -> list[Entry]:
    """The device up, its own /32 or /128 (the lease's network address), and ``<Network> dev <device>``."""
    out: list[Entry] = []
    if not link.up:
        out.append((f"device {name} down", f"ip link set {name} up"))
    for fam in fams:
        subnet = own.subnet if fam == socket.AF_INET else own.ipv6_subnet
        cluster: Network | None = config.network if fam == socket.AF_INET else config.ipv6_network
        if subnet is None or cluster is None:
            continue
        full = 32 if fam == socket.AF_INET else 128
        address = subnet.network_address
        if not any(a.address == address and a.prefixlen == full for a in nl.addresses(link.index, fam)):
            out.append((f"address {address}/{full} on {name} missing",
                             f"ip addr add {address}/{full} dev {name}"))
        if not any(r.dst == cluster and r.gateway is None for r in nl.routes(fam, oif=link.index)):
            out.append((f"route to {cluster} missing", f"ip route replace {cluster} dev {name} scope link"))
    return out
