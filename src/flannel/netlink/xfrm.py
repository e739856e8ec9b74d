"""XFRM (IPsec) policies over NETLINK_XFRM: the three per-peer policies of the ipsec backend (spec §10.7).

flanneld installs these policies itself, as upstream does (charon is told ``policies = no``): the kernel then
sends matching traffic through ESP with the SA that charon negotiates for the same ``reqid``. Only policies
are spoken here, not SAs: charon installs those. The messages and structures follow the kernel's
``include/uapi/linux/xfrm.h``; the sizes are those of x86_64 and every other 64-bit Linux ABI (the
``xfrm_userpolicy_info`` ends padded to its ``__u64`` alignment).

Every change is an ``XFRM_MSG_UPDPOLICY``, which the kernel treats as "add or replace" (upstream gets the same
effect with a get followed by add or update), so that replaying an event changes nothing.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Final

from flannel.netlink import nsenter, wire
from flannel.netlink.errors import NetlinkError, is_gone
from flannel.netlink.transport import Transport
from flannel.netlink.wire import IPAddress, IPNetwork

NETLINK_XFRM: Final = 6  # linux/netlink.h

# linux/xfrm.h: message types
XFRM_MSG_NEWPOLICY: Final = 0x13
XFRM_MSG_DELPOLICY: Final = 0x14
XFRM_MSG_GETPOLICY: Final = 0x15
XFRM_MSG_UPDPOLICY: Final = 0x19

XFRMA_TMPL: Final = 5  # an array of struct xfrm_user_tmpl

XFRM_POLICY_IN: Final = 0
XFRM_POLICY_OUT: Final = 1
XFRM_POLICY_FWD: Final = 2
DIR_NAMES: Final = {XFRM_POLICY_IN: "in", XFRM_POLICY_OUT: "out", XFRM_POLICY_FWD: "fwd"}

XFRM_MODE_TRANSPORT: Final = 0
XFRM_MODE_TUNNEL: Final = 1
IPPROTO_ESP: Final = 50
XFRM_INF: Final = (1 << 64) - 1
"""No limit, for the byte and packet limits of a policy's lifetime (what ``ip xfrm`` and vishvananda send)."""
ALL_ALGOS: Final = 0xFFFFFFFF
"""A template's ``aalgos``/``ealgos``/``calgos``: any algorithm charon negotiates is acceptable."""

# struct xfrm_selector: daddr, saddr (xfrm_address_t, 16 bytes each), dport, dport_mask, sport, sport_mask
# (__be16, zero here), family (__u16), prefixlen_d, prefixlen_s, proto (__u8), 3 bytes padding, ifindex (int),
# user (__kernel_uid32_t). 56 bytes.
SELECTOR: Final = struct.Struct("=16s16s4HHBBB3xiI")
# struct xfrm_lifetime_cfg (8 x __u64) and struct xfrm_lifetime_cur (4 x __u64).
LIFETIME_CFG: Final = struct.Struct("=8Q")
LIFETIME_CUR: Final = struct.Struct("=4Q")
# struct xfrm_userpolicy_info: sel, lft, curlft, priority, index (__u32), dir, action, flags, share (__u8),
# then 4 bytes of padding to the struct's 8-byte alignment. 168 bytes.
USERPOLICY_INFO: Final = struct.Struct("=56s64s32sIIBBBB4x")
# struct xfrm_userpolicy_id: sel, index (__u32), dir (__u8), 3 bytes padding. 64 bytes.
USERPOLICY_ID: Final = struct.Struct("=56sIB3x")
# struct xfrm_user_tmpl: id {daddr (16), spi (__be32), proto (__u8), 3 pad}, family (__u16), 2 pad, saddr (16),
# reqid (__u32), mode, share, optional (__u8), 1 pad, aalgos, ealgos, calgos (__u32). 64 bytes.
USER_TMPL: Final = struct.Struct("=16sIB3xH2x16sIBBBxIII")

assert SELECTOR.size == 56 and USERPOLICY_INFO.size == 168 and USERPOLICY_ID.size == 64 and USER_TMPL.size == 64


@dataclass(frozen=True, slots=True)
class XfrmPolicy:
    """One policy: traffic ``src`` → ``dst`` in direction ``dir`` goes through ESP (tunnel ``tmpl_src`` →
    ``tmpl_dst``) with the SA of ``reqid``. ``tmpl_src`` is None for a policy with no template."""

    src: IPNetwork
    dst: IPNetwork
    dir: int
    tmpl_src: IPAddress | None
    tmpl_dst: IPAddress | None
    reqid: int
    proto: int = IPPROTO_ESP
    mode: int = XFRM_MODE_TUNNEL
    priority: int = 0

    def describe(self, verb: str = "update") -> str:
        """The ``ip xfrm`` command with the same effect, for logs and errors."""
        text = f"xfrm policy {verb} src {self.src} dst {self.dst} dir {DIR_NAMES.get(self.dir, self.dir)}"
        if verb == "delete":
            return text
        mode = "tunnel" if self.mode == XFRM_MODE_TUNNEL else "transport"
        proto = "esp" if self.proto == IPPROTO_ESP else str(self.proto)
        return f"{text} tmpl src {self.tmpl_src} dst {self.tmpl_dst} proto {proto} reqid {self.reqid} mode {mode}"

    @property
    def key(self) -> tuple[IPNetwork, IPNetwork, int]:
        """What identifies a policy to the kernel (without marks or interface ids, which flannel never sets)."""
        return self.src, self.dst, self.dir


def _family(net: IPNetwork) -> int:
    return socket.AF_INET if net.version == 4 else socket.AF_INET6


def _addr16(addr: IPAddress) -> bytes:
    """An ``xfrm_address_t``: the address in its first bytes, zero-padded to 16."""
    return addr.packed.ljust(16, b"\0")


def pack_selector(src: IPNetwork, dst: IPNetwork) -> bytes:
    """``struct xfrm_selector`` for all traffic from ``src`` to ``dst`` (any protocol, port and interface)."""
    if src.version != dst.version:
        raise ValueError(f"selector {src} -> {dst} mixes address families")
    return SELECTOR.pack(_addr16(dst.network_address), _addr16(src.network_address), 0, 0, 0, 0,
                         _family(src), dst.prefixlen, src.prefixlen, 0, 0, 0)


def pack_policy(policy: XfrmPolicy) -> bytes:
    """The body of an XFRM_MSG_NEWPOLICY/UPDPOLICY: ``xfrm_userpolicy_info`` and one ``XFRMA_TMPL``."""
    if policy.tmpl_src is None or policy.tmpl_dst is None:
        raise ValueError("flannel's policies always carry a template")
    lft = LIFETIME_CFG.pack(XFRM_INF, XFRM_INF, XFRM_INF, XFRM_INF, 0, 0, 0, 0)
    info = USERPOLICY_INFO.pack(pack_selector(policy.src, policy.dst), lft, bytes(LIFETIME_CUR.size),
                                policy.priority, 0, policy.dir, 0, 0, 0)
    family = socket.AF_INET if policy.tmpl_src.version == 4 else socket.AF_INET6
    tmpl = USER_TMPL.pack(_addr16(policy.tmpl_dst), 0, policy.proto, family, _addr16(policy.tmpl_src),
                          policy.reqid, policy.mode, 0, 0, ALL_ALGOS, ALL_ALGOS, ALL_ALGOS)
    return info + wire.attr(XFRMA_TMPL, tmpl)


def pack_policy_id(policy: XfrmPolicy) -> bytes:
    """The body of an XFRM_MSG_DELPOLICY: the policy named by selector and direction."""
    return USERPOLICY_ID.pack(pack_selector(policy.src, policy.dst), 0, policy.dir)


def _ip(raw: bytes, family: int) -> IPAddress:
    return IPv4Address(raw[:4]) if family == socket.AF_INET else IPv6Address(raw)


def parse_policy(data: bytes, start: int, end: int) -> XfrmPolicy | None:
    """Decode one XFRM_MSG_NEWPOLICY of a dump; None for a policy of another family than its template's."""
    if end - start < USERPOLICY_INFO.size:
        return None
    sel, _lft, _cur, priority, _index, direction, _action, _flags, _share = USERPOLICY_INFO.unpack_from(data, start)
    daddr, saddr, _dp, _dpm, _sp, _spm, family, plen_d, plen_s, _proto, _ifindex, _user = SELECTOR.unpack(sel)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    net = IPv4Network if family == socket.AF_INET else IPv6Network
    src = net((_ip(saddr, family), plen_s), strict=False)
    dst = net((_ip(daddr, family), plen_d), strict=False)
    raw = wire.attrs(data, start + USERPOLICY_INFO.size, end).get(XFRMA_TMPL, b"")
    if len(raw) < USER_TMPL.size:
        return XfrmPolicy(src, dst, direction, None, None, 0, 0, 0, priority)
    t_daddr, _spi, proto, t_family, t_saddr, reqid, mode, _s, _o, _a, _e, _c = USER_TMPL.unpack_from(raw)
    return XfrmPolicy(src, dst, direction, _ip(t_saddr, t_family), _ip(t_daddr, t_family), reqid, proto, mode,
                      priority)


class Xfrm(Transport):
    """One NETLINK_XFRM socket (optionally in the named namespace ``netns``): list, update, delete policies."""

    def _socket(self) -> socket.socket:
        return nsenter.netlink_socket(self.netns, NETLINK_XFRM)

    def __enter__(self) -> Xfrm:
        return self

    def policies(self) -> list[XfrmPolicy]:
        """Every policy of the main policy database (``ip xfrm policy``)."""
        return self._dump(XFRM_MSG_GETPOLICY, b"", parse_policy, "xfrm policy show")

    def update_policy(self, policy: XfrmPolicy) -> None:
        """Add the policy, or replace the one with the same selector and direction."""
        self._transact(XFRM_MSG_UPDPOLICY, 0, pack_policy(policy), policy.describe("update"))

    def delete_policy(self, policy: XfrmPolicy) -> bool:
        """Delete the policy with ``policy``'s selector and direction; False when there was none."""
        try:
            self._transact(XFRM_MSG_DELPOLICY, 0, pack_policy_id(policy), policy.describe("delete"))
        except NetlinkError as err:
            if is_gone(err):
                return False
            raise
        return True


def policy_from_text(src: str, dst: str, direction: str, tmpl_src: str, tmpl_dst: str, reqid: int) -> XfrmPolicy:
    """A tunnel-mode ESP policy from ``ip xfrm``-style words (for tests and tools)."""
    dirs = {name: num for num, name in DIR_NAMES.items()}
    return XfrmPolicy(ip_network(src), ip_network(dst), dirs[direction], ip_address(tmpl_src), ip_address(tmpl_dst),
                      reqid)
