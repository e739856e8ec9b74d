"""The kernel-operation counters count what the real netlink code sends and the kernel refuses.

Every change goes through ``Transport`` (batches) or ``Netlink``'s single requests, which do the counting;
these tests drive them against a namespace's kernel, so a counter can only move if a request really went out.
"""

from __future__ import annotations

import errno
import socket
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel import metrics
from flannel.backend.peer_events import apply_lease_events
from flannel.backend.route_network import RoutePlane
from flannel.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.netlink import Netlink, NetlinkError, RouteReplace
from tests.netns import UNDERLAY_DEV, NetNS, netns_fixture  # noqa: F401

pytestmark = pytest.mark.root


def ops(kind: str) -> float:
    return metrics.KERNEL_OPS.labels(kind).value


def errors(kind: str) -> float:
    return metrics.KERNEL_ERRORS.labels(kind).value


def lease(n: int) -> Lease:
    return Lease(IPv4Network(f"10.5.{n}.0/24"), None,
                 LeaseAttrs(public_ip=IPv4Address(f"198.18.0.{10 + n}"), backend_type="host-gw"))


def test_lease_events_count_the_route_changes_the_kernel_received(netns: NetNS) -> None:
    oif = netns.ifindex(UNDERLAY_DEV)
    plane = RoutePlane(family=socket.AF_INET, cluster=IPv4Network("10.5.0.0/16"),
                       own_subnet=IPv4Network("10.5.0.0/24"), oif=oif)
    replaced, deleted = ops("route_replace"), ops("route_delete")
    added, removed = metrics.LEASE_ADDED.value, metrics.LEASE_REMOVED.value
    observed = metrics.LEASE_EVENT_TO_KERNEL.labels().count
    events = [LeaseEvent(EventType.ADDED, lease(1)), LeaseEvent(EventType.ADDED, lease(2)),
              LeaseEvent(EventType.REMOVED, lease(1))]
    metrics.EVENT_LATENCY.received()
    with Netlink(netns.name) as nl:
        apply_lease_events(nl, events, "host-gw", [plane], {})
        ours = [r for r in nl.routes() if isinstance(r.dst, IPv4Network) and r.dst.subnet_of(plane.cluster)]
    assert [(r.dst, r.gateway, r.oif) for r in ours] == [(IPv4Network("10.5.2.0/24"), IPv4Address("198.18.0.12"), oif)]
    assert (ops("route_replace") - replaced, ops("route_delete") - deleted) == (2, 1)
    assert (metrics.LEASE_ADDED.value - added, metrics.LEASE_REMOVED.value - removed) == (2, 1)
    assert metrics.LEASE_EVENT_TO_KERNEL.labels().count == observed + 1


def test_refused_changes_are_counted_as_errors_and_deletes_of_the_absent_are_not(netns: NetNS) -> None:
    oif = netns.ifindex(UNDERLAY_DEV)
    replaced, replace_errors = ops("route_replace"), errors("route_replace")
    deleted, delete_errors = ops("addr_delete"), errors("addr_delete")
    set_ops, set_errors = ops("link_set"), errors("link_set")
    with Netlink(netns.name) as nl:
        # A gateway on no connected network: the kernel refuses the route (ENETUNREACH).
        results = nl.apply([RouteReplace(IPv4Network("10.6.1.0/24"), IPv4Address("203.0.113.1"), oif),
                            RouteReplace(IPv4Network("10.6.2.0/24"), IPv4Address("198.18.0.2"), oif)])
        assert results[0] is not None and results[0].errno == errno.ENETUNREACH and results[1] is None
        with pytest.raises(NetlinkError):
            nl.delete_address(oif, IPv4Address("192.0.2.99"), 32)  # was never there: already gone
        nl.set_link_mtu(oif, 1400)
        with pytest.raises(NetlinkError) as info:
            nl.set_link_mtu(oif, 10)  # below the minimum MTU of IPv4
        assert info.value.errno == errno.EINVAL
    assert netns.ip_json("link", "show", UNDERLAY_DEV)[0]["mtu"] == 1400
    assert (ops("route_replace") - replaced, errors("route_replace") - replace_errors) == (2, 1)
    assert (ops("addr_delete") - deleted, errors("addr_delete") - delete_errors) == (1, 0)
    assert (ops("link_set") - set_ops, errors("link_set") - set_errors) == (2, 1)
