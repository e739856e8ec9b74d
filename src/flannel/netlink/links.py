"""Network devices: what flanneld needs to know about a link, and the requests that change links.

Only the attributes the VXLAN backend compares when deciding whether to adopt an existing device are
decoded; everything else the kernel sends (statistics, queues, XDP, ...) is skipped unread.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from flannel.netlink import wire
from flannel.netlink.consts import (
    IFF_UP,
    IFINFOMSG,
    IFLA_ADDRESS,
    IFLA_GSO_MAX_SEGS,
    IFLA_GSO_MAX_SIZE,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_IPTUN_LINK,
    IFLA_IPTUN_LOCAL,
    IFLA_IPTUN_PMTUDISC,
    IFLA_IPTUN_REMOTE,
    IFLA_IPTUN_TOS,
    IFLA_IPTUN_TTL,
    IFLA_LINKINFO,
    IFLA_MTU,
    IFLA_VXLAN_GBP,
    IFLA_VXLAN_GROUP,
    IFLA_VXLAN_GROUP6,
    IFLA_VXLAN_ID,
    IFLA_VXLAN_L2MISS,
    IFLA_VXLAN_LEARNING,
    IFLA_VXLAN_LINK,
    IFLA_VXLAN_LOCAL,
    IFLA_VXLAN_LOCAL6,
    IFLA_VXLAN_PORT,
    IFLA_VXLAN_TOS,
    IFLA_VXLAN_TTL,
)
from flannel.netlink.wire import IPAddress


@dataclass(frozen=True)
class VxlanInfo:
    """The VXLAN-specific settings of a device (``ip -d link show``'s ``vxlan ...`` part)."""

    vni: int
    underlay_index: int
    """IFLA_VXLAN_LINK, 0 when the device is not bound to an underlay."""
    local: IPAddress | None
    port: int
    """Destination UDP port; 0 when the kernel did not report one."""
    learning: bool
    gbp: bool
    l2miss: bool
    group: IPAddress | None
    """Multicast group or default remote; flannel's devices have none."""


@dataclass(frozen=True)
class IptunInfo:
    """The settings of an ipip device (``ip -d link show``'s ``ipip ...`` part)."""

    local: IPAddress | None
    """Outer source address; None for "any"."""
    remote: IPAddress | None
    """Outer destination; None for "any" (flannel's device: one device, many peers)."""
    underlay_index: int
    """IFLA_IPTUN_LINK, 0 when the device is not bound to an underlay."""


@dataclass(frozen=True)
class Link:
    """A network device as seen in one namespace."""

    index: int
    name: str
    mtu: int
    mac: str
    """Lower-case ``aa:bb:..``; empty for devices without a hardware address."""
    up: bool
    """Administratively up (IFF_UP), not necessarily carrier."""
    kind: str
    """``vxlan``, ``dummy``, ``veth``...; empty for physical devices and loopback."""
    vxlan: VxlanInfo | None = None
    iptun: IptunInfo | None = None
    """Set for ``ipip`` devices."""


def parse_link(data: bytes, start: int, end: int) -> Link:
    """Decode one RTM_NEWLINK message body."""
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(data, start)
    a = wire.attrs(data, start + IFINFOMSG.size, end)
    kind = ""
    vxlan = None
    iptun = None
    info_raw = a.get(IFLA_LINKINFO)
    if info_raw is not None:
        info = wire.nested(info_raw)
        kind = wire.cstr(info.get(IFLA_INFO_KIND, b""))
        if kind == "vxlan" and IFLA_INFO_DATA in info:
            vxlan = _parse_vxlan(wire.nested(info[IFLA_INFO_DATA]))
        elif kind == "ipip":
            iptun = _parse_iptun(wire.nested(info.get(IFLA_INFO_DATA, b"")))
    mac = a.get(IFLA_ADDRESS)
    return Link(
        index=index,
        name=wire.cstr(a.get(IFLA_IFNAME, b"")),
        mtu=wire.u32(a[IFLA_MTU]) if IFLA_MTU in a else 0,
        mac=wire.mac_str(mac) if mac else "",
        up=bool(flags & IFF_UP),
        kind=kind,
        vxlan=vxlan,
        iptun=iptun,
    )


def _addr_or_none(raw: bytes | None) -> IPAddress | None:
    if not raw or not any(raw):  # 0.0.0.0 is how the kernel says "any"
        return None
    return wire.ip_from(raw)


def _parse_iptun(d: dict[int, bytes]) -> IptunInfo:
    return IptunInfo(
        local=_addr_or_none(d.get(IFLA_IPTUN_LOCAL)),
        remote=_addr_or_none(d.get(IFLA_IPTUN_REMOTE)),
        underlay_index=wire.u32(d[IFLA_IPTUN_LINK]) if IFLA_IPTUN_LINK in d else 0,
    )


def _parse_vxlan(d: dict[int, bytes]) -> VxlanInfo:
    local = d.get(IFLA_VXLAN_LOCAL) or d.get(IFLA_VXLAN_LOCAL6)
    group = d.get(IFLA_VXLAN_GROUP) or d.get(IFLA_VXLAN_GROUP6)
    return VxlanInfo(
        vni=wire.u32(d[IFLA_VXLAN_ID]) if IFLA_VXLAN_ID in d else 0,
        underlay_index=wire.u32(d[IFLA_VXLAN_LINK]) if IFLA_VXLAN_LINK in d else 0,
        local=wire.ip_from(local) if local else None,
        port=wire.be16(d[IFLA_VXLAN_PORT]) if IFLA_VXLAN_PORT in d else 0,
        learning=bool(d.get(IFLA_VXLAN_LEARNING, b"\0")[0]),
        gbp=IFLA_VXLAN_GBP in d,
        l2miss=bool(d.get(IFLA_VXLAN_L2MISS, b"\0")[0]),
        group=wire.ip_from(group) if group else None,
    )


def ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


@dataclass(frozen=True)
class VxlanSpec:
    """A VXLAN device as ``ip link add NAME [address MAC] mtu M type vxlan id VNI dev UNDERLAY ...`` makes it."""

    name: str
    """Device name."""
    vni: int
    """VXLAN network identifier."""
    underlay_index: int
    """Index of the device the tunnel runs over; 0 for none."""
    local: IPAddress | None
    """Outer source address."""
    port: int
    """Destination UDP port; 0 for the kernel default (8472)."""
    learning: bool
    """Kernel FDB learning."""
    gbp: bool
    """Group Based Policy extension."""
    mtu: int
    """Device MTU; 0 for the kernel's choice."""
    mac: str | None = None
    """MAC address; None for a random one chosen by the kernel."""


def vxlan_body(spec: VxlanSpec) -> bytes:
    """RTM_NEWLINK body for ``ip link add NAME [address MAC] mtu M type vxlan id VNI dev UNDERLAY ...``.

    TTL and TOS are sent as 0 (inherit), like Go's netlink library does, so a device we create looks the
    same as one upstream flanneld created and is adopted across a switch between the two.
    """
    name, vni, underlay_index, local, port = spec.name, spec.vni, spec.underlay_index, spec.local, spec.port
    learning, gbp, mtu, mac = spec.learning, spec.gbp, spec.mtu, spec.mac
    data = [wire.attr_u32(IFLA_VXLAN_ID, vni)]
    if underlay_index:
        data.append(wire.attr_u32(IFLA_VXLAN_LINK, underlay_index))
    if local is not None:
        atype = IFLA_VXLAN_LOCAL if local.version == 4 else IFLA_VXLAN_LOCAL6
        data.append(wire.attr(atype, local.packed))
    data += [
        wire.attr_u8(IFLA_VXLAN_TTL, 0),
        wire.attr_u8(IFLA_VXLAN_TOS, 0),
        wire.attr_u8(IFLA_VXLAN_LEARNING, int(learning)),
    ]
    if port > 0:
        data.append(wire.attr_be16(IFLA_VXLAN_PORT, port))
    if gbp:
        data.append(wire.attr(IFLA_VXLAN_GBP, b""))
    linkinfo = wire.attr_str(IFLA_INFO_KIND, "vxlan") + wire.attr(IFLA_INFO_DATA, b"".join(data))
    parts = [ifinfo(), wire.attr_str(IFLA_IFNAME, name)]
    if mac:
        parts.append(wire.attr(IFLA_ADDRESS, wire.mac_bytes(mac)))
    if mtu > 0:
        parts.append(wire.attr_u32(IFLA_MTU, mtu))
    parts.append(wire.attr(IFLA_LINKINFO, linkinfo))
    return b"".join(parts)


def vxlan_describe(spec: VxlanSpec) -> str:
    """The ``ip link add`` command equivalent to ``vxlan_body``, for logs and errors."""
    text = f"link add {spec.name}" + (f" address {spec.mac}" if spec.mac else "")
    text += f" mtu {spec.mtu}" if spec.mtu > 0 else ""
    text += f" type vxlan id {spec.vni}" + (f" dev #{spec.underlay_index}" if spec.underlay_index else "")
    text += f" local {spec.local}" if spec.local is not None else ""
    text += "" if spec.learning else " nolearning"
    text += f" dstport {spec.port}" if spec.port > 0 else ""
    return text + (" gbp" if spec.gbp else "")


@dataclass(frozen=True)
class IptunSpec:
    """An ipip device as ``ip link add NAME mtu M type ipip local LOCAL [dev UNDERLAY]`` makes it."""

    name: str
    """Device name."""
    local: IPAddress | None
    """Outer source address (IPv4); None for any."""
    mtu: int
    """Device MTU; 0 for the kernel's choice."""
    underlay_index: int = 0
    """Index of the device the tunnel is bound to; 0 for none (flannel's choice, as upstream)."""


def ipip_body(spec: IptunSpec) -> bytes:
    """RTM_NEWLINK body for ``ip link add NAME mtu M type ipip local LOCAL remote any``.

    TTL and TOS 0 (inherit) and path-MTU discovery on, as Go's netlink library sends them.
    """
    data = []
    if spec.local is not None:
        data.append(wire.attr(IFLA_IPTUN_LOCAL, spec.local.packed))
    if spec.underlay_index:
        data.append(wire.attr_u32(IFLA_IPTUN_LINK, spec.underlay_index))
    data += [wire.attr_u8(IFLA_IPTUN_TTL, 0), wire.attr_u8(IFLA_IPTUN_TOS, 0), wire.attr_u8(IFLA_IPTUN_PMTUDISC, 1)]
    linkinfo = wire.attr_str(IFLA_INFO_KIND, "ipip") + wire.attr(IFLA_INFO_DATA, b"".join(data))
    parts = [ifinfo(), wire.attr_str(IFLA_IFNAME, spec.name)]
    if spec.mtu > 0:
        parts.append(wire.attr_u32(IFLA_MTU, spec.mtu))
    parts.append(wire.attr(IFLA_LINKINFO, linkinfo))
    return b"".join(parts)


def ipip_describe(spec: IptunSpec) -> str:
    """The ``ip link add`` command equivalent to ``ipip_body``, for logs and errors."""
    text = f"link add {spec.name}" + (f" mtu {spec.mtu}" if spec.mtu > 0 else "") + " type ipip"
    text += f" local {spec.local}" if spec.local is not None else " local any"
    return text + " remote any" + (f" dev #{spec.underlay_index}" if spec.underlay_index else "")


def mtu_body(index: int, mtu: int) -> bytes:
    return ifinfo(index) + wire.attr_u32(IFLA_MTU, mtu)


def gso_body(index: int, max_size: int, max_segs: int) -> bytes:
    return ifinfo(index) + wire.attr_u32(IFLA_GSO_MAX_SIZE, max_size) + wire.attr_u32(IFLA_GSO_MAX_SEGS, max_segs)


def name_body(name: str) -> bytes:
    return ifinfo() + wire.attr_str(IFLA_IFNAME, name)


def plain_body(name: str, kind: str, mtu: int) -> bytes:
    """RTM_NEWLINK body for ``ip link add NAME mtu M type KIND``: a device kind without settings (wireguard)."""
    parts = [ifinfo(), wire.attr_str(IFLA_IFNAME, name)]
    if mtu > 0:
        parts.append(wire.attr_u32(IFLA_MTU, mtu))
    parts.append(wire.attr(IFLA_LINKINFO, wire.attr_str(IFLA_INFO_KIND, kind)))
    return b"".join(parts)
