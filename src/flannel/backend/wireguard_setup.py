"""One WireGuard device's set-up, shared by start-up and the reconcile: adopt or make it, key, port, MTU,
its own addresses and the route to the cluster network.

Adoption is the point of this module. Upstream deletes and recreates the device at every start, which drops
traffic for as long as the peers take to be programmed again; here an existing device whose kind, private
key and listen port are ours is kept with its peers (the reconcile then removes those no lease wants), and
only a device with another key, port or kind is recreated, as upstream would.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from flannel.backend.vxlan_device import ensure_address
from flannel.backend.wireguard_device import Driver, describe
from flannel.backend.wireguard_model import DeviceChange, Network, PeerSpec
from flannel.errors import FlannelError
from flannel.netlink import Link, Netlink, RouteReplace
from flannel.netlink.consts import RT_SCOPE_LINK
from flannel.secret import Secret

log = logging.getLogger(__name__)

START_TIMEOUT = 15.0
"""Seconds to wait for a new device (``wireguard-go`` starting) at start-up."""


@dataclass
class WGDevice:
    """One device: how it is reached, what it listens on, and the peers flannel wants on it."""

    name: str
    """``flannel-wg`` or ``flannel-wg-v6``."""
    port: int
    """Its UDP listen port."""
    families: tuple[int, ...]
    """The address families it carries (its addresses and routes)."""
    slot: int
    """Which of ``peers_for``'s two answers belongs here (0: ``flannel-wg``, 1: ``flannel-wg-v6``)."""
    driver: Driver
    """Kernel or ``wireguard-go``."""
    mtu: int
    """Device MTU (``MTU - 80``)."""
    index: int = 0
    """Current kernel index (changes when the device is recreated)."""
    desired: dict[str, PeerSpec] = field(default_factory=dict)
    """Wanted peer by lease key."""
    addresses: list[tuple[object, Network]] = field(default_factory=list)
    """Own addresses (lease network address) with their cluster network, one per family."""


def configure_change(key: Secret[bytes], port: int, peers: list[PeerSpec] | None = None) -> DeviceChange:
    """Key, port and exactly ``peers`` (a new or recreated device)."""
    return DeviceChange(private_key=key, listen_port=port, replace_peers=True, peers=tuple(peers or ()))


def adopt_or_reset(nl: Netlink, dev: WGDevice, key: Secret[bytes]) -> Link | None:
    """The existing device when it can be adopted (kind ours, key and port unchanged); else delete it and
    return None. A device without a key yet (just probed for by ``choose_driver``) is configured in place."""
    link = nl.link_by_name(dev.name)
    if link is None:
        return None
    if dev.driver.owns(link):
        state = dev.driver.get()
        if state.private_key == key and state.listen_port == dev.port:
            log.info("adopting existing wireguard device %s (%s, port %d, %d peers)", dev.name,
                     describe(dev.driver.impl), dev.port, len(state.peers))
            return link
        if not state.private_key and not state.peers:
            dev.driver.set(configure_change(key, dev.port))
            return link
        why = "another private key" if state.private_key != key else f"port {state.listen_port}"
    else:
        why = f"kind {link.kind or 'unknown'!r}"
    log.warning("existing device %s has %s; recreating it (as upstream does)", dev.name, why)
    nl.delete_link(link.index)
    log.info("link del %s", dev.name)
    return None


async def ensure_device(nl: Netlink, dev: WGDevice, key: Secret[bytes]) -> Link:
    """Adopt or make the device, configured with the key and port, with its MTU, up."""
    link = adopt_or_reset(nl, dev, key)
    if link is None:
        deadline = time.monotonic() + START_TIMEOUT
        while not dev.driver.create():
            if time.monotonic() > deadline:
                raise FlannelError(f"{dev.name} did not appear within {START_TIMEOUT:g}s")
            await asyncio.sleep(0.05)
        dev.driver.set(configure_change(key, dev.port))
        link = nl.link_by_name(dev.name)
        if link is None:
            raise FlannelError(f"{dev.name} vanished right after it was made")
    if link.mtu != dev.mtu:
        nl.set_link_mtu(link.index, dev.mtu)
        log.info("link set %s mtu %d (was %d)", dev.name, dev.mtu, link.mtu)
    dev.index = link.index
    return link


def ensure_layer3(nl: Netlink, dev: WGDevice) -> int:
    """The device's own /32 and /128, link up, and ``<Network> dev <device> scope link``; returns the routes
    it had to add (address changes are logged by ``ensure_address``)."""
    link = nl.link_by_index(dev.index)
    if link is None:
        return 0
    for address, cluster in dev.addresses:
        ensure_address(nl, link, address, cluster if isinstance(address, IPv4Address) else None)  # type: ignore[arg-type]
        link = nl.link_by_index(dev.index) or link  # it may have been set up
    changes = 0
    for _address, cluster in dev.addresses:
        family = socket.AF_INET if cluster.version == 4 else socket.AF_INET6
        if not any(r.dst == cluster and r.gateway is None for r in nl.routes(family, oif=dev.index)):
            nl.apply([RouteReplace(dst=cluster, gateway=None, oif=dev.index, scope=RT_SCOPE_LINK)])
            log.info("route replace %s dev %s scope link", cluster, dev.name)
            changes += 1
    return changes
