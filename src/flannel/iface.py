"""Choosing the external interface and the addresses peers use to reach this node (spec §9).

Upstream's order is kept: ``--iface`` values (name or IP), then ``--iface-regex``, then
``--iface-can-reach``, and with none of them the interface owning ``--public-ip`` (or ``--public-ipv6``)
or the default-route interface. Each candidate is resolved completely (interface *and* addresses) before
it counts, so a candidate that fails for any reason falls through to the next one, as in upstream's
``main.go``. "Global unicast" keeps Go's meaning, so RFC 1918 addresses count.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address, IPv6Address

from flannel.backend.base import ExternalInterface
from flannel.errors import ConfigError, FlannelError
from flannel.netlink import Addr, Link, Netlink

log = logging.getLogger(__name__)

IFA_F_TEMPORARY = 0x01
IFA_F_DEPRECATED = 0x20
IFA_F_PERMANENT = 0x80

_NO_MATCH = "Failed to find interface to use that matches the interfaces and/or regexes provided"
_BROADCAST = IPv4Address("255.255.255.255")

IP = IPv4Address | IPv6Address


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


@dataclass(frozen=True)
class _Choice:
    """A candidate interface, with the addresses its lookup already fixed (None: pick from the interface)."""

    link: Link
    v4: IPv4Address | None = None
    v6: IPv6Address | None = None


def _usable(addr: Addr) -> bool:
    """Go's ``IsGlobalUnicast() || IsLinkLocalUnicast()``, and not deprecated."""
    a = addr.address
    if addr.flags & IFA_F_DEPRECATED:
        return False
    return not (a.is_unspecified or a.is_loopback or a.is_multicast or a == _BROADCAST)


def _rank(addr: Addr) -> tuple[int, int, int]:
    return (
        1 if addr.address.is_link_local else 0,
        0 if addr.flags & IFA_F_PERMANENT else 1,
        1 if addr.flags & IFA_F_TEMPORARY else 0,
    )


def _ranked(nl: Netlink, link: Link, family: int) -> list[IP]:
    """Usable addresses of one family in preference order (stable: kernel order breaks ties)."""
    return [a.address for a in sorted((a for a in nl.addresses(link.index, family) if _usable(a)), key=_rank)]


def iface_addr(nl: Netlink, link: Link, family: int) -> IP:
    """The interface's preferred address of a family: global before link-local, permanent first."""
    addrs = _ranked(nl, link, family)
    if not addrs:
        fam = "IPv4" if family == socket.AF_INET else "IPv6"
        raise FlannelError(f"failed to find {fam} address for interface {link.name}")
    return addrs[0]


def _owner(nl: Netlink, ip: IP) -> Link | None:
    for a in nl.addresses(None, socket.AF_INET if ip.version == 4 else socket.AF_INET6):
        if a.address == ip:
            return nl.link_by_index(a.index)
    return None


def _owner_v4(nl: Netlink, ip: IP, text: str) -> Link:
    link = _owner(nl, ip) if ip.version == 4 else None
    if link is None:
        raise FlannelError(f"error looking up interface {text}: No interface with given IP found")
    return link


def _owner_v6(nl: Netlink, ip: IP, text: str) -> Link:
    link = _owner(nl, ip) if ip.version == 6 else None
    if link is None:
        raise FlannelError(f"error looking up v6 interface {text}: No interface with given IPv6 found")
    return link


def _parse_ip(text: str, flag: str) -> IP:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"invalid {flag} {text!r}: not an IP address", flag) from None


def _by_ip(nl: Netlink, ip: IP, opts: IfaceOptions) -> _Choice:
    """An ``--iface`` IP (or, with no iface option, ``--public-ip``): the interface that owns it."""
    log.info("Searching for interface using %s", ip)
    if not opts.ipv6:
        return _Choice(_owner_v4(nl, ip, str(ip)), v4=ip if isinstance(ip, IPv4Address) else None)
    if not opts.ipv4:
        return _Choice(_owner_v6(nl, ip, str(ip)), v6=ip if isinstance(ip, IPv6Address) else None)
    # Dual stack: --public-ipv6 is the interface IPv6 address, and must sit on the IPv4 value's interface.
    v6 = _parse_ip(opts.public_ipv6, "public-ipv6") if opts.public_ipv6 else None
    if isinstance(ip, IPv4Address):
        link = _owner_v4(nl, ip, str(ip))
        if v6 is None:
            return _Choice(link, v4=ip)
        v6_link = _owner_v6(nl, v6, opts.public_ipv6)
        if v6_link.index != link.index:
            raise FlannelError(f"v6 interface {v6_link.name} must be the same with v4 interface {link.name}")
        return _Choice(link, v4=ip, v6=v6 if isinstance(v6, IPv6Address) else None)
    target = v6 if v6 is not None else ip
    return _Choice(_owner_v6(nl, target, str(target)), v6=target if isinstance(target, IPv6Address) else None)


def _by_name(nl: Netlink, name: str) -> _Choice:
    link = nl.link_by_name(name)
    if link is None:
        raise FlannelError(f"error looking up interface {name}: no such network interface")
    return _Choice(link)


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"could not compile the IP address regex '{pattern}': {exc}", "iface-regex") from None


def _by_regex(nl: Netlink, pattern: str, opts: IfaceOptions) -> _Choice:
    """Match the regex against each interface's usable addresses (both families in dual stack), then names."""
    rx = _compile(pattern)
    links = sorted(nl.links(), key=lambda link: link.index)
    for link in links:
        v4 = next((a for a in _ranked(nl, link, socket.AF_INET) if rx.search(str(a))), None) if opts.ipv4 else None
        v6 = next((a for a in _ranked(nl, link, socket.AF_INET6) if rx.search(str(a))), None) if opts.ipv6 else None
        if (v4 is not None or not opts.ipv4) and (v6 is not None or not opts.ipv6):
            return _Choice(link, v4=v4 if isinstance(v4, IPv4Address) else None,
                           v6=v6 if isinstance(v6, IPv6Address) else None)
    for link in links:
        if rx.search(link.name):
            return _Choice(link)
    family = socket.AF_INET if opts.ipv4 else socket.AF_INET6
    available = ", ".join(f"{link.name}:[{' '.join(map(str, _ranked(nl, link, family)))}]" for link in links)
    raise FlannelError(f"Could not match pattern {pattern} to any of the available network interfaces ({available})")


def _by_can_reach(nl: Netlink, ip: IP) -> _Choice:
    """The interface (and preferred source address) the kernel would use to reach ``ip``."""
    log.info("Determining interface to use based on given ifcanreach: %s", ip)
    info = nl.route_get(ip)
    if info is None or not info.oif:
        raise FlannelError(f"failed to get ifcanreach based interface: couldn't lookup route to {ip}")
    link = nl.link_by_index(info.oif)
    if link is None:
        raise FlannelError(f"failed to get ifcanreach based interface: no interface with index {info.oif}")
    src = info.prefsrc
    return _Choice(link, v4=src if isinstance(src, IPv4Address) else None,
                   v6=src if isinstance(src, IPv6Address) else None)


def _default_link(nl: Netlink, family: int) -> Link:
    """The interface of the first default route of the main table."""
    v6 = "v6 " if family == socket.AF_INET6 else ""
    for r in nl.routes(family):
        if r.dst.prefixlen != 0:
            continue
        link = nl.link_by_index(r.oif) if r.oif else None
        if link is None:
            raise FlannelError(f"failed to get default {v6}interface: "
                               f"Found default {v6}route but could not determine interface")
        return link
    raise FlannelError(f"failed to get default {v6}interface: Unable to find default {v6}route")


def _by_default_route(nl: Netlink, opts: IfaceOptions) -> _Choice:
    log.info("Determining IP address of default interface")
    v4 = _default_link(nl, socket.AF_INET) if opts.ipv4 else None
    v6 = _default_link(nl, socket.AF_INET6) if opts.ipv6 else None
    if v4 is not None and v6 is not None and v4.index != v6.index:
        raise FlannelError(f"v6 default route interface {v6.name} must be the same with "
                           f"v4 default route interface {v4.name}")
    link = v4 or v6
    assert link is not None  # at least one family is enabled
    return _Choice(link)


def _public(text: str, flag: str, version: int) -> IP:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        kind = "IP" if version == 4 else "IPv6"
        raise ConfigError(f"invalid public {kind} address: {text}", flag) from None
    if ip.version != version:
        raise ConfigError(f"--{flag} {ip} is not an IPv{version} address", flag)
    return ip


def _finish(nl: Netlink, choice: _Choice, opts: IfaceOptions) -> ExternalInterface:
    """Fill in the addresses the lookup left open, check the MTU, and work out the external addresses."""
    link = choice.link
    v4 = choice.v4 or (iface_addr(nl, link, socket.AF_INET) if opts.ipv4 else None)
    v6 = choice.v6 or (iface_addr(nl, link, socket.AF_INET6) if opts.ipv6 else None)
    if link.mtu == 0:
        raise FlannelError(f"failed to determine MTU for {link.name} interface")
    ext4 = _public(opts.public_ip, "public-ip", 4) if opts.public_ip and opts.ipv4 else v4
    ext6 = _public(opts.public_ipv6, "public-ipv6", 6) if opts.public_ipv6 and opts.ipv6 else v6
    ext = ExternalInterface(
        name=link.name, index=link.index, mtu=link.mtu,
        iface_addr=v4 if opts.ipv4 and isinstance(v4, IPv4Address) else None,
        iface_v6_addr=v6 if opts.ipv6 and isinstance(v6, IPv6Address) else None,
        ext_addr=ext4 if isinstance(ext4, IPv4Address) else None,
        ext_v6_addr=ext6 if isinstance(ext6, IPv6Address) else None,
    )
    if ext.iface_addr:
        log.info("Using interface with name %s and address %s", ext.name, ext.iface_addr)
    if ext.iface_v6_addr:
        log.info("Using interface with name %s and v6 address %s", ext.name, ext.iface_v6_addr)
    if ext.ext_addr:
        log.info("Using %s as external address" if opts.public_ip else
                 "Defaulting external address to interface address (%s)", ext.ext_addr)
    if ext.ext_v6_addr:
        log.info("Using %s as external address" if opts.public_ipv6 else
                 "Defaulting external v6 address to interface address (%s)", ext.ext_v6_addr)
    return ext


def _candidates(nl: Netlink, opts: IfaceOptions) -> Iterator[tuple[str, Callable[[], _Choice]]]:
    """The explicit options in upstream's order, each as (what to log, how to look it up)."""
    for value in opts.ifaces:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            yield value, partial(_by_name, nl, value)
        else:
            yield value, partial(_by_ip, nl, ip, opts)
    for pattern in opts.regexes:
        yield pattern, partial(_by_regex, nl, pattern, opts)
    if opts.can_reach:
        target = _parse_ip(opts.can_reach, "iface-can-reach")
        yield f"ifaceCanReach: {opts.can_reach}", partial(_by_can_reach, nl, target)


def select_interface(nl: Netlink, opts: IfaceOptions) -> ExternalInterface:
    """Apply upstream's selection order and return the chosen interface with its addresses.

    Raises ``ConfigError`` for a malformed option and ``FlannelError`` (upstream's text) when nothing fits.
    """
    if not (opts.ipv4 or opts.ipv6):
        raise ConfigError("none matched ip stack")
    if not (opts.ifaces or opts.regexes or opts.can_reach):
        if opts.public_ip and opts.ipv4:
            choice = _by_ip(nl, _parse_ip(opts.public_ip, "public-ip"), opts)
        elif opts.public_ipv6 and opts.ipv6:
            choice = _by_ip(nl, _parse_ip(opts.public_ipv6, "public-ipv6"), opts)
        else:
            choice = _by_default_route(nl, opts)
        return _finish(nl, choice, opts)
    for what, lookup in _candidates(nl, opts):
        try:
            return _finish(nl, lookup(), opts)
        except ConfigError:
            raise
        except FlannelError as exc:
            log.info("Could not find valid interface matching %s: %s", what, exc)
    raise FlannelError(_NO_MATCH)
