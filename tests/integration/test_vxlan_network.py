"""The vxlan backend against the real kernel: registration, lease events and reconcile, read back with ``ip -j``.

Each test gets a fresh namespace (``tests.netns``) with a veth underlay ``eth0`` (198.18.0.1/24). The network
is built through the real ``VXLANBackend(ctx, config).register_network(config)``, with a fake
``SubnetManager`` that hands out a fixed lease, and lease events are fed to ``handle_events``/``reconcile``
directly: no etcd. Only the link-monitor test drives ``run()``, with an in-test stream of watch results.

How the backend ends up in the namespace: it opens ``Netlink()`` in the *caller's* namespace and writes the
device's ``accept_ra`` sysctl through /proc, which is also resolved in the caller's namespace. So every call
into the backend goes through ``Node.call``, which runs it with this thread moved into the test namespace by
``flannel.netlink.nsenter.entered`` (setns there, setns back in a ``finally``). The Netlink socket stays bound
to the namespace it was created in, so later calls would be safe anyway, but a recreated device writes
``accept_ra`` again, and that must never reach the root namespace. The autouse fixture
``stays_in_own_namespace`` (tests.backend_harness) checks the thread is back home after every test. Reading back
uses ``ip -n``/``ip netns exec``, which name the namespace explicitly and so work from anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from flannel.backend.route_plane import DETAILED_BATCH
from flannel.backend.vxlan_plane import ROWS_PER_STEP
from flannel.config import parse_network_config
from flannel.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.subnet.manager import WatchResult
from tests.backend_harness import Node, Nodes, stays_in_own_namespace  # noqa: F401
from tests.netns import UNDERLAY_IP, NetNS, netns_fixture  # noqa: F401
from tests.waiting import wait_until

pytestmark = pytest.mark.root

DEV = "flannel.1"
CLUSTER = "10.0.0.0/8"
OWN = IPv4Network("10.5.52.0/24")
PEER_PUBLIC = "198.18.0.9"


# -- the network under test ------------------------------------------------------------------------------


RegisterFn = Callable[..., Node]


@pytest.fixture(name="register")
def register_fixture(netns: NetNS) -> Iterator[RegisterFn]:
    """``register(backend={...})`` builds the network in ``netns``; its netlink socket is closed afterwards."""
    nodes = Nodes(netns)

    def make(backend: dict[str, Any] | None = None) -> Node:
        backend = backend if backend is not None else {"Type": "vxlan"}
        config = dataclasses.replace(parse_network_config(f'{{"Network":"{CLUSTER}"}}'),
                                     backend_type="vxlan", backend=backend)
        return nodes.register(config, Lease(subnet=OWN))

    yield make
    nodes.close()


def mac_of(i: int) -> str:
    return f"0a:58:00:{i >> 16 & 0xFF:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}"


def peer(i: int, public: str = PEER_PUBLIC, mac: str | None = None, data: str | None = None,
         backend_type: str = "vxlan") -> Lease:
    """Remote lease number ``i``: subnet 10.<100+i/256>.<i%256>.0/24, never the own 10.5.52.0/24."""
    mac = mac or mac_of(i)
    data = data if data is not None else f'{{"VNI":1,"VtepMAC":"{mac}"}}'
    subnet = IPv4Network(f"10.{100 + (i >> 8)}.{i & 0xFF}.0/24")
    return Lease(subnet=subnet, attrs=LeaseAttrs(public_ip=IPv4Address(public), backend_type=backend_type,
                                                 backend_data=data))


def added(lease: Lease) -> LeaseEvent:
    return LeaseEvent(EventType.ADDED, lease)


def removed(lease: Lease) -> LeaseEvent:
    return LeaseEvent(EventType.REMOVED, lease)


# -- reading the kernel back ----------------------------------------------------------------------------


def link_info(ns: NetNS) -> dict[str, Any]:
    link = ns.ip_json("-d", "link", "show", "dev", DEV)[0]
    return dict(link, **link["linkinfo"]["info_data"], kind=link["linkinfo"]["info_kind"])


def inet_addrs(ns: NetNS) -> list[tuple[str, int]]:
    addrs = ns.ip_json("-4", "addr", "show", "dev", DEV)[0]["addr_info"]
    return [(a["local"], a["prefixlen"]) for a in addrs]


def neighs(ns: NetNS) -> set[tuple[str, str, str]]:
    return {(n["dst"], n["lladdr"], ",".join(n["state"])) for n in ns.ip_json("neigh", "show", "dev", DEV)}


def fdbs(ns: NetNS) -> set[tuple[str, str, str, bool]]:
    return {(f["mac"], f["dst"], f["state"], "self" in f["flags"])
            for f in ns.bridge_json("fdb", "show", "dev", DEV)}


def routes(ns: NetNS) -> set[tuple[str, str, str, bool]]:
    """Main-table routes to 10/8 (plus any on the device), as (dst, via, dev, onlink)."""
    out = set()
    for r in ns.ip_json("route", "show", "table", "main"):
        if r["dst"].startswith("10.") or r.get("dev") == DEV:
            out.add((r["dst"], r.get("gateway", ""), r["dev"], "onlink" in r.get("flags", [])))
    return out


def nh_of(i: int) -> int:
    """The nexthop object id of peer ``i``'s route: its gateway (the subnet's network address) as a number."""
    return int(IPv4Address(f"10.{100 + (i >> 8)}.{i & 0xFF}.0"))


def route_lines(i: int) -> list[str]:
    """The log lines of peer ``i``'s route, programmed through a nexthop object (the default)."""
    gw = f"10.{100 + (i >> 8)}.{i & 0xFF}.0"
    return [f"nexthop replace id {nh_of(i)} via {gw} dev flannel.1 onlink", f"route replace {gw}/24 nhid {nh_of(i)}"]


def tunnel_entries(i: int, public: str = PEER_PUBLIC) -> tuple[Any, Any, Any]:
    """The neighbour, FDB entry and route one tunnelled peer must have."""
    lease = peer(i)
    assert lease.subnet is not None
    gw, mac = str(lease.subnet.network_address), mac_of(i)
    return (gw, mac, "PERMANENT"), (mac, public, "permanent", True), (str(lease.subnet), gw, DEV, True)


def expect_tunnel(ns: NetNS, *peers: int, public: str = PEER_PUBLIC) -> None:
    want = [tunnel_entries(i, public) for i in peers]
    assert neighs(ns) == {w[0] for w in want}
    assert fdbs(ns) == {w[1] for w in want}
    assert routes(ns) == {w[2] for w in want}


def log_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [line for r in caplog.records if r.levelno == level for line in r.getMessage().splitlines()]


@pytest.fixture(name="logs")
def logs_fixture(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="flannel")
    return caplog


# -- 1. registration --------------------------------------------------------------------------------------


def test_register_creates_the_device_and_publishes_its_mac(netns: NetNS, register: RegisterFn) -> None:
    netns.ip("link", "set", "eth0", "mtu", "1400")
    node = register({"Type": "vxlan", "Port": 4789})

    got = link_info(netns)
    assert got["kind"] == "vxlan" and got["id"] == 1 and got["link"] == "eth0"
    assert (got["local"], got["learning"], got["port"]) == (UNDERLAY_IP, False, 4789)
    assert got["mtu"] == 1400 - 50 == node.network.mtu
    assert "UP" in got["flags"]
    assert inet_addrs(netns) == [("10.5.52.0", 32)]
    accept_ra = netns.run(["cat", f"/proc/sys/net/ipv6/conf/{DEV}/accept_ra"]).stdout.strip()
    assert accept_ra == "0"  # written inside the namespace, not the root one

    mac = got["address"]
    [attrs] = node.sm.attrs
    assert attrs == LeaseAttrs(public_ip=IPv4Address(UNDERLAY_IP), backend_type="vxlan",
                               backend_data=f'{{"VNI":1,"VtepMAC":"{mac}"}}')
    assert attrs.to_json() == (f'{{"PublicIP":"{UNDERLAY_IP}","PublicIPv6":null,"BackendType":"vxlan",'
                               f'"BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}')
    assert node.network.lease.subnet == OWN and node.network.lease.attrs == attrs


def test_default_port_is_8472(netns: NetNS, register: RegisterFn) -> None:
    register()
    assert link_info(netns)["port"] == 8472


# -- 2. adopting or replacing an existing device ----------------------------------------------------------


def _precreate(ns: NetNS, vni: int, mac: str) -> int:
    ns.ip("link", "add", DEV, "address", mac, "mtu", "1200", "type", "vxlan", "id", str(vni), "dev", "eth0",
          "local", UNDERLAY_IP, "dstport", "8472", "nolearning")
    return ns.ifindex(DEV)


def test_compatible_device_is_adopted_with_its_mac(netns: NetNS, register: RegisterFn,
                                                   logs: pytest.LogCaptureFixture) -> None:
    index = _precreate(netns, 1, "0a:58:aa:bb:cc:01")
    netns.ip("addr", "add", "10.5.51.0/32", "dev", DEV)  # a previous lease's address: inside the cluster
    netns.ip("addr", "add", "192.168.1.1/24", "dev", DEV)  # not flannel's business
    node = register()
    got = link_info(netns)
    assert (got["ifindex"], got["address"]) == (index, "0a:58:aa:bb:cc:01")
    assert sorted(inet_addrs(netns)) == [("10.5.52.0", 32), ("192.168.1.1", 24)]
    assert got["mtu"] == 1450 and "UP" in got["flags"]  # the MTU is corrected in place
    assert node.sm.attrs[0].backend_data == '{"VNI":1,"VtepMAC":"0a:58:aa:bb:cc:01"}'
    assert any("adopting existing vxlan device flannel.1" in line for line in log_lines(logs, logging.INFO))


def test_device_with_another_vni_is_replaced(netns: NetNS, register: RegisterFn,
                                             logs: pytest.LogCaptureFixture) -> None:
    index = _precreate(netns, 2, "0a:58:aa:bb:cc:02")
    node = register()
    got = link_info(netns)
    # Replaced, but with the MAC peers already know (a Go-made device with another local address keeps it too).
    assert got["id"] == 1 and got["ifindex"] != index and got["address"] == "0a:58:aa:bb:cc:02"
    assert node.sm.attrs[0].backend_data == f'{{"VNI":1,"VtepMAC":"{got["address"]}"}}'
    assert any("cannot be adopted: its VNI is 2, want 1" in line for line in log_lines(logs, logging.WARNING))


# -- 3. lease events --------------------------------------------------------------------------------------


def test_added_lease_programs_neighbour_fdb_and_onlink_route(netns: NetNS, register: RegisterFn,
                                                             logs: pytest.LogCaptureFixture) -> None:
    node = register()
    node.events(added(peer(3)))
    expect_tunnel(netns, 3)
    assert log_lines(logs, logging.INFO)[-4:] == [
        f"neigh replace 10.100.3.0 lladdr {mac_of(3)} dev flannel.1 nud permanent",
        f"fdb replace {mac_of(3)} dev flannel.1 dst {PEER_PUBLIC} self permanent",
        *route_lines(3),
    ]

    logs.clear()
    node.events(added(peer(3)))
    assert log_lines(logs, logging.INFO) == []
    expect_tunnel(netns, 3)


def test_changed_vtep_mac_replaces_neighbour_and_fdb(netns: NetNS, register: RegisterFn,
                                                     logs: pytest.LogCaptureFixture) -> None:
    node = register()
    node.events(added(peer(3)))
    logs.clear()
    node.events(added(peer(3, mac="0a:58:ff:ff:ff:03")))
    assert neighs(netns) == {("10.100.3.0", "0a:58:ff:ff:ff:03", "PERMANENT")}
    assert fdbs(netns) == {("0a:58:ff:ff:ff:03", PEER_PUBLIC, "permanent", True)}
    assert routes(netns) == {("10.100.3.0/24", "10.100.3.0", DEV, True)}
    assert f"fdb del {mac_of(3)} dev flannel.1 dst {PEER_PUBLIC} self" in log_lines(logs, logging.INFO)


def test_moved_public_ip_moves_the_fdb_entry(netns: NetNS, register: RegisterFn) -> None:
    node = register()
    node.events(added(peer(3)))
    node.events(added(peer(3, public="198.18.0.77")))
    expect_tunnel(netns, 3, public="198.18.0.77")


def test_removed_lease_deletes_all_three_entries(netns: NetNS, register: RegisterFn) -> None:
    node = register()
    node.events(added(peer(3)), added(peer(4)))
    node.events(removed(peer(3)))
    expect_tunnel(netns, 4)


def test_lease_of_another_backend_type_is_ignored(netns: NetNS, register: RegisterFn,
                                                  logs: pytest.LogCaptureFixture) -> None:
    node = register()
    node.events(added(peer(3, backend_type="host-gw")))
    expect_tunnel(netns)
    assert any("ignoring non-vxlan lease 10.100.3.0-24" in line for line in log_lines(logs, logging.INFO))


def test_peer_switching_to_another_backend_loses_its_vxlan_entries(netns: NetNS, register: RegisterFn) -> None:
    node = register()
    node.events(added(peer(3)), added(peer(4)))
    node.events(added(peer(3, backend_type="host-gw")))
    expect_tunnel(netns, 4)


@pytest.mark.parametrize("data", ['{"VNI":1}', '{"VNI":1,"VtepMAC":"not-a-mac"}', "[1]"])
def test_malformed_backend_data_skips_only_that_lease(netns: NetNS, register: RegisterFn,
                                                      logs: pytest.LogCaptureFixture, data: str) -> None:
    node = register()
    node.events(added(peer(3)), added(peer(4)))
    node.events(added(peer(5, data=data)), added(peer(4, data=data)))
    expect_tunnel(netns, 3, 4)  # 5 never programmed; 4 keeps the entries of its last good version
    warnings = log_lines(logs, logging.WARNING)
    assert any("skipping lease 10.100.5.0-24" in w and "BackendData" in w for w in warnings)
    assert any("skipping lease 10.100.4.0-24" in w for w in warnings)


def test_own_lease_is_filtered_by_the_tracker(netns: NetNS, register: RegisterFn) -> None:
    node = register()
    own = node.network.lease
    node.apply(WatchResult(events=((True, own),)))
    node.apply(WatchResult(snapshot=(own, peer(3))))
    expect_tunnel(netns, 3)
    node.apply(WatchResult(events=((False, own),)))
    expect_tunnel(netns, 3)


# -- 4. reconcile -----------------------------------------------------------------------------------------


def test_reconcile_restores_entries_deleted_by_hand(netns: NetNS, register: RegisterFn,
                                                    logs: pytest.LogCaptureFixture) -> None:
    node = register()
    node.apply(WatchResult(snapshot=(peer(3), peer(4))))
    node.network.synced = True
    netns.ip("route", "del", "10.100.3.0/24")
    netns.ip("neigh", "del", "10.100.4.0", "dev", DEV)
    logs.clear()
    assert node.reconcile() == 2
    expect_tunnel(netns, 3, 4)
    warnings = log_lines(logs, logging.WARNING)
    assert f"neigh replace 10.100.4.0 lladdr {mac_of(4)} dev flannel.1 nud permanent " \
           "(repair: neighbour 10.100.4.0 missing)" in warnings
    assert f"{route_lines(3)[1]} (repair: route to 10.100.3.0/24 missing)" in warnings
    assert node.reconcile() == 0


def test_stale_entries_are_removed_only_after_the_first_snapshot(netns: NetNS, register: RegisterFn,
                                                                 logs: pytest.LogCaptureFixture) -> None:
    node = register()
    stale_mac = "0a:58:de:ad:00:09"
    netns.ip("neigh", "replace", "10.9.9.0", "lladdr", stale_mac, "dev", DEV, "nud", "permanent")
    netns.run(["bridge", "fdb", "append", stale_mac, "dev", DEV, "dst", "198.18.0.99", "self", "permanent"])
    netns.ip("route", "replace", "10.9.9.0/24", "via", "10.9.9.0", "dev", DEV, "onlink")
    netns.ip("route", "replace", "192.168.77.0/24", "dev", DEV)  # on the device, outside the cluster network
    node.events(added(peer(3)))
    stale = ({("10.9.9.0", stale_mac, "PERMANENT")}, {(stale_mac, "198.18.0.99", "permanent", True)},
             {("10.9.9.0/24", "10.9.9.0", DEV, True), ("192.168.77.0/24", "", DEV, False)})
    want = tunnel_entries(3)

    assert node.reconcile() == 0  # no snapshot yet: unknown entries may belong to leases still to come
    assert (neighs(netns), fdbs(netns), routes(netns)) == tuple({w} | s for w, s in zip(want, stale, strict=True))

    node.network.synced = True
    logs.clear()
    assert node.reconcile() == 3
    assert (neighs(netns), fdbs(netns)) == ({want[0]}, {want[1]})
    assert routes(netns) == {want[2], ("192.168.77.0/24", "", DEV, False)}
    warnings = log_lines(logs, logging.WARNING)
    assert any(w.endswith("(repair: stale neighbour 10.9.9.0)") for w in warnings)
    assert any(w.endswith(f"(repair: stale fdb entry {stale_mac})") for w in warnings)
    assert any(w.endswith("(repair: stale route to 10.9.9.0/24)") for w in warnings)


def test_entries_changed_by_hand_are_put_back(netns: NetNS, register: RegisterFn,
                                              logs: pytest.LogCaptureFixture) -> None:
    node = register()
    node.apply(WatchResult(snapshot=(peer(3),)))
    node.network.synced = True
    netns.run(["bridge", "fdb", "replace", mac_of(3), "dev", DEV, "dst", "198.18.0.99", "self", "permanent"])
    netns.ip("neigh", "replace", "10.100.3.0", "lladdr", "0a:58:de:ad:00:03", "dev", DEV, "nud", "permanent")
    netns.ip("route", "replace", "10.100.3.0/24", "via", "198.18.0.3", "dev", "eth0")
    logs.clear()
    assert node.reconcile() == 3
    expect_tunnel(netns, 3)
    warnings = " ".join(log_lines(logs, logging.WARNING))
    for what in ("neighbour 10.100.3.0 wrong", f"fdb entry {mac_of(3)} wrong", "route to 10.100.3.0/24 wrong"):
        assert f"(repair: {what})" in warnings


def test_device_deleted_by_hand_is_recreated_with_its_mac_and_entries(netns: NetNS, register: RegisterFn,
                                                                      logs: pytest.LogCaptureFixture) -> None:
    node = register()
    node.apply(WatchResult(snapshot=(peer(3), peer(4))))
    node.network.synced = True
    before = link_info(netns)
    netns.ip("link", "del", DEV)
    assert node.reconcile() == 1 + 8  # the device, then each peer's neighbour, FDB entry, nexthop and route
    after = link_info(netns)
    assert after["ifindex"] != before["ifindex"]
    assert (after["address"], after["mtu"], after["id"], after["local"]) == (
        before["address"], before["mtu"], 1, UNDERLAY_IP)
    assert "UP" in after["flags"]
    assert inet_addrs(netns) == [("10.5.52.0", 32)]
    expect_tunnel(netns, 3, 4)
    assert any(f"device flannel.1 is missing; recreating it with mac {before['address']}" in w
               for w in log_lines(logs, logging.WARNING))
    assert node.reconcile() == 0


@pytest.mark.parametrize("how", ["recreated by hand", "changed in place"])
def test_device_with_another_mac_than_advertised_is_replaced(netns: NetNS, register: RegisterFn, how: str) -> None:
    node = register()
    node.apply(WatchResult(snapshot=(peer(3),)))
    node.network.synced = True
    mac = link_info(netns)["address"]
    if how == "recreated by hand":
        netns.ip("link", "del", DEV)
        _precreate(netns, 1, "0a:58:aa:bb:cc:09")
    else:
        netns.ip("link", "set", DEV, "address", "0a:58:aa:bb:cc:09")
    assert node.reconcile() >= 1
    assert link_info(netns)["address"] == mac  # peers send to the MAC in our lease: the device must have it
    assert inet_addrs(netns) == [("10.5.52.0", 32)]
    expect_tunnel(netns, 3)


def test_run_recreates_a_deleted_device_as_soon_as_the_link_monitor_sees_it(netns: NetNS,
                                                                            register: RegisterFn) -> None:
    node = register()
    node.network.reconcile_interval = 600.0  # only the link monitor can trigger a repair within the test

    def has_device() -> bool:
        return netns.ip("link", "show", "dev", DEV, check=False).returncode == 0

    async def scenario() -> None:
        async def results() -> AsyncIterator[WatchResult]:
            yield WatchResult(snapshot=(peer(3),))
            await asyncio.Event().wait()

        task = asyncio.create_task(node.network.run(results()))
        try:
            await wait_until(lambda: node.network.synced and len(routes(netns)) == 1, "the snapshot programmed",
                             timeout=30)
            mac = link_info(netns)["address"]
            netns.ip("link", "del", DEV)
            await wait_until(lambda: has_device() and len(routes(netns)) == 1, "the device and its route back",
                             timeout=30)
            assert link_info(netns)["address"] == mac
            expect_tunnel(netns, 3)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # The whole loop runs in the namespace: run() opens its link monitor in the caller's namespace.
    node.call(asyncio.run, scenario())


# -- 5. DirectRouting -------------------------------------------------------------------------------------


def test_direct_routing_uses_the_underlay_for_on_link_peers_only(netns: NetNS, register: RegisterFn) -> None:
    netns.ip("route", "add", "203.0.113.0/24", "via", "198.18.0.254", "dev", "eth0")
    node = register({"Type": "vxlan", "DirectRouting": True})
    node.events(added(peer(3, public="198.18.0.5")), added(peer(4, public="203.0.113.7")))
    direct = ("10.100.3.0/24", "198.18.0.5", "eth0", False)
    n4, f4, r4 = tunnel_entries(4, public="203.0.113.7")
    assert (neighs(netns), fdbs(netns), routes(netns)) == ({n4}, {f4}, {direct, r4})

    node.network.synced = True
    netns.ip("route", "del", "10.100.3.0/24")
    assert node.reconcile() == 1
    assert routes(netns) == {direct, r4}

    node.events(removed(peer(3, public="198.18.0.5")))
    assert (neighs(netns), fdbs(netns), routes(netns)) == ({n4}, {f4}, {r4})


def test_direct_routing_follows_a_peer_moving_on_and_off_link(netns: NetNS, register: RegisterFn) -> None:
    netns.ip("route", "add", "203.0.113.0/24", "via", "198.18.0.254", "dev", "eth0")
    node = register({"Type": "vxlan", "DirectRouting": True})
    node.events(added(peer(3, public="203.0.113.7")))
    expect_tunnel(netns, 3, public="203.0.113.7")
    node.events(added(peer(3, public="198.18.0.5")))
    assert (neighs(netns), fdbs(netns)) == (set(), set())
    assert routes(netns) == {("10.100.3.0/24", "198.18.0.5", "eth0", False)}
    node.events(added(peer(3, public="203.0.113.7")))
    expect_tunnel(netns, 3, public="203.0.113.7")


class RouteListings:
    """Records every ``Netlink.routes`` call of a node, to tell filtered listings from whole-table ones."""

    def __init__(self, node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict[str, Any]] = []
        real = node.network.nl.routes

        def spy(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(node.network.nl, "routes", spy)

    @property
    def whole_table(self) -> int:
        """Listings the kernel does not filter (by device, or by our route protocol)."""
        return sum(1 for kw in self.calls if kw.get("oif") is None and not kw.get("protocol"))


def test_reconcile_on_a_host_with_a_big_routing_table_lists_only_the_device_routes(
        netns: NetNS, register: RegisterFn, monkeypatch: pytest.MonkeyPatch) -> None:
    netns.ip("route", "add", "203.0.113.0/24", "via", "198.18.0.254", "dev", "eth0")
    bgp = (f"route add 100.{i >> 8 & 0xFF}.{i & 0xFF}.0/24 via 198.18.0.254 proto bird" for i in range(20000))
    netns.run(["ip", "-batch", "-"], input="\n".join(bgp) + "\n")
    netns.ip("route", "add", "10.77.0.0/24", "via", "198.18.0.254", "proto", "bird")  # in 10/8, not ours
    node = register({"Type": "vxlan", "DirectRouting": True})
    node.apply(WatchResult(snapshot=(peer(3, public="198.18.0.5"), peer(4, public="203.0.113.7"))))
    node.network.synced = True
    netns.ip("route", "replace", "10.9.9.0/24", "via", "10.9.9.0", "dev", DEV, "onlink")
    listings = RouteListings(node, monkeypatch)
    assert node.reconcile() == 1
    assert ("10.9.9.0/24", "10.9.9.0", DEV, True) not in routes(netns)
    assert ("10.77.0.0/24", "198.18.0.254", "eth0", False) in routes(netns)
    assert node.reconcile() == 0
    assert listings.calls and listings.whole_table == 0


def test_direct_route_changed_by_hand_is_put_back_without_listing_the_table(
        netns: NetNS, register: RegisterFn, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    node = register({"Type": "vxlan", "DirectRouting": True})
    node.apply(WatchResult(snapshot=(peer(3, public="198.18.0.5"),)))
    node.network.synced = True
    direct = ("10.100.3.0/24", "198.18.0.5", "eth0", False)
    listings = RouteListings(node, monkeypatch)
    netns.ip("route", "replace", "10.100.3.0/24", "via", "198.18.0.6")
    logs.clear()
    assert node.reconcile() == 1
    assert routes(netns) == {direct}
    assert "route replace 10.100.3.0/24 via 198.18.0.5 proto 70 (repair: route to 10.100.3.0/24 wrong)" \
           in log_lines(logs, logging.WARNING)
    assert listings.whole_table == 0
    # A missing one is told from a hidden one only by the table: listed then, and only then.
    netns.ip("route", "del", "10.100.3.0/24")
    assert node.reconcile() == 1 and routes(netns) == {direct}
    assert listings.whole_table == 1
    assert node.reconcile() == 0 and listings.whole_table == 1


@pytest.mark.parametrize("hider", ["policy rule", "more specific route"])
def test_direct_route_hidden_from_lookups_is_not_repaired_again_and_again(netns: NetNS, register: RegisterFn,
                                                                          hider: str) -> None:
    node = register({"Type": "vxlan", "DirectRouting": True})
    node.apply(WatchResult(snapshot=(peer(3, public="198.18.0.5"),)))
    node.network.synced = True
    if hider == "policy rule":
        netns.ip("route", "add", "10.100.3.0/24", "via", "198.18.0.6", "table", "100")
        netns.ip("rule", "add", "to", "10.100.3.0/24", "lookup", "100", "pref", "100")
    else:
        netns.ip("route", "add", "10.100.3.0/25", "via", "198.18.0.6")
    assert node.reconcile() == 0
    assert node.reconcile() == 0
    assert ("10.100.3.0/24", "198.18.0.5", "eth0", False) in routes(netns)


# -- 6. thousands of peers --------------------------------------------------------------------------------


def test_two_thousand_peers_in_one_snapshot_then_half_removed(netns: NetNS, register: RegisterFn) -> None:
    node = register()
    peers = [peer(i, public=f"198.18.{1 + (i >> 8)}.{i & 0xFF}") for i in range(2000)]
    node.apply(WatchResult(snapshot=tuple(peers)))
    assert len(neighs(netns)) == len(fdbs(netns)) == len(routes(netns)) == 2000
    assert node.network.peers == 2000

    node.network.synced = True
    assert node.reconcile() == 0

    node.apply(WatchResult(snapshot=tuple(peers[::2])))
    kept = {str(p.subnet) for p in peers[::2]}
    assert {r[0] for r in routes(netns)} == kept
    assert {n[0] for n in neighs(netns)} == {str(p.subnet.network_address) for p in peers[::2] if p.subnet}
    assert {f[0] for f in fdbs(netns)} == {mac_of(i) for i in range(0, 2000, 2)}
    assert node.network.peers == 1000


def test_a_large_batch_is_one_line_of_counts_at_info_and_one_line_per_change_at_debug(
        netns: NetNS, register: RegisterFn, logs: pytest.LogCaptureFixture) -> None:
    node = register()
    node.apply(WatchResult(snapshot=tuple(peer(i) for i in range(DETAILED_BATCH))))  # 400 changes
    info = log_lines(logs, logging.INFO)
    assert "applied 400 kernel changes (100 neigh replace, 100 fdb replace, 100 nexthop replace, " \
           "100 route via nexthop); each is logged at -v 4" in info
    assert not any(line.startswith("route replace") for line in info)
    logs.clear()
    logs.set_level(logging.DEBUG, logger="flannel")
    node.apply(WatchResult(snapshot=tuple(peer(i) for i in range(DETAILED_BATCH, 2 * DETAILED_BATCH))))
    debug = log_lines(logs, logging.DEBUG)
    assert sum(line.startswith("route replace") for line in debug) == DETAILED_BATCH
    node.events(added(peer(3, public="198.18.0.99")))  # small batches stay one INFO line per change
    assert f"fdb replace {mac_of(3)} dev flannel.1 dst 198.18.0.99 self permanent" in log_lines(logs, logging.INFO)


def test_lease_events_between_reconcile_steps_are_neither_undone_nor_reported_as_drift(
        netns: NetNS, register: RegisterFn, logs: pytest.LogCaptureFixture) -> None:
    """A stepped reconcile pauses inside each table's listing (more than ``ROWS_PER_STEP`` entries): events
    handled at the pauses add, remove and move peers the listing shows as they were. Only the drift made by
    hand on peers no event touches is repaired, and nothing an event wrote or removed is undone."""
    node = register()
    peers = {i: peer(i, public=f"198.18.{1 + (i >> 8)}.{i & 0xFF}") for i in range(ROWS_PER_STEP * 2 + 500)}
    node.apply(WatchResult(snapshot=tuple(peers.values())))
    node.network.synced = True
    netns.ip("neigh", "del", "10.100.11.0", "dev", DEV)  # drift by hand on peers removed during that table's step
    netns.run(["bridge", "fdb", "del", mac_of(12), "dev", DEV, "dst", "198.18.1.12", "self"])
    netns.ip("route", "del", "10.100.10.0/24")
    netns.ip("nexthop", "del", "id", str(nh_of(14)))  # (its route goes with it)
    netns.ip("route", "del", "10.100.13.0/24")  # drift by hand on a peer no event touches
    # Pauses: 1 before the neighbours, 2-3 inside them, 4 before the FDB, 5-6 inside it, 7 before the nexthops,
    # 8-9 inside them, 10 before the routes, 11-12 inside them (2500 entries in steps of 1000).
    removed_inside = {2: 11, 5: 12, 8: 14, 11: 10}
    logs.clear()

    steps = node.call(node.network.reconcile_steps)
    pauses = 0
    while True:
        try:
            node.call(next, steps)
        except StopIteration as done:
            repairs = done.value
            break
        pauses += 1
        new = peer(9000 + pauses, public="198.18.200.1")
        gone = peers.pop(20 + pauses)
        moved = peers[40 + pauses] = peer(40 + pauses, public="198.18.201.1")
        peers[9000 + pauses] = new
        events = [added(new), removed(gone), added(moved)]
        if pauses in removed_inside:
            events.append(removed(peers.pop(removed_inside[pauses])))
        node.events(*events)

    assert pauses == 12
    assert repairs == 1
    repaired = [line for line in log_lines(logs, logging.WARNING) if "(repair:" in line]
    assert len(repaired) == 1 and "10.100.13.0/24" in repaired[0]
    assert {r[0] for r in routes(netns)} == {str(p.subnet) for p in peers.values()}
    assert {n[0] for n in neighs(netns)} == {str(p.subnet.network_address) for p in peers.values() if p.subnet}
    assert {(f[0], f[1]) for f in fdbs(netns)} == {
        (mac_of(i), str(p.attrs.public_ip)) for i, p in peers.items()}
    assert node.reconcile() == 0


# -- 7. hardening against bad records and odd kernels ---------------------------------------------------


@pytest.mark.parametrize("subnet", ["0.0.0.0/0", "10.0.0.0/8", "192.168.7.0/24", str(OWN)])
def test_lease_outside_the_cluster_or_on_our_subnet_is_never_routed(netns: NetNS, register: RegisterFn,
                                                                   logs: pytest.LogCaptureFixture,
                                                                   subnet: str) -> None:
    netns.ip("route", "add", "default", "via", "198.18.0.254", "dev", "eth0")
    node = register()
    node.events(added(peer(3)))
    bad = dataclasses.replace(peer(4), subnet=IPv4Network(subnet))
    node.events(added(bad))
    expect_tunnel(netns, 3)
    assert netns.ip("route", "show", "default").stdout.strip() == "default via 198.18.0.254 dev eth0"
    assert any("is not a peer subnet" in line for line in log_lines(logs, logging.WARNING))


def test_direct_routing_peer_behind_a_blackhole_route_is_tunnelled_not_fatal(netns: NetNS,
                                                                            register: RegisterFn) -> None:
    netns.ip("route", "add", "blackhole", "203.0.113.0/24")
    node = register({"Type": "vxlan", "DirectRouting": True})
    node.events(added(peer(3, public="203.0.113.7")), added(peer(4, public="198.18.0.5")))
    n3, f3, r3 = tunnel_entries(3, public="203.0.113.7")
    assert (neighs(netns), fdbs(netns)) == ({n3}, {f3})
    assert r3 in routes(netns) and ("10.100.4.0/24", "198.18.0.5", "eth0", False) in routes(netns)


def test_learned_fdb_entries_are_not_swept_as_stale(netns: NetNS, register: RegisterFn) -> None:
    node = register({"Type": "vxlan", "Learning": True})
    node.events(added(peer(3)))
    node.network.synced = True
    learned = ["0a:58:99:99:99:99", "dev", "flannel.1", "dst", "198.18.0.77", "self", "dynamic"]
    netns.run(["bridge", "fdb", "add", *learned])
    assert node.reconcile() == 0
    assert "0a:58:99:99:99:99" in netns.run(["bridge", "fdb", "show", "dev", "flannel.1"]).stdout
