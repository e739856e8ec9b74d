"""Create or adopt the VXLAN device and give it its address (spec §10.2).

Adoption matters because flanneld restarts must not disturb traffic: a compatible existing device is kept
with its MAC (which remote nodes have programmed), while an incompatible one is replaced.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address

from flannel.netlink import Link, Netlink, VxlanSpec
from flannel.netlink.links import vxlan_describe

log = logging.getLogger(__name__)

DEFAULT_VXLAN_PORT = 8472


VXLANDeviceSpec = VxlanSpec
"""How the device should look: the netlink layer's own description of a VXLAN device."""


def random_vtep_mac() -> str:
    """Six random bytes, unicast and locally administered, as upstream generates them."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def incompatibility(link: Link, spec: VXLANDeviceSpec) -> str | None:
    """Why an existing device cannot be adopted, or None when it can (upstream's comparison)."""
    info = link.vxlan
    if link.kind != "vxlan" or info is None:
        return f"it is of type {link.kind or 'unknown'!r}, not vxlan"
    if info.vni != spec.vni:
        return f"its VNI is {info.vni}, want {spec.vni}"
    if info.underlay_index and spec.underlay_index and info.underlay_index != spec.underlay_index:
        return f"its underlay device index is {info.underlay_index}, want {spec.underlay_index}"
    if info.local is not None and spec.local is not None and info.local != spec.local:
        return f"its local address is {info.local}, want {spec.local}"
    if info.group is not None:
        return f"it has multicast group {info.group}"
    want_port = spec.port or DEFAULT_VXLAN_PORT
    if info.port and info.port != want_port:
        return f"its port is {info.port}, want {want_port}"
    if info.l2miss:
        return "it has l2miss set"
    if info.gbp != spec.gbp:
        return f"its GBP flag is {info.gbp}, want {spec.gbp}"
    if spec.mac and link.mac != spec.mac.lower():  # only when recreating: the MAC peers have from our lease
        return f"its mac is {link.mac}, want {spec.mac.lower()}"
    return None


def ensure_device(nl: Netlink, spec: VXLANDeviceSpec) -> Link:
    """Adopt a compatible device or (re)create it; fix the MTU of an adopted one (⚠ upstream does not)."""
    link = nl.link_by_name(spec.name)
    if link is not None:
        reason = incompatibility(link, spec)
        if reason is None:
            if link.mtu != spec.mtu:
                nl.set_link_mtu(link.index, spec.mtu)
                log.info("link set %s mtu %d (was %d)", spec.name, spec.mtu, link.mtu)
            log.info("adopting existing vxlan device %s (mac %s)", spec.name, link.mac)
            return nl.link_by_name(spec.name) or link
        log.warning("existing device %s cannot be adopted: %s; recreating it", spec.name, reason)
        nl.delete_link(link.index)
        log.info("link del %s", spec.name)
        if not spec.mac and link.mac:
            # Keep the MAC peers already know (e.g. a device made by Go flanneld with another local address).
            spec = dataclasses.replace(spec, mac=link.mac)
    if not spec.mac:
        spec = dataclasses.replace(spec, mac=random_vtep_mac())
    link = nl.create_vxlan(spec)
    log.info("%s", vxlan_describe(spec))
    _disable_accept_ra(spec.name)
    return link


def _disable_accept_ra(name: str) -> None:
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/accept_ra", "w") as f:
            f.write("0")
    except OSError:
        pass  # upstream ignores this too: IPv6 may be disabled on the host


def ensure_address(nl: Netlink, link: Link, address: IPv4Address | IPv6Address, cluster: IPv4Network | None) -> None:
    """Give the device exactly its lease address (/32 or /128), removing stale ones as upstream does.

    IPv4: other addresses inside the cluster network are removed, others kept. IPv6: every other
    non-link-local address is removed.
    """
    family = socket.AF_INET if isinstance(address, IPv4Address) else socket.AF_INET6
    full = 32 if family == socket.AF_INET else 128
    present = False
    for addr in nl.addresses(link.index, family):
        if addr.address == address and addr.prefixlen == full:
            present = True
            continue
        if family == socket.AF_INET and (cluster is None or addr.address not in cluster):
            continue
        if isinstance(addr.address, IPv6Address) and addr.address.is_link_local:
            continue
        nl.delete_address(link.index, addr.address, addr.prefixlen)
        log.info("addr del %s/%d dev %s", addr.address, addr.prefixlen, link.name)
    if not present:
        nl.add_address(link.index, address, full)
        log.info("addr add %s/%d dev %s", address, full, link.name)
    if not link.up:
        nl.set_link_up(link.index)
        log.info("link set %s up", link.name)
