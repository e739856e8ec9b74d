"""``Netlink``: flanneld's whole view of the kernel's network configuration, one method per question.

Methods are synchronous on purpose. The kernel answers an rtnetlink request in microseconds, within the
``send``/``recv`` pair, so the asyncio daemon calls them directly instead of paying for a thread hop. A
reply that never comes holds the loop for one ``REQUEST_TIMEOUT`` (the measurement behind this choice is in
``transport``).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from ipaddress import ip_address

from flannel.netlink import addrs, links, neigh, nexthops, routes
from flannel.netlink.addrs import Addr
from flannel.netlink.consts import (
    IFF_UP,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    RT_TABLE_MAIN,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETNEXTHOP,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)
from flannel.netlink.errors import NetlinkError, is_gone, is_rejected, is_unreachable
from flannel.netlink.links import IptunSpec, Link, VxlanSpec
from flannel.netlink.neigh import FdbEntry, Neigh
from flannel.netlink.routes import Route, RouteInfo
from flannel.netlink.transport import Steps, Transport
from flannel.netlink.wire import IPAddress

Scanner = Callable[[bytes, int, int], None]
"""Takes one undecoded dump message: the datagram, where its body starts and where it ends."""


class Netlink(Transport):
    """One rtnetlink socket, in the caller's namespace or (``netns="name"``) in a named one.

    Use as a context manager or call ``close()``. Not thread-safe: one socket, one conversation.
    """

    def __enter__(self) -> Netlink:
        return self

    # -- links ---------------------------------------------------------------------------------------

    def links(self) -> list[Link]:
        return self._dump(RTM_GETLINK, links.ifinfo(), links.parse_link, "link show")

    def link_by_index(self, index: int) -> Link | None:
        return self._get_link(links.ifinfo(index), f"link show #{index}")

    def link_by_name(self, name: str) -> Link | None:
        return self._get_link(links.name_body(name), f"link show {name}")

    def _get_link(self, body: bytes, op: str) -> Link | None:
        try:
            replies = self._transact(RTM_GETLINK, 0, body, op)
        except NetlinkError as err:
            if is_gone(err):
                return None
            raise
        for data, rtype, start, end in replies:
            if rtype == RTM_NEWLINK:
                return links.parse_link(data, start, end)
        return None

    def create_vxlan(self, spec: VxlanSpec) -> Link:
        """Create a VXLAN device (fails with EEXIST when the name is taken) and return it as created."""
        op = links.vxlan_describe(spec)
        self._transact(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, links.vxlan_body(spec), op)
        link = self.link_by_name(spec.name)
        if link is None:  # deleted between the two requests by someone else
            raise NetlinkError(errno.ENODEV, op, "device vanished right after creation")
        return link

    def create_ipip(self, spec: IptunSpec) -> Link:
        """Create an ipip device (EEXIST when the name is taken; EOPNOTSUPP when the kernel has no ipip)."""
        op = links.ipip_describe(spec)
        self._transact(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, links.ipip_body(spec), op)
        link = self.link_by_name(spec.name)
        if link is None:
            raise NetlinkError(errno.ENODEV, op, "device vanished right after creation")
        return link

    def create_plain(self, name: str, kind: str, mtu: int) -> Link:
        """Create a device of a kind that takes no settings (``ip link add NAME mtu M type KIND``; EEXIST when the
        name is taken, EOPNOTSUPP when the kernel does not know the kind) and return it as created."""
        op = f"link add {name} mtu {mtu} type {kind}"
        self._transact(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, links.plain_body(name, kind, mtu), op)
        link = self.link_by_name(name)
        if link is None:
            raise NetlinkError(errno.ENODEV, op, "device vanished right after creation")
        return link

    def delete_link(self, index: int) -> None:
        self._transact(RTM_DELLINK, 0, links.ifinfo(index), f"link del #{index}")

    def set_link_up(self, index: int) -> None:
        self._transact(RTM_NEWLINK, 0, links.ifinfo(index, IFF_UP, IFF_UP), f"link set #{index} up")

    def set_link_mtu(self, index: int, mtu: int) -> None:
        self._transact(RTM_NEWLINK, 0, links.mtu_body(index, mtu), f"link set #{index} mtu {mtu}")

    def set_link_gso_limits(self, index: int, max_size: int, max_segs: int) -> None:
        """Cap the segmentation super-packets the stack hands this device (``gso_max_size``/``gso_max_segs``)."""
        op = f"link set #{index} gso_max_size {max_size} gso_max_segs {max_segs}"
        self._transact(RTM_NEWLINK, 0, links.gso_body(index, max_size, max_segs), op)

    def _names(self) -> Mapping[int, str]:
        return {link.index: link.name for link in self.links()}

    # -- addresses -----------------------------------------------------------------------------------

    def addresses(self, index: int | None = None, family: int | None = None) -> list[Addr]:
        """Addresses of one device (or all), of one family (or both)."""
        found = self._dump(RTM_GETADDR, addrs.dump_body(family, index), addrs.parse_addr, "addr show")
        want = {int(socket.AF_INET): 4, int(socket.AF_INET6): 6}.get(family or 0)
        if index is not None:
            found = [a for a in found if a.index == index]
        return found if want is None else [a for a in found if a.address.version == want]

    def add_address(self, index: int, address: IPAddress, prefixlen: int) -> None:
        """Add (or refresh) ADDRESS/PREFIXLEN on a device; an existing identical address is no error."""
        op = f"addr replace {address}/{prefixlen} dev #{index}"
        body = addrs.addr_body(index, address, prefixlen)
        self._transact(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body, op)

    def delete_address(self, index: int, address: IPAddress, prefixlen: int) -> None:
        op = f"addr del {address}/{prefixlen} dev #{index}"
        self._transact(RTM_DELADDR, 0, addrs.addr_body(index, address, prefixlen), op)

    # -- routes --------------------------------------------------------------------------------------

    def routes(
        self, family: int = socket.AF_INET, table: int | None = RT_TABLE_MAIN, oif: int | None = None,
        *, protocol: int = 0, rtype: int = 0,
    ) -> list[Route]:
        """Routes of one table (None: every table), without cached clones; with ``oif``, only the routes
        through that device (none when it does not exist); with ``protocol``/``rtype``, only routes of that
        protocol (``proto N``) or type (RTN_*).

        The kernel does the filtering (see ``routes.dump_body``): ``oif`` keeps a host's full BGP table
        out of a listing of one device's routes.
        """
        parse = partial(routes.parse_route, table=table, oif=oif, protocol=protocol, rtype=rtype)
        op = "route show" + (f" table {table}" if table not in (None, RT_TABLE_MAIN) else "")
        op += f" dev #{oif}" if oif is not None else ""
        try:
            return self._dump(RTM_GETROUTE, routes.dump_body(family, table, oif, protocol, rtype), parse, op)
        except NetlinkError as err:
            if oif is not None and err.errno == errno.ENODEV:  # strict checking looks the device up
                return []
            raise

    def route_scan(self, family: int, oif: int, each: Scanner, rows: int) -> Steps[object]:
        """The main table's routes through device ``oif``, each message handed undecoded to ``each`` (see
        ``routes.route_fields``), in steps of ``rows`` (``Transport._dump_steps``): a reconcile compares them as
        they come instead of holding thousands of decoded routes. Nothing when the device is gone."""
        body = routes.dump_body(family, RT_TABLE_MAIN, oif, 0, 0)
        try:
            yield from self._dump_steps(RTM_GETROUTE, body, each, f"route show dev #{oif}", rows)
        except NetlinkError as err:
            if err.errno != errno.ENODEV:
                raise
        return None

    def route_get(self, dst: IPAddress | str) -> RouteInfo | None:
        """How the kernel would route a packet to ``dst``; None when it has no route."""
        addr = ip_address(dst) if isinstance(dst, str) else dst
        try:
            replies = self._transact(RTM_GETROUTE, 0, routes.get_body(addr), f"route get {addr}")
        except NetlinkError as err:
            if is_unreachable(err):
                return None
            raise
        for data, rtype, start, end in replies:
            if rtype == RTM_NEWROUTE:
                return routes.parse_route_info(data, start, end, addr)
        return None

    def route_matches(self, dsts: Sequence[IPAddress]) -> list[Route | None]:
        """For each address, the routing-table entry a lookup for it ends in, with its prefix and table
        (``ip route get fibmatch DST``): cheap questions, all in flight at once, instead of a table dump.

        None when the lookup ends in no route, or in a blackhole/unreachable/prohibit route (the kernel
        answers those with an error, not an entry). The lookup follows the policy rules, so the entry may
        come from a table other than main, and a more specific route may hide the one asked about.
        """
        bodies = [routes.get_body(dst, fib_match=True) for dst in dsts]
        found: list[Route | None] = []
        for dst, answer in zip(dsts, self._get_each(RTM_GETROUTE, bodies, "route get fibmatch"), strict=True):
            if isinstance(answer, int):
                err = NetlinkError(answer, f"route get fibmatch {dst}")
                if not (is_unreachable(err) or is_rejected(err)):
                    raise err
                found.append(None)
            else:
                found.append(routes.parse_route(*answer, table=None))
        return found

    def route_match(self, dst: IPAddress | str) -> Route | None:
        """``route_matches`` for one address."""
        return self.route_matches([ip_address(dst) if isinstance(dst, str) else dst])[0]

    # -- neighbours and FDB --------------------------------------------------------------------------

    def neighbours(self, index: int, family: int = socket.AF_INET) -> list[Neigh]:
        """Neighbour entries of one device (``ip neigh show dev DEV``)."""
        parse = partial(neigh.parse_neigh, index=index)
        body = neigh.neigh_dump_body(index, family)
        return self._dump(RTM_GETNEIGH, body, parse, f"neigh show dev #{index}")

    def neighbour_scan(self, index: int, family: int, each: Scanner, rows: int) -> Steps[object]:
        """``route_scan`` for one device's neighbour entries (see ``neigh.entry_fields``)."""
        body = neigh.neigh_dump_body(index, family)
        yield from self._dump_steps(RTM_GETNEIGH, body, each, f"neigh show dev #{index}", rows)
        return None

    def fdb(self, index: int) -> list[FdbEntry]:
        """Forwarding-database entries of one device (``bridge fdb show dev DEV``)."""
        parse = partial(neigh.parse_fdb, index=index)
        return self._dump(RTM_GETNEIGH, neigh.fdb_dump_body(index), parse, f"fdb show dev #{index}")

    def fdb_scan(self, index: int, each: Scanner, rows: int) -> Steps[object]:
        """``route_scan`` for one device's forwarding database (see ``neigh.entry_fields``)."""
        yield from self._dump_steps(RTM_GETNEIGH, neigh.fdb_dump_body(index), each, f"fdb show dev #{index}", rows)
        return None

    # -- nexthop objects -----------------------------------------------------------------------------

    def nexthop_scan(self, each: Scanner, rows: int) -> Steps[object]:
        """``route_scan`` for every nexthop object (see ``nexthops.nexthop_fields``): a host has few besides
        ours, and those others' ids are what ours must not take."""
        yield from self._dump_steps(RTM_GETNEXTHOP, nexthops.dump_body(), each, "nexthop show", rows)
        return None

    def nexthops(self) -> list[nexthops.NexthopFields] | None:
        """Every nexthop object, undecoded; None when this kernel has none (before Linux 5.3 the request type
        itself is refused)."""
        try:
            return self._dump(RTM_GETNEXTHOP, nexthops.dump_body(), nexthops.nexthop_fields, "nexthop show")
        except NetlinkError as err:
            if err.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.EPROTONOSUPPORT):
                return None
            raise
