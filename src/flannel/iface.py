"""Choosing the external interface and the addresses peers use to reach this node (spec §9).

Upstream's order is kept: ``--iface`` values (name or IP), then ``--iface-regex``, then
``--iface-can-reach``, and with none of them the interface owning ``--public-ip`` or the default-route
interface. "Global unicast" keeps Go's meaning, so RFC 1918 addresses count.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from flannel.backend.base import ExternalInterface
from flannel.errors import ConfigError, FlannelError
from flannel.netlink import Addr, Link, Netlink

log = logging.getLogger(__name__)

IFA_F_TEMPORARY = 0x01
IFA_F_DEPRECATED = 0x20
IFA_F_PERMANENT = 0x80

_NO_MATCH = "Failed to find interface to use that matches the interfaces and/or regexes provided"


@dataclass(frozen=True)
class IfaceOptions:
    """The interface-selection inputs, from flags (and, in kube mode, node annotations)."""

    ifaces: Sequence[str] = ()
    """``--iface`` values: names or IPs, tried in order."""
    regexes: Sequence[str] = ()
    """``--iface-regex`` values, tried in order after ``ifaces``."""
    can_reach: str = ""
    """``--iface-can-reach``: pick the interface the kernel would use to reach this IP."""
    public_ip: str = ""
    """``--public-ip``."""
    public_ipv6: str = ""
    """``--public-ipv6``."""
    ipv4: bool = True
    """IPv4 enabled in the network config."""
    ipv6: bool = False
    """IPv6 enabled in the network config."""


def _usable(addr: Addr) -> bool:
    a = addr.address
    if addr.flags & IFA_F_DEPRECATED:
        return False
    if a.is_unspecified or a.is_loopback or a.is_multicast:
        return False
    return not (isinstance(a, IPv4Address) and a == IPv4Address("255.255.255.255"))


def _rank(addr: Addr) -> tuple[int, int, int]:
    return (
        1 if addr.address.is_link_local else 0,
        0 if addr.flags & IFA_F_PERMANENT else 1,
        1 if addr.flags & IFA_F_TEMPORARY else 0,
    )


def iface_addr(nl: Netlink, link: Link, family: int) -> IPv4Address | IPv6Address:
    """The interface's preferred address of a family: global before link-local, permanent first."""
    addrs = sorted((a for a in nl.addresses(link.index, family) if _usable(a)), key=_rank)
    if not addrs:
        fam = "IPv4" if family == socket.AF_INET else "IPv6"
        raise FlannelError(f"failed to find {fam} address for interface {link.name}")
    return addrs[0].address


def _owner(nl: Netlink, ip: IPv4Address | IPv6Address) -> Link | None:
    for a in nl.addresses(None, socket.AF_INET if ip.version == 4 else socket.AF_INET6):
        if a.address == ip:
            return nl.link_by_index(a.index)
    return None


def _default_route_link(nl: Netlink, family: int) -> Link | None:
    for r in nl.routes(family):
        if r.dst.prefixlen == 0 and r.oif:
            return nl.link_by_index(r.oif)
    return None


def _by_regex(nl: Netlink, pattern: str, families: list[int]) -> Link | None:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"invalid --iface-regex {pattern!r}: {exc}", "iface-regex") from None
    links = sorted(nl.links(), key=lambda link: link.index)
    for link in links:
        if all(any(rx.search(str(a.address)) for a in nl.addresses(link.index, f) if _usable(a)) for f in families):
            return link
    for link in links:
        if rx.search(link.name):
            return link
    return None


def _families(opts: IfaceOptions) -> list[int]:
    fams: list[int] = []
    if opts.ipv4:
        fams.append(socket.AF_INET)
    if opts.ipv6:
        fams.append(socket.AF_INET6)
    return fams


def _parse_ip(text: str, flag: str) -> IPv4Address | IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"invalid {flag} {text!r}: not an IP address", flag) from None


def select_interface(nl: Netlink, opts: IfaceOptions) -> ExternalInterface:
    """Apply upstream's selection order and return the chosen interface with its addresses."""
    families = _families(opts)
    link: Link | None = None
    fixed: dict[int, IPv4Address | IPv6Address] = {}
    if not (opts.ifaces or opts.regexes or opts.can_reach):
        if opts.public_ip and opts.ipv4:
            ip = _parse_ip(opts.public_ip, "public-ip")
            link = _owner(nl, ip)
            if link is None:
                raise FlannelError(f"no interface with public IP {ip} found; use --iface for NAT setups")
            fixed[socket.AF_INET] = ip
        elif opts.public_ipv6 and opts.ipv6:
            ip = _parse_ip(opts.public_ipv6, "public-ipv6")
            link = _owner(nl, ip)
            if link is None:
                raise FlannelError(f"no interface with public IPv6 {ip} found; use --iface for NAT setups")
            fixed[socket.AF_INET6] = ip
        else:
            links = {f: _default_route_link(nl, f) for f in families}
            chosen = list(links.values())
            if any(v is None for v in chosen):
                raise FlannelError("failed to get default interface: no default route found")
            if len(chosen) == 2 and chosen[0] and chosen[1] and chosen[0].index != chosen[1].index:
                raise FlannelError(
                    f"v6 default route interface {chosen[1].name} must be the same with "
                    f"v4 default route interface {chosen[0].name}")
            link = chosen[0]
            log.info("Determining IP address of default interface")
    else:
        for value in opts.ifaces:
            try:
                ip = ipaddress.ip_address(value)
            except ValueError:
                link = nl.link_by_name(value)
            else:
                link = _owner(nl, ip)
                if link is not None:
                    fixed[socket.AF_INET if ip.version == 4 else socket.AF_INET6] = ip
            if link is not None:
                break
            log.warning("--iface %s: no such interface or address", value)
        if link is None:
            for pattern in opts.regexes:
                link = _by_regex(nl, pattern, families)
                if link is not None:
                    break
        if link is None and opts.can_reach:
            info = nl.route_get(_parse_ip(opts.can_reach, "iface-can-reach"))
            if info is not None and info.oif:
                link = nl.link_by_index(info.oif)
                if link is not None and info.prefsrc is not None:
                    fixed[socket.AF_INET if info.prefsrc.version == 4 else socket.AF_INET6] = info.prefsrc
        if link is None:
            raise FlannelError(_NO_MATCH)
    assert link is not None
    if link.mtu == 0:
        raise FlannelError(f"failed to determine MTU for {link.name} interface")
    v4 = fixed.get(socket.AF_INET) or (iface_addr(nl, link, socket.AF_INET) if opts.ipv4 else None)
    v6 = fixed.get(socket.AF_INET6) or (iface_addr(nl, link, socket.AF_INET6) if opts.ipv6 else None)
    ext4 = _parse_ip(opts.public_ip, "public-ip") if opts.public_ip else v4
    ext6 = _parse_ip(opts.public_ipv6, "public-ipv6") if opts.public_ipv6 else v6
    if ext4 is not None and not isinstance(ext4, IPv4Address):
        raise ConfigError(f"--public-ip {ext4} is not an IPv4 address", "public-ip")
    if ext6 is not None and not isinstance(ext6, IPv6Address):
        raise ConfigError(f"--public-ipv6 {ext6} is not an IPv6 address", "public-ipv6")
    ext = ExternalInterface(
        name=link.name, index=link.index, mtu=link.mtu,
        iface_addr=v4 if isinstance(v4, IPv4Address) else None,
        iface_v6_addr=v6 if isinstance(v6, IPv6Address) else None,
        ext_addr=ext4 if opts.ipv4 else None,
        ext_v6_addr=ext6 if opts.ipv6 else None,
    )
    log.info("Using interface with name %s and address %s", ext.name, ext.iface_addr or ext.iface_v6_addr)
    log.info("Defaulting external address to interface address (%s)" if not opts.public_ip else
             "Using %s as external address", ext.ext_addr or ext.ext_v6_addr)
    return ext
