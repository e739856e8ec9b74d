"""Numeric constants of the rtnetlink ABI, gathered from the kernel's uapi headers.

Kept in one place (rather than spread over the modules that use them) so that a number is checked against
``linux/rtnetlink.h``, ``linux/if_link.h``, ``linux/neighbour.h`` and ``linux/if_addr.h`` exactly once.
Only what flanneld's VXLAN backend needs is here.
"""

from __future__ import annotations

import struct
from typing import Final

# linux/netlink.h
NETLINK_ROUTE: Final = 0
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10
NETLINK_EXT_ACK: Final = 11
NETLINK_GET_STRICT_CHK: Final = 12

NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4

NLM_F_REQUEST: Final = 0x01
NLM_F_MULTI: Final = 0x02
NLM_F_ACK: Final = 0x04
NLM_F_DUMP_INTR: Final = 0x10
NLM_F_DUMP_FILTERED: Final = 0x20  # on dump replies: the kernel applied the request's filter
NLM_F_DUMP: Final = 0x300
NLM_F_REPLACE: Final = 0x100
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400
NLM_F_ACK_TLVS: Final = 0x200  # on NLMSG_ERROR: extended-ACK attributes follow

NLMSGERR_ATTR_MSG: Final = 1

# linux/rtnetlink.h: message types
RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_GETADDR: Final = 22
RTM_NEWROUTE: Final = 24
RTM_DELROUTE: Final = 25
RTM_GETROUTE: Final = 26
RTM_NEWNEIGH: Final = 28
RTM_DELNEIGH: Final = 29
RTM_GETNEIGH: Final = 30
RTM_NEWNEXTHOP: Final = 104
RTM_DELNEXTHOP: Final = 105
RTM_GETNEXTHOP: Final = 106

RTMGRP_LINK: Final = 1
RTMGRP_IPV4_IFADDR: Final = 0x10
RTMGRP_IPV6_IFADDR: Final = 0x100

# routes
RT_TABLE_MAIN: Final = 254
RTPROT_BOOT: Final = 3
RT_SCOPE_UNIVERSE: Final = 0
RT_SCOPE_LINK: Final = 253
RT_SCOPE_NOWHERE: Final = 255
RTN_UNICAST: Final = 1
RTN_BLACKHOLE: Final = 6
RTM_F_CLONED: Final = 0x200
RTM_F_LOOKUP_TABLE: Final = 0x1000  # route get: report the table the lookup used (IPv4; IPv6 always does)
RTM_F_FIB_MATCH: Final = 0x2000  # route get: return the matching FIB entry, not the resolved route
RTNH_F_ONLINK: Final = 4

RTA_DST: Final = 1
RTA_OIF: Final = 4
RTA_GATEWAY: Final = 5
RTA_PREFSRC: Final = 7
RTA_TABLE: Final = 15
RTA_NH_ID: Final = 30

# nexthop objects: linux/nexthop.h (Linux 5.3+)
NHA_ID: Final = 1
NHA_OIF: Final = 5
NHA_GATEWAY: Final = 6

# links: linux/if_link.h
IFF_UP: Final = 0x1
IFLA_ADDRESS: Final = 1
IFLA_IFNAME: Final = 3
IFLA_MTU: Final = 4
IFLA_LINKINFO: Final = 18
IFLA_GSO_MAX_SEGS: Final = 40
IFLA_GSO_MAX_SIZE: Final = 41
IFLA_INFO_KIND: Final = 1
IFLA_INFO_DATA: Final = 2

IFLA_VXLAN_ID: Final = 1
IFLA_VXLAN_GROUP: Final = 2
IFLA_VXLAN_LINK: Final = 3
IFLA_VXLAN_LOCAL: Final = 4
IFLA_VXLAN_TTL: Final = 5
IFLA_VXLAN_TOS: Final = 6
IFLA_VXLAN_LEARNING: Final = 7
IFLA_VXLAN_L2MISS: Final = 13
IFLA_VXLAN_PORT: Final = 15
IFLA_VXLAN_GROUP6: Final = 16
IFLA_VXLAN_LOCAL6: Final = 17
IFLA_VXLAN_GBP: Final = 23

# ipip tunnels: linux/if_tunnel.h
IFLA_IPTUN_LINK: Final = 1
IFLA_IPTUN_LOCAL: Final = 2
IFLA_IPTUN_REMOTE: Final = 3
IFLA_IPTUN_TTL: Final = 4
IFLA_IPTUN_TOS: Final = 5
IFLA_IPTUN_PMTUDISC: Final = 10

# addresses: linux/if_addr.h
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
IFA_LABEL: Final = 3
IFA_FLAGS: Final = 8
IFA_F_TEMPORARY: Final = 0x01
IFA_F_DEPRECATED: Final = 0x20
IFA_F_PERMANENT: Final = 0x80

# neighbours: linux/neighbour.h
AF_BRIDGE: Final = 7
NDA_DST: Final = 1
NDA_LLADDR: Final = 2
NDA_IFINDEX: Final = 8
NUD_PERMANENT: Final = 0x80
NTF_SELF: Final = 0x02

# Fixed-size headers. "=" means native byte order, no alignment padding, like the C structs on Linux.
NLMSGHDR: Final = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFINFOMSG: Final = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG: Final = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG: Final = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type, flags
NDMSG: Final = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
NHMSG: Final = struct.Struct("=BBBxI")  # family, scope, protocol, (reserved), flags
RTATTR: Final = struct.Struct("=HH")  # len, type
NLMSGERR: Final = struct.Struct("=i")  # error, followed by the offending request's header
