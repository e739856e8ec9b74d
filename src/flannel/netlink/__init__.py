"""A small, dependency-free rtnetlink layer for flanneld's VXLAN backend.

Why not pyroute2: importing it costs ~13 MiB of RSS (the daemon's budget is 50 MiB), and its
request-then-wait-for-ACK path is 15-20x slower than ``ip -batch`` when programming thousands of peers.
This package speaks the few rtnetlink messages flanneld needs with ``socket``, ``struct`` and ``ctypes``.
"""

from __future__ import annotations

from flannel.netlink.addrs import Addr
from flannel.netlink.client import Netlink
from flannel.netlink.errors import NetlinkError, is_exists, is_gone, is_unreachable
from flannel.netlink.links import IptunInfo, IptunSpec, Link, VxlanInfo, VxlanSpec
from flannel.netlink.monitor import LinkEvent, LinkMonitor, link_events
from flannel.netlink.neigh import FdbEntry, Neigh
from flannel.netlink.nexthops import NexthopDelete, NexthopReplace, RouteViaNexthop
from flannel.netlink.ops import (
    BlackholeRouteReplace,
    FdbDelete,
    FdbReplace,
    NeighDelete,
    NeighReplace,
    Op,
    RouteDelete,
    RouteReplace,
)
from flannel.netlink.routes import Route, RouteInfo

__all__ = [
    "Addr",
    "BlackholeRouteReplace",
    "FdbDelete",
    "FdbEntry",
    "FdbReplace",
    "IptunInfo",
    "IptunSpec",
    "Link",
    "LinkEvent",
    "LinkMonitor",
    "Neigh",
    "NeighDelete",
    "NeighReplace",
    "Netlink",
    "NetlinkError",
    "NexthopDelete",
    "NexthopReplace",
    "Op",
    "Route",
    "RouteDelete",
    "RouteInfo",
    "RouteReplace",
    "RouteViaNexthop",
    "VxlanInfo",
    "VxlanSpec",
    "is_exists",
    "is_gone",
    "is_unreachable",
    "link_events",
]
