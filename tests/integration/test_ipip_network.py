"""The ipip backend against the real kernel, in a fresh namespace per test (as ``test_hostgw_network.py``).

This machine's kernel has no ipip (``CONFIG_NET_IPIP`` is not set): there the start-up error is what is
tested, and the tests that need a working ``flannel.ipip`` skip; where the kernel has it, the reverse. What
is rebuilt when the device is deleted is also unit-tested without a kernel (tests/unit/test_ipip.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from flannel.backend.base import BackendContext
from flannel.backend.ipip import DEVICE_NAME, NO_KERNEL_SUPPORT
from flannel.backend.registry import create_backend
from flannel.config import parse_network_config
from flannel.errors import FlannelError
from flannel.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.netlink.nsenter import entered
from flannel.subnet.manager import WatchResult
from tests.backend_harness import FakeSubnetManager, Node, ext_iface, stays_in_own_namespace  # noqa: F401
from tests.ipip_support import IPIP_MISSING, ipip_unavailable
from tests.netns import NetNS, netns_fixture  # noqa: F401
from tests.waiting import wait_until

pytestmark = pytest.mark.root

OWN = IPv4Network("10.5.52.0/24")


def needs_ipip() -> None:
    reason = ipip_unavailable()
    if reason:
        pytest.skip(reason)


def build(ns: NetNS, backend: str = '{"Type":"ipip"}') -> tuple[FakeSubnetManager, Any]:
    config = parse_network_config(f'{{"Network":"10.0.0.0/8","Backend":{backend}}}')
    sm = FakeSubnetManager(Lease(subnet=OWN))
    with entered(ns.name):
        backend_obj = create_backend(BackendContext(subnet_manager=sm, ext_iface=ext_iface(ns)), config)
        return sm, asyncio.run(backend_obj.register_network(config))


@pytest.fixture
def register(netns: NetNS) -> Iterator[Callable[..., Node]]:
    made: list[Node] = []

    def make(backend: str = '{"Type":"ipip"}') -> Node:
        sm, network = build(netns, backend)
        node = Node(netns, sm, network)
        made.append(node)
        return node

    yield make
    for node in made:
        node.network.nl.close()


def peer(i: int, public: str) -> Lease:
    return Lease(subnet=IPv4Network(f"10.100.{i}.0/24"),
                 attrs=LeaseAttrs(public_ip=IPv4Address(public), backend_type="ipip"))


def route_of(ns: NetNS, dst: str) -> dict[str, Any]:
    found = ns.ip_json("route", "show", dst)
    return found[0] if found else {}


def test_without_kernel_ipip_support_startup_fails_naming_it_and_acquires_no_lease(netns: NetNS) -> None:
    if ipip_unavailable() != IPIP_MISSING:
        pytest.skip("the kernel has ipip support (or namespaces are unavailable)")
    with pytest.raises(FlannelError) as info:
        build(netns)
    assert str(info.value).startswith(NO_KERNEL_SUPPORT)
    assert "Unknown device type" in str(info.value)
    assert netns.ip("link", "show", DEVICE_NAME, check=False).returncode != 0


def test_device_is_ipip_with_local_mtu_and_lease_address(register: Callable[..., Node]) -> None:
    needs_ipip()
    node = register()
    link = node.ns.ip_json("-d", "link", "show", "dev", DEVICE_NAME)[0]
    assert link["linkinfo"]["info_kind"] == "ipip" and link["mtu"] == 1480
    assert link["linkinfo"]["info_data"]["local"] == "198.18.0.1"
    addrs = node.ns.ip_json("-4", "addr", "show", "dev", DEVICE_NAME)[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs] == [("10.5.52.0", 32)]
    assert node.sm.attrs[-1].backend_type == "ipip" and node.network.mtu == 1480


def test_peer_routes_are_onlink_on_the_tunnel_and_restored_by_reconcile(register: Callable[..., Node]) -> None:
    needs_ipip()
    node = register()
    node.call(node.network.handle_events, [LeaseEvent(EventType.ADDED, peer(1, "203.0.113.9"))])
    r = route_of(node.ns, "10.100.1.0/24")
    assert (r["gateway"], r["dev"], "onlink" in r["flags"]) == ("203.0.113.9", DEVICE_NAME, True)
    node.network.synced = True
    node.ns.ip("route", "del", "10.100.1.0/24")
    assert node.call(node.network.reconcile) == 1
    assert route_of(node.ns, "10.100.1.0/24")["dev"] == DEVICE_NAME
    node.call(node.network.handle_events, [LeaseEvent(EventType.REMOVED, peer(1, "203.0.113.9"))])
    assert route_of(node.ns, "10.100.1.0/24") == {}


def test_direct_routing_sends_on_link_peers_over_eth0(register: Callable[..., Node]) -> None:
    needs_ipip()
    node = register('{"Type":"ipip","DirectRouting":true}')
    node.call(node.network.handle_events, [LeaseEvent(EventType.ADDED, peer(2, "198.18.0.9"))])
    r = route_of(node.ns, "10.100.2.0/24")
    assert (r["gateway"], r["dev"], "onlink" in r["flags"]) == ("198.18.0.9", "eth0", True)


def tunnel(ns: NetNS) -> dict[str, Any]:
    """``ip -d link show flannel.ipip``, decoded; empty when there is no such device."""
    if ns.ip("link", "show", DEVICE_NAME, check=False).returncode != 0:
        return {}
    found: dict[str, Any] = ns.ip_json("-d", "link", "show", "dev", DEVICE_NAME)[0]
    return found


def assert_rebuilt(node: Node, old_index: int) -> None:
    """The device is back as it was made (new index), with its /32, and the peer route goes via it."""
    link = tunnel(node.ns)
    assert link["ifindex"] != old_index and link["ifindex"] == node.network.plane.tunnel_index
    assert link["linkinfo"]["info_kind"] == "ipip" and link["linkinfo"]["info_data"]["local"] == "198.18.0.1"
    assert link["mtu"] == 1480 and "UP" in link["flags"]
    addrs = node.ns.ip_json("-4", "addr", "show", "dev", DEVICE_NAME)[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs] == [("10.5.52.0", 32)]
    r = route_of(node.ns, "10.100.1.0/24")
    assert (r["gateway"], r["dev"], "onlink" in r["flags"]) == ("203.0.113.9", DEVICE_NAME, True)
    assert {route.oif for route in node.network.plane.desired.values()} == {link["ifindex"]}


def test_a_deleted_device_is_rebuilt_by_reconcile_and_the_routes_follow_it(register: Callable[..., Node]) -> None:
    needs_ipip()
    node = register()
    old = tunnel(node.ns)["ifindex"]
    node.call(node.network.handle_events, [LeaseEvent(EventType.ADDED, peer(1, "203.0.113.9"))])
    node.network.synced = True
    node.ns.ip("link", "del", DEVICE_NAME)
    assert route_of(node.ns, "10.100.1.0/24") == {}, "the kernel drops the routes with the device"
    assert node.call(node.network.reconcile) == 2  # the device, then the route
    assert_rebuilt(node, old)
    assert node.call(node.network.reconcile) == 0


def test_a_running_network_rebuilds_a_deleted_device_on_the_link_event(register: Callable[..., Node]) -> None:
    needs_ipip()
    node = register()
    network = node.network
    network.reconcile_interval = 3600.0  # so only the link event can be what repairs it
    old = tunnel(node.ns)["ifindex"]

    def rebuilt() -> bool:
        link = tunnel(node.ns)
        return bool(link) and link["ifindex"] != old and route_of(node.ns, "10.100.1.0/24").get("dev") == DEVICE_NAME

    async def scenario() -> None:
        stop = asyncio.Event()

        async def watch() -> Any:
            yield WatchResult(snapshot=(peer(1, "203.0.113.9"),))
            await stop.wait()

        task = asyncio.create_task(network.run(watch()))
        try:
            # The snapshot programmed (so the link monitor is open).
            await wait_until(lambda: route_of(node.ns, "10.100.1.0/24"), "the peer's route", timeout=30)
            node.ns.ip("link", "del", DEVICE_NAME)
            await wait_until(rebuilt, "the tunnel rebuilt with its route", timeout=30)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    node.call(asyncio.run, scenario())
    assert_rebuilt(node, old)
