"""The external interface is weather (issue 15): flaps and re-creations are ridden out without a restart.

Each test runs a real network (vxlan or host-gw, built by its backend with a fake subnet manager, as in
``test_vxlan_network.py``/``test_hostgw_network.py``) through ``run()`` in a namespace whose underlay ``eth0``
is then deleted and made again (a new index, the same name and address) or set down and up. The reconcile
interval is 600 s, so only the link monitor's kicks can bring the entries back within the test; every wait
is on the kernel state read back with ``ip -j``/``bridge -j``. The time each repair took is printed (run
with ``-s`` to see it); it is observed, not asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import select
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from flannel.backend.udp import bind_socket
from flannel.config import parse_network_config
from flannel.lease import Lease
from flannel.netlink import Netlink
from flannel.netlink.nsenter import entered
from flannel.subnet.manager import WatchResult
from tests.backend_harness import Node, Nodes, stays_in_own_namespace  # noqa: F401
from tests.integration.test_hostgw_network import peer as hostgw_peer
from tests.integration.test_hostgw_network import route as hostgw_route
from tests.integration.test_hostgw_network import routes as hostgw_routes
from tests.integration.test_vxlan_network import DEV, fdbs, link_info, neighs, routes, tunnel_entries
from tests.integration.test_vxlan_network import peer as vxlan_peer
from tests.netns import UNDERLAY_IP, NetNS, netns_fixture  # noqa: F401

pytestmark = pytest.mark.root

OWN = IPv4Network("10.5.52.0/24")
DIRECT = ("10.100.3.0/24", "198.18.0.9", "eth0", False)
"""vxlan DirectRouting's route to the on-link peer number 3, as ``test_vxlan_network.routes`` reads it."""
FAR = "203.0.113.7"
"""With DirectRouting, peer number 4's public IP: behind a gateway, so tunnelled."""


@pytest.fixture
def register(netns: NetNS) -> Iterator[Callable[..., Node]]:
    """``register(backend)`` builds the network of that ``Backend`` section in ``netns``."""
    nodes = Nodes(netns)

    def make(backend: dict[str, Any]) -> Node:
        config = dataclasses.replace(parse_network_config('{"Network":"10.0.0.0/8"}'),
                                     backend_type=backend["Type"], backend=backend)
        node = nodes.register(config, Lease(subnet=OWN))
        node.network.reconcile_interval = 600.0  # only kicks can repair in a test
        return node

    yield make
    nodes.close()


def recreate_underlay(ns: NetNS) -> None:
    """Delete the veth (both ends go) and make it again: same name and address, a new index."""
    ns.ip("link", "del", "eth0")
    ns.add_underlay()


def flap_underlay(ns: NetNS) -> None:
    ns.ip("link", "set", "eth0", "down")
    ns.ip("link", "set", "eth0", "up")


def holds(check: Callable[[], object]) -> bool:
    """Whether ``check()`` passes now: it returns neither False nor raises (an assertion in it, or a device
    not there yet)."""
    try:
        return check() is not False
    except (AssertionError, IndexError, KeyError):
        return False


async def eventually(check: Callable[[], object], timeout: float = 10.0) -> float:
    """Wait until ``check()`` passes; returns how long that took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not holds(check):
        if loop.time() - start > timeout:
            check()  # fail with the check's own message
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
    return loop.time() - start


def drive(node: Node, snapshot: tuple[Lease, ...], scenario: Callable[[], Any]) -> None:
    """Run the network (fed ``snapshot``) in the namespace while ``scenario()`` plays, then stop it."""

    async def main() -> None:
        async def results() -> AsyncIterator[WatchResult]:
            yield WatchResult(snapshot=snapshot)
            await asyncio.Event().wait()

        task = asyncio.create_task(node.network.run(results()))
        try:
            await scenario()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    node.call(asyncio.run, main())  # run() opens its link monitor in the caller's namespace


def vxlan_case(ns: NetNS, direct: bool) -> tuple[tuple[Lease, ...], tuple[set[Any], set[Any], set[Any]]]:
    """Two peers and the neighbours, FDB entries and routes they need (``test_vxlan_network``'s spelling).

    Without DirectRouting both are tunnelled; with it, number 3 is on the underlay's segment (a plain route)
    and number 4 is behind a gateway (tunnelled), which ``host_routes`` puts (back) in place.
    """
    if not direct:
        entries = [tunnel_entries(3), tunnel_entries(4)]
        return (vxlan_peer(3), vxlan_peer(4)), ({e[0] for e in entries}, {e[1] for e in entries},
                                                {e[2] for e in entries})
    host_routes(ns)
    n4, f4, r4 = tunnel_entries(4, public=FAR)
    return (vxlan_peer(3), vxlan_peer(4, public=FAR)), ({n4}, {f4}, {r4, DIRECT})


def host_routes(ns: NetNS) -> None:
    """The host's own route to FAR: part of the underlay's configuration, so re-made with it."""
    ns.ip("route", "replace", "203.0.113.0/24", "via", "198.18.0.254", "dev", "eth0")


def underlay_of(ns: NetNS) -> int:
    """The index flannel.1 sits on, read from the kernel (``ip -j`` only names it)."""
    with Netlink(ns.name) as nl:
        link = nl.link_by_name(DEV)
        assert link is not None and link.vxlan is not None, "flannel.1 is missing"
        return int(link.vxlan.underlay_index)


@pytest.mark.parametrize("direct", [False, True], ids=["tunnel", "direct-routing"])
def test_vxlan_device_is_rebuilt_on_the_recreated_underlay_with_its_mac_and_entries(
        netns: NetNS, register: Callable[..., Node], direct: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flannel")
    peers, want = vxlan_case(netns, direct)
    node = register({"Type": "vxlan", "DirectRouting": direct})

    def everything() -> bool:
        assert (neighs(netns), fdbs(netns), routes(netns)) == want
        return True

    async def scenario() -> None:
        await eventually(lambda: node.network.synced and everything())
        before = link_info(netns)
        old = netns.ifindex("eth0")
        recreate_underlay(netns)
        if direct:
            host_routes(netns)
        new = netns.ifindex("eth0")
        assert new != old
        took = await eventually(lambda: underlay_of(netns) == new and everything())
        after = link_info(netns)
        assert after["ifindex"] != before["ifindex"]
        assert (after["address"], after["id"], after["local"], after["mtu"]) == (
            before["address"], before["id"], before["local"], before["mtu"])
        assert "UP" in after["flags"]
        print(f"\nvxlan {'direct' if direct else 'tunnel'}: underlay re-created, repaired in {took * 1000:.0f} ms")

    drive(node, peers, scenario)
    assert "external interface eth0 (index" in caplog.text and "following it" in caplog.text


@pytest.mark.parametrize("direct", [False, True], ids=["tunnel", "direct-routing"])
def test_vxlan_entries_are_all_back_after_the_underlay_flaps(netns: NetNS, register: Callable[..., Node],
                                                             direct: bool) -> None:
    peers, want = vxlan_case(netns, direct)
    node = register({"Type": "vxlan", "DirectRouting": direct})

    def everything() -> bool:
        assert (neighs(netns), fdbs(netns), routes(netns)) == want
        return True

    async def scenario() -> None:
        await eventually(lambda: node.network.synced and everything())
        index = link_info(netns)["ifindex"]
        flap_underlay(netns)
        if direct:
            host_routes(netns)
        took = await eventually(everything)
        assert link_info(netns)["ifindex"] == index, "a flap does not delete the device"
        print(f"\nvxlan {'direct' if direct else 'tunnel'}: underlay flapped, repaired in {took * 1000:.0f} ms")

    drive(node, peers, scenario)


@pytest.mark.parametrize("how", ["recreated", "flapped"])
def test_host_gw_routes_are_back_on_the_underlays_current_index(netns: NetNS, register: Callable[..., Node],
                                                                 how: str) -> None:
    node = register({"Type": "host-gw"})
    want = {hostgw_route(3), hostgw_route(4, "198.18.0.10")}

    async def scenario() -> None:
        await eventually(lambda: assert_equal(hostgw_routes(netns), want))
        old = netns.ifindex("eth0")
        (recreate_underlay if how == "recreated" else flap_underlay)(netns)
        new = netns.ifindex("eth0")
        assert (new != old) == (how == "recreated")
        took = await eventually(lambda: assert_equal(hostgw_routes(netns), want))
        plane = node.network.planes[0]
        assert plane.oif == new and {r.oif for r in plane.desired.values()} == {new}
        with Netlink(netns.name) as nl:
            assert {r.oif for r in nl.routes(protocol=70)} == {new}, "the kernel routes carry the new oif"
        print(f"\nhost-gw: underlay {how}, repaired in {took * 1000:.0f} ms")

    drive(node, (hostgw_peer(3), hostgw_peer(4, "198.18.0.10")), scenario)


def assert_equal(got: object, want: object) -> None:
    assert got == want, f"{got} != {want}"


def test_underlay_back_with_another_address_is_an_error_naming_both(
        netns: NetNS, register: Callable[..., Node], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flannel")
    node = register({"Type": "host-gw"})

    async def scenario() -> None:
        await eventually(lambda: assert_equal(hostgw_routes(netns), {hostgw_route(3)}))
        netns.ip("link", "del", "eth0")
        netns.add_underlay(cidr="198.18.0.7/24")
        await eventually(lambda: assert_equal(hostgw_routes(netns), {hostgw_route(3)}))
        await eventually(lambda: assert_equal(any(
            "198.18.0.7" in r.getMessage() and "PublicIP 198.18.0.1" in r.getMessage()
            for r in caplog.records if r.levelno == logging.ERROR), True))

    drive(node, (hostgw_peer(3),), scenario)
    assert node.sm.attrs[-1].public_ip == node.sm.attrs[0].public_ip, "the lease is not re-acquired"


def test_udp_socket_bound_to_the_interface_address_receives_again_after_a_recreation(netns: NetNS) -> None:
    """The udp backend binds to the interface's address, not its index: the same socket keeps working."""
    with entered(netns.name):
        sock = bind_socket(IPv4Address(UNDERLAY_IP), 8285)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock, sender:
        def round_trip(payload: bytes) -> bytes:
            sender.sendto(payload, (UNDERLAY_IP, 8285))
            assert select.select([sock], [], [], 5)[0], "nothing arrived"
            return sock.recv(100)

        assert round_trip(b"before") == b"before"
        recreate_underlay(netns)
        assert round_trip(b"after") == b"after"
