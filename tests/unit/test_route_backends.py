"""host-gw and alloc without a kernel: config checks, lease attributes, MTU, and the shared route logic."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import socket
import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannel.backend.alloc import AllocBackend, AllocNetwork
from flannel.backend.base import BackendContext, ExternalInterface
from flannel.backend.hostgw import NAT_ERROR
from flannel.backend.reconcile_loop import ReconcileLoop
from flannel.backend.registry import create_backend
from flannel.backend.route_network import RouteNetwork, RoutePlane
from flannel.backend.route_plane import RTPROT_FLANNEL, PeerRoute, route_ops
from flannel.config import parse_network_config
from flannel.errors import FlannelError, LeaseDecodeError
from flannel.lease import Lease, LeaseAttrs
from flannel.netlink import BlackholeRouteReplace, NetlinkError, Route, RouteDelete, RouteReplace
from flannel.netlink.consts import NLM_F_EXCL, NLM_F_REPLACE, RTMSG
from flannel.netlink.routes import dump_body
from tests.waiting import wait_until

EXT = ExternalInterface(name="eth0", index=2, mtu=1400, iface_addr=IPv4Address("198.18.0.1"),
                        iface_v6_addr=None, ext_addr=IPv4Address("198.18.0.1"), ext_v6_addr=None)
NET = IPv4Network("10.244.0.0/16")


class FakeSM:
    def __init__(self) -> None:
        self.attrs: list[LeaseAttrs] = []

    async def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        self.attrs.append(attrs)
        return Lease(subnet=IPv4Network("10.244.7.0/24"), attrs=attrs)


def ctx(sm: FakeSM | None = None, ext: ExternalInterface = EXT) -> BackendContext:
    return BackendContext(subnet_manager=sm or FakeSM(), ext_iface=ext)  # type: ignore[arg-type]


def config(backend: str) -> object:
    return parse_network_config(f'{{"Network":"10.244.0.0/16","Backend":{backend}}}')


def test_host_gw_refuses_a_public_ip_other_than_the_interface_ip() -> None:
    nat = dataclasses.replace(EXT, ext_addr=IPv4Address("203.0.113.9"))
    with pytest.raises(FlannelError, match=r"^your PublicIP differs from interface IP") as info:
        create_backend(ctx(ext=nat), config('{"Type":"host-gw"}'))  # type: ignore[arg-type]
    assert str(info.value) == NAT_ERROR


def test_host_gw_warns_about_unknown_keys(caplog: pytest.LogCaptureFixture) -> None:
    create_backend(ctx(), config('{"Type":"host-gw","Bogus":1}'))  # type: ignore[arg-type]
    assert "host-gw backend: ignoring unknown key Backend.Bogus" in caplog.text


def test_alloc_publishes_public_ip_without_backend_type_and_uses_the_interface_mtu(
        caplog: pytest.LogCaptureFixture) -> None:
    sm = FakeSM()
    cfg = config('{"Type":"alloc","Port":1}')
    backend = create_backend(ctx(sm), cfg)  # type: ignore[arg-type]
    assert isinstance(backend, AllocBackend)
    network = asyncio.run(backend.register_network(cfg))  # type: ignore[arg-type]
    assert isinstance(network, AllocNetwork) and network.mtu == 1400
    assert sm.attrs[0].to_json() == '{"PublicIP":"198.18.0.1","PublicIPv6":null}'
    assert "alloc backend: ignoring unknown key Backend.Port" in caplog.text


def test_alloc_run_waits_until_cancelled_without_reading_the_watch() -> None:
    async def drive() -> None:
        async def never() -> object:
            raise AssertionError("alloc must not read the lease watch")
            yield  # pragma: no cover

        network = AllocNetwork(Lease(subnet=IPv4Network("10.244.7.0/24")), 1400)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(network.run(never()), 0.05)  # type: ignore[arg-type]

    asyncio.run(drive())


def lease(subnet: str, public: str = "198.18.0.9", public6: str | None = None, subnet6: str | None = None) -> Lease:
    return Lease(subnet=IPv4Network(subnet), ipv6_subnet=IPv6Network(subnet6) if subnet6 else None,
                 attrs=LeaseAttrs(public_ip=IPv4Address(public), backend_type="host-gw",
                                  public_ipv6=IPv6Address(public6) if public6 else None))


def test_route_hook_routes_a_peer_subnet_via_its_public_ip_on_the_external_interface() -> None:
    plane = RoutePlane(family=socket.AF_INET, cluster=NET, own_subnet=IPv4Network("10.244.7.0/24"), oif=2)
    assert plane.route_for(lease("10.244.3.0/24")) == PeerRoute(IPv4Network("10.244.3.0/24"),
                                                                IPv4Address("198.18.0.9"), 2)
    for bad in ("10.244.7.0/24", "10.0.0.0/8", "10.245.0.0/24"):  # own, wider than, outside the network
        with pytest.raises(LeaseDecodeError):
            plane.route_for(lease(bad))
    v6 = RoutePlane(family=socket.AF_INET6, cluster=IPv6Network("fd00::/48"), own_subnet=IPv6Network("fd00::/64"),
                    oif=2)
    assert v6.route_for(lease("10.244.3.0/24")) is None  # no v6 part
    assert v6.route_for(lease("10.244.3.0/24", public6="2001:db8::9", subnet6="fd00:0:0:3::/64")) == PeerRoute(
        IPv6Network("fd00:0:0:3::/64"), IPv6Address("2001:db8::9"), 2)


def test_route_ops_diff_old_and_new() -> None:
    a = PeerRoute(IPv4Network("10.244.3.0/24"), IPv4Address("198.18.0.9"), 2)
    b = dataclasses.replace(a, gateway=IPv4Address("198.18.0.10"))
    c = dataclasses.replace(a, dst=IPv4Network("10.244.4.0/24"))
    assert route_ops(a, a) == [] and route_ops(None, None) == []
    assert route_ops(None, a) == [RouteReplace(a.dst, a.gateway, 2, False, RTPROT_FLANNEL)]
    assert route_ops(a, b) == [b.replace_op()]  # a replace drops the wrong gateway
    assert route_ops(a, c) == [a.delete_op(), c.replace_op()]
    assert route_ops(a, None) == [RouteDelete(a.dst, a.gateway, 2)]


def test_peer_route_matches_only_the_same_unicast_route() -> None:
    a = PeerRoute(IPv4Network("10.244.3.0/24"), IPv4Address("198.18.0.9"), 2)
    r = Route(a.dst, a.gateway, 2, False, 1, 0, 3, 254)
    assert a.matches(r) and PeerRoute(a.dst, a.gateway).matches(dataclasses.replace(r, oif=9))
    assert not a.matches(dataclasses.replace(r, oif=3))
    assert not a.matches(dataclasses.replace(r, gateway=IPv4Address("198.18.0.8")))
    assert not a.matches(dataclasses.replace(r, onlink=True))
    assert not a.matches(dataclasses.replace(r, type=6))


def _rtmsg(packed: bytes) -> tuple[int, ...]:
    return RTMSG.unpack_from(packed, 16)


def test_protocol_is_packed_into_route_messages_and_dump_filters() -> None:
    op = RouteReplace(NET, IPv4Address("198.18.0.9"), 2, protocol=RTPROT_FLANNEL)
    assert _rtmsg(op.pack(1))[5] == RTPROT_FLANNEL
    assert op.describe({2: "eth0"}) == "route replace 10.244.0.0/16 via 198.18.0.9 dev eth0 proto 70"
    assert _rtmsg(RouteDelete(NET, protocol=RTPROT_FLANNEL).pack(1))[5] == RTPROT_FLANNEL
    assert _rtmsg(RouteReplace(NET, None).pack(1))[5] == 3  # boot by default, as before
    assert RTMSG.unpack_from(dump_body(socket.AF_INET, 254, protocol=70, rtype=6))[5:8] == (70, 0, 6)


def test_exclusive_blackhole_is_an_add_not_a_replace() -> None:
    flags = struct.unpack_from("=H", BlackholeRouteReplace(NET, exclusive=True).pack(1), 6)[0]
    assert flags & NLM_F_EXCL and not flags & NLM_F_REPLACE
    assert BlackholeRouteReplace(NET, exclusive=True).describe() == "route add blackhole 10.244.0.0/16"
    flags = struct.unpack_from("=H", BlackholeRouteReplace(NET).pack(1), 6)[0]
    assert flags & NLM_F_REPLACE



class _HiccupNetlink:
    """A netlink stand-in whose dumps fail, as a busy or interrupted kernel dump does."""

    def __init__(self) -> None:
        self.calls = 0

    def routes(self, *args: object, **kwargs: object) -> list[object]:
        self.calls += 1
        raise NetlinkError(errno.EBUSY, "route dump")


async def test_a_failing_reconcile_is_logged_and_retried_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    nl = _HiccupNetlink()
    plane = RoutePlane(family=socket.AF_INET, cluster=IPv4Network("10.0.0.0/8"),
                       own_subnet=IPv4Network("10.5.52.0/24"), oif=2)
    network = RouteNetwork(nl, Lease(IPv4Network("10.5.52.0/24")), 1500, "host-gw", [plane],  # type: ignore[arg-type]
                           reconcile_interval=0.01)
    network.synced = True
    task = asyncio.create_task(ReconcileLoop(network.reconcile, network.reconcile_interval).run())
    # The second dump is the retry after the first one failed: the loop got past the failure.
    await wait_until(lambda: nl.calls >= 2 or task.done(), "a second reconcile")
    assert not task.done(), "the reconcile loop must survive a failing kernel dump"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert nl.calls >= 2
    assert "reconcile failed" in caplog.text


def test_a_batch_the_kernel_never_answers_is_left_to_the_reconcile_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    class SilentKernel:
        def apply(self, ops: object) -> list[object]:
            raise NetlinkError(errno.ETIMEDOUT, "batch", "no answer from the kernel within 1 s")

    from flannel.backend.route_plane import apply_ops

    ops = [RouteReplace(dst=IPv4Network("10.5.1.0/24"), gateway=IPv4Address("198.18.0.9"), oif=2)]
    assert apply_ops(SilentKernel(), ops) == 1  # type: ignore[arg-type]
    assert "the next reconcile repairs what it missed" in caplog.text
