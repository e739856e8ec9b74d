"""The host-gw backend against the real kernel: lease events and reconcile, read back with ``ip -j``.

As in ``test_vxlan_network.py``: each test gets a fresh namespace with a veth underlay ``eth0``
(198.18.0.1/24), the network is built by the real ``HostGWBackend`` with a fake subnet manager, lease events
are fed to ``handle_events``/``reconcile`` directly, and every backend call runs with the thread inside the
test namespace (``Node.call``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest

from flannel.backend.base import BackendContext
from flannel.backend.hostgw import NAT_ERROR
from flannel.backend.registry import create_backend
from flannel.backend.route_network import RouteNetwork
from flannel.config import parse_network_config
from flannel.errors import FlannelError
from flannel.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.subnet.manager import WatchResult
from tests.backend_harness import FakeSubnetManager, Node, Nodes, ext_iface, stays_in_own_namespace  # noqa: F401
from tests.netns import NetNS, netns_fixture  # noqa: F401
from tests.waiting import wait_until

pytestmark = pytest.mark.root

OWN = IPv4Network("10.5.52.0/24")
OWN6 = IPv6Network("fd00:10:0:34::/64")
V6_LOCAL = "2001:db8:18::1"




@pytest.fixture
def register(netns: NetNS) -> Iterator[Callable[..., Node]]:
    nodes = Nodes(netns)

    def make(v6: bool = False) -> Node:
        text = '{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}'
        ext = ext_iface(netns)
        own = Lease(subnet=OWN)
        if v6:
            netns.ip("-6", "addr", "add", f"{V6_LOCAL}/64", "dev", "eth0", "nodad")
            text = text.replace('"Backend"', '"EnableIPv6":true,"IPv6Network":"fd00:10::/48","Backend"')
            addr6 = IPv6Address(V6_LOCAL)
            ext = dataclasses.replace(ext, iface_v6_addr=addr6, ext_v6_addr=addr6)
            own = Lease(subnet=OWN, ipv6_subnet=OWN6)
        node = nodes.register(parse_network_config(text), own, ext)
        assert isinstance(node.network, RouteNetwork)
        return node

    yield make
    nodes.close()


def peer(i: int, public: str = "198.18.0.9", backend_type: str = "host-gw", public6: str | None = None) -> Lease:
    subnet = IPv4Network(f"10.{100 + (i >> 8)}.{i & 0xFF}.0/24")
    subnet6 = IPv6Network(f"fd00:10:0:{i:x}::/64") if public6 else None
    return Lease(subnet=subnet, ipv6_subnet=subnet6,
                 attrs=LeaseAttrs(public_ip=IPv4Address(public), backend_type=backend_type,
                                  public_ipv6=IPv6Address(public6) if public6 else None))


def added(lease: Lease) -> LeaseEvent:
    return LeaseEvent(EventType.ADDED, lease)


def removed(lease: Lease) -> LeaseEvent:
    return LeaseEvent(EventType.REMOVED, lease)


def routes(ns: NetNS, *family: str) -> set[tuple[str, str, str, str]]:
    """Main-table unicast routes with a gateway, as (dst, via, dev, protocol)."""
    return {(r["dst"], r["gateway"], r["dev"], str(r.get("protocol", "")))
            for r in ns.ip_json(*family, "route", "show", "table", "main") if "gateway" in r and r["dst"] != "default"}


def route(i: int, public: str = "198.18.0.9") -> tuple[str, str, str, str]:
    return (f"10.{100 + (i >> 8)}.{i & 0xFF}.0/24", public, "eth0", "70")


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="flannel")
    return caplog


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [line for r in caplog.records if r.levelno == logging.WARNING for line in r.getMessage().splitlines()]


def test_lease_is_published_without_backend_data_and_mtu_is_the_interface_mtu(netns: NetNS,
                                                                               register: Callable[..., Node]) -> None:
    node = register()
    assert node.sm.attrs[0].to_json() == '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"host-gw"}'
    assert node.network.mtu == ext_iface(netns).mtu
    assert routes(netns) == set()  # registering programs nothing


def test_added_lease_routes_its_subnet_via_its_public_ip_and_replay_changes_nothing(
        netns: NetNS, register: Callable[..., Node], logs: pytest.LogCaptureFixture) -> None:
    node = register()
    node.events(added(peer(3)), added(peer(4, "198.18.0.10")))
    assert routes(netns) == {route(3), route(4, "198.18.0.10")}
    assert "route replace 10.100.3.0/24 via 198.18.0.9 dev eth0 proto 70" in logs.text
    logs.clear()
    node.events(added(peer(3)), added(peer(4, "198.18.0.10")))
    assert routes(netns) == {route(3), route(4, "198.18.0.10")}
    assert "route" not in logs.text, "a replayed event must not touch the kernel"


def test_removed_lease_deletes_its_route(netns: NetNS, register: Callable[..., Node]) -> None:
    node = register()
    node.events(added(peer(3)), added(peer(4)))
    node.events(removed(peer(3)))
    assert routes(netns) == {route(4)}


def test_moved_public_ip_replaces_the_gateway(netns: NetNS, register: Callable[..., Node]) -> None:
    node = register()
    node.events(added(peer(3)))
    node.events(added(peer(3, "198.18.0.20")))
    assert routes(netns) == {route(3, "198.18.0.20")}


def test_leases_of_other_backend_types_are_ignored_and_a_switched_peer_loses_its_route(
        netns: NetNS, register: Callable[..., Node], logs: pytest.LogCaptureFixture) -> None:
    node = register()
    node.events(added(peer(3)), added(peer(5, backend_type="vxlan")))
    assert routes(netns) == {route(3)}
    assert "ignoring non-host-gw lease 10.101.5.0-24" not in logs.text
    assert "ignoring non-host-gw lease 10.100.5.0-24 (BackendType 'vxlan')" in logs.text
    node.events(added(peer(3, backend_type="vxlan")))
    assert routes(netns) == set()


def test_lease_outside_the_network_is_skipped_alone(netns: NetNS, register: Callable[..., Node],
                                                    logs: pytest.LogCaptureFixture) -> None:
    node = register()
    bad = dataclasses.replace(peer(3), subnet=IPv4Network("0.0.0.0/0"))
    node.events(added(bad), added(peer(4)))
    assert routes(netns) == {route(4)}
    assert any("skipping lease 0.0.0.0-0" in w for w in warnings(logs))


def test_reconcile_restores_a_deleted_route_and_replaces_a_wrong_one(
        netns: NetNS, register: Callable[..., Node], logs: pytest.LogCaptureFixture) -> None:
    node = register()
    node.call(node.network.handle_events, [added(peer(3)), added(peer(4))])
    node.network.synced = True
    assert node.reconcile() == 0
    netns.ip("route", "del", "10.100.3.0/24")
    netns.ip("route", "replace", "10.100.4.0/24", "via", "198.18.0.66", "dev", "eth0")
    logs.clear()
    assert node.reconcile() == 2
    assert routes(netns) == {route(3), route(4)}
    assert "route replace 10.100.3.0/24 via 198.18.0.9 dev eth0 proto 70 (repair: route to 10.100.3.0/24 missing)" \
        in warnings(logs)
    assert "route replace 10.100.4.0/24 via 198.18.0.9 dev eth0 proto 70 (repair: route to 10.100.4.0/24 wrong)" \
        in warnings(logs)
    assert node.reconcile() == 0


def test_reconcile_removes_only_stale_routes_of_ours(netns: NetNS, register: Callable[..., Node]) -> None:
    foreign = {("10.77.0.0/24", "198.18.0.254", "eth0", ""),   # boot (not shown), in the network
               ("10.78.0.0/24", "198.18.0.254", "eth0", "bird"),
               ("203.0.113.0/24", "198.18.0.254", "eth0", "70")}   # our protocol, outside the network
    netns.ip("route", "add", "10.77.0.0/24", "via", "198.18.0.254", "dev", "eth0")
    netns.ip("route", "add", "10.78.0.0/24", "via", "198.18.0.254", "dev", "eth0", "proto", "bird")
    netns.ip("route", "add", "203.0.113.0/24", "via", "198.18.0.254", "dev", "eth0", "proto", "70")
    netns.ip("route", "add", "10.100.9.0/24", "via", "198.18.0.99", "dev", "eth0", "proto", "70")  # stale, ours
    node = register()
    node.events(added(peer(3)))
    assert node.reconcile() == 0, "nothing is stale before the first snapshot"
    node.network.synced = True
    assert node.reconcile() == 1
    assert routes(netns) == foreign | {route(3)}
    assert node.reconcile() == 0


def test_a_route_made_by_upstream_counts_as_present(netns: NetNS, register: Callable[..., Node]) -> None:
    netns.ip("route", "add", "10.100.3.0/24", "via", "198.18.0.9", "dev", "eth0")  # proto boot, as Go flanneld
    node = register()
    node.network.synced = True
    node.network.planes[0].desired["k"] = node.network.planes[0].route_for(peer(3))  # type: ignore[assignment]
    assert node.reconcile() == 0


def test_run_programs_the_snapshot_then_reconciles(netns: NetNS, register: Callable[..., Node]) -> None:
    node = register()
    node.network.reconcile_interval = 0.05

    async def drive() -> None:
        async def results() -> Any:
            yield WatchResult(snapshot=(peer(3),))
            await asyncio.Event().wait()  # the watch stays open, as a real one does, until run() is cancelled

        task = asyncio.create_task(node.network.run(results()))
        await wait_until(lambda: routes(netns) == {route(3)}, "the snapshot's route is programmed")
        netns.ip("route", "del", "10.100.3.0/24")
        await wait_until(lambda: routes(netns) == {route(3)}, "reconcile restores the deleted route")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    node.call(asyncio.run, drive())
    assert routes(netns) == {route(3)}


def test_ipv6_routes_via_the_public_ipv6(netns: NetNS, register: Callable[..., Node]) -> None:
    node = register(v6=True)
    assert node.sm.attrs[0].to_json() == (
        '{"PublicIP":"198.18.0.1","PublicIPv6":"2001:db8:18::1","BackendType":"host-gw"}')
    node.events(added(peer(3, public6="2001:db8:18::9")))
    assert routes(netns) == {route(3)}
    assert routes(netns, "-6") == {("fd00:10:0:3::/64", "2001:db8:18::9", "eth0", "70")}
    node.network.synced = True
    netns.ip("-6", "route", "del", "fd00:10:0:3::/64")
    assert node.reconcile() == 1
    assert routes(netns, "-6") == {("fd00:10:0:3::/64", "2001:db8:18::9", "eth0", "70")}
    node.events(removed(peer(3, public6="2001:db8:18::9")))
    assert routes(netns) == set() and routes(netns, "-6") == set()


def test_public_ip_other_than_the_interface_ip_is_refused_with_upstreams_message(netns: NetNS) -> None:
    ext = dataclasses.replace(ext_iface(netns), ext_addr=IPv4Address("203.0.113.1"))
    config = parse_network_config('{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}')
    with pytest.raises(FlannelError) as info:
        create_backend(BackendContext(subnet_manager=FakeSubnetManager(Lease(subnet=OWN)), ext_iface=ext), config)
    assert str(info.value) == ("your PublicIP differs from interface IP, meaning that probably you're on a NAT, "
                               "which is not supported by host-gw backend") == NAT_ERROR
