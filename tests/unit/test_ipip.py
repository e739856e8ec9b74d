"""The ipip backend without a kernel: config, netlink packing, the route hook, the start-up error, and what
is rebuilt when ``flannel.ipip`` is deleted at runtime."""

from __future__ import annotations

import errno
import socket
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from flannel.backend.base import BackendContext, ExternalInterface
from flannel.backend.ipip import (
    NO_KERNEL_SUPPORT,
    IPIPBackend,
    IPIPNetwork,
    IPIPRoutePlane,
    device_fault,
    ensure_ipip_device,
    parse_ipip_config,
    repoint,
)
from flannel.backend.registry import BACKENDS, create_backend
from flannel.backend.route_plane import PeerRoute
from flannel.config import parse_network_config
from flannel.errors import ConfigError, FlannelError
from flannel.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.netlink import IptunSpec, Link, NetlinkError, RouteInfo, wire
from flannel.netlink.consts import (
    IFINFOMSG,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_IPTUN_LINK,
    IFLA_IPTUN_LOCAL,
    IFLA_IPTUN_PMTUDISC,
    IFLA_IPTUN_REMOTE,
    IFLA_IPTUN_TTL,
    IFLA_LINKINFO,
    IFLA_MTU,
)
from flannel.netlink.links import IptunInfo, _parse_iptun, ipip_body, ipip_describe

EXT = ExternalInterface(name="eth0", index=2, mtu=1500, iface_addr=IPv4Address("198.18.0.1"),
                        iface_v6_addr=None, ext_addr=IPv4Address("198.18.0.1"), ext_v6_addr=None)
NET = IPv4Network("10.244.0.0/16")


def cfg(backend: str, extra: str = "") -> Any:
    return parse_network_config(f'{{"Network":"10.244.0.0/16"{extra},"Backend":{backend}}}')


def test_ipip_is_a_registered_backend() -> None:
    ctx = BackendContext(subnet_manager=None, ext_iface=EXT)  # type: ignore[arg-type]
    assert isinstance(create_backend(ctx, cfg('{"Type":"ipip"}')), IPIPBackend)
    assert "ipip" in BACKENDS


def test_ipip_config_reads_direct_routing_case_insensitively_and_warns_about_unknown_keys(
        caplog: pytest.LogCaptureFixture) -> None:
    assert parse_ipip_config({"Type": "ipip"}).direct_routing is False
    assert parse_ipip_config({"Type": "ipip", "directrouting": True}).direct_routing is True
    parse_ipip_config({"Type": "ipip", "VNI": 1})
    assert "ipip backend: ignoring unknown key Backend.VNI" in caplog.text


def test_ipip_config_rejects_a_non_boolean_direct_routing() -> None:
    with pytest.raises(ConfigError, match=r"Backend\.DirectRouting must be true or false"):
        parse_ipip_config({"DirectRouting": "yes"})


def test_ipip_refuses_ipv6() -> None:
    ctx = BackendContext(subnet_manager=None, ext_iface=EXT)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="IPv4 only"):
        IPIPBackend(ctx, cfg('{"Type":"ipip"}', ',"EnableIPv6":true,"IPv6Network":"fd00::/48"'))


def test_ipip_body_packs_kind_local_and_mtu_and_reads_back() -> None:
    spec = IptunSpec(name="flannel.ipip", local=IPv4Address("198.18.0.1"), mtu=1480)
    body = ipip_body(spec)
    top = wire.attrs(body, IFINFOMSG.size, len(body))
    assert wire.cstr(top[IFLA_IFNAME]) == "flannel.ipip" and wire.u32(top[IFLA_MTU]) == 1480
    info = wire.nested(top[IFLA_LINKINFO])
    assert wire.cstr(info[IFLA_INFO_KIND]) == "ipip"
    data = wire.nested(info[IFLA_INFO_DATA])
    assert data[IFLA_IPTUN_LOCAL] == IPv4Address("198.18.0.1").packed
    assert IFLA_IPTUN_REMOTE not in data and IFLA_IPTUN_LINK not in data
    assert data[IFLA_IPTUN_TTL][0] == 0 and data[IFLA_IPTUN_PMTUDISC][0] == 1
    assert _parse_iptun(data) == IptunInfo(local=IPv4Address("198.18.0.1"), remote=None, underlay_index=0)
    assert _parse_iptun({IFLA_IPTUN_REMOTE: b"\0\0\0\0"}).remote is None
    assert ipip_describe(spec) == "link add flannel.ipip mtu 1480 type ipip local 198.18.0.1 remote any"


class FakeNL:
    def __init__(self, existing: Link | None = None, create_errno: int = 0, gateway: str | None = None) -> None:
        self.existing = existing
        self.create_errno = create_errno
        self.gateway = gateway
        self.deleted: list[int] = []

    def link_by_name(self, name: str) -> Link | None:
        return self.existing

    def delete_link(self, index: int) -> None:
        self.deleted.append(index)

    def create_ipip(self, spec: IptunSpec) -> Link:
        if self.create_errno:
            raise NetlinkError(self.create_errno, ipip_describe(spec), "Unknown device type")
        return Link(index=9, name=spec.name, mtu=spec.mtu, mac="", up=False, kind="ipip",
                    iptun=IptunInfo(spec.local, None, 0))

    def route_get(self, dst: Any) -> RouteInfo | None:
        return RouteInfo(dst=dst, gateway=IPv4Address(self.gateway) if self.gateway else None, oif=2,
                         prefsrc=None)


SPEC = IptunSpec(name="flannel.ipip", local=IPv4Address("198.18.0.1"), mtu=1480)


def test_a_kernel_without_ipip_fails_with_an_error_naming_the_missing_support() -> None:
    nl = FakeNL(create_errno=errno.EOPNOTSUPP)
    with pytest.raises(FlannelError) as info:
        ensure_ipip_device(nl, SPEC)  # type: ignore[arg-type]
    assert str(info.value).startswith(f"{NO_KERNEL_SUPPORT}: link add flannel.ipip")
    assert "CONFIG_NET_IPIP" in str(info.value) and "module ipip" in str(info.value)


def test_an_existing_device_of_another_type_is_an_error_and_left_alone() -> None:
    nl = FakeNL(existing=Link(index=5, name="flannel.ipip", mtu=1500, mac="", up=True, kind="veth"))
    with pytest.raises(FlannelError, match="not ipip"):
        ensure_ipip_device(nl, SPEC)  # type: ignore[arg-type]
    assert nl.deleted == []


def test_an_ipip_device_with_a_wrong_local_is_recreated() -> None:
    old = Link(index=5, name="flannel.ipip", mtu=1480, mac="", up=True, kind="ipip",
               iptun=IptunInfo(IPv4Address("198.18.0.7"), None, 0))
    nl = FakeNL(existing=old)
    assert ensure_ipip_device(nl, SPEC).index == 9  # type: ignore[arg-type]
    assert nl.deleted == [5]


def lease(subnet: str, public: str = "198.18.0.9") -> Lease:
    return Lease(subnet=IPv4Network(subnet), attrs=LeaseAttrs(public_ip=IPv4Address(public), backend_type="ipip"))


def plane(nl: FakeNL, direct: bool) -> IPIPRoutePlane:
    return IPIPRoutePlane(family=socket.AF_INET, cluster=NET, own_subnet=IPv4Network("10.244.7.0/24"), oif=2,
                          nl=nl, tunnel_index=9, direct_routing=direct)  # type: ignore[arg-type]


def test_routes_go_onlink_via_the_public_ip_on_the_tunnel() -> None:
    dst = IPv4Network("10.244.3.0/24")
    assert plane(FakeNL(), direct=False).route_for(lease("10.244.3.0/24")) == PeerRoute(
        dst, IPv4Address("198.18.0.9"), oif=9, onlink=True)


def test_direct_routing_uses_the_external_interface_for_on_link_peers_only() -> None:
    dst = IPv4Network("10.244.3.0/24")
    assert plane(FakeNL(), direct=True).route_for(lease("10.244.3.0/24")) == PeerRoute(
        dst, IPv4Address("198.18.0.9"), oif=2, onlink=True)
    routed = plane(FakeNL(gateway="198.18.0.254"), direct=True)
    assert routed.route_for(lease("10.244.3.0/24", "203.0.113.5")) == PeerRoute(
        dst, IPv4Address("203.0.113.5"), oif=9, onlink=True)


# -- a deleted flannel.ipip is rebuilt: what is recreated, and the routes re-pointed at the new device ------


def test_device_fault_says_what_is_wrong_with_the_kernels_device() -> None:
    def link(index: int = 9, local: str = "198.18.0.1", mtu: int = 1480, remote: str | None = None) -> Link:
        return Link(index=index, name="flannel.ipip", mtu=mtu, mac="", up=True, kind="ipip",
                    iptun=IptunInfo(IPv4Address(local), IPv4Address(remote) if remote else None, 0))

    assert device_fault(link(), SPEC, 9) is None
    assert device_fault(None, SPEC, 9) == "is missing"
    assert device_fault(link(index=14), SPEC, 9) == "was replaced (index 14, was 9)"
    assert device_fault(link(local="198.18.0.7"), SPEC, 9) == "has local 198.18.0.7 remote any"
    assert device_fault(link(remote="203.0.113.1"), SPEC, 9) == "has local 198.18.0.1 remote 203.0.113.1"
    assert device_fault(link(mtu=1500), SPEC, 9) == "has mtu 1500"


def test_repoint_moves_the_tunnel_routes_to_the_new_index_and_leaves_direct_routes_alone() -> None:
    p = plane(FakeNL(), direct=False)
    tunnel = PeerRoute(IPv4Network("10.244.3.0/24"), IPv4Address("203.0.113.5"), oif=9, onlink=True)
    direct = PeerRoute(IPv4Network("10.244.4.0/24"), IPv4Address("198.18.0.9"), oif=2, onlink=True)
    p.desired = {"a": tunnel, "b": direct}
    assert repoint(p, 14) == 1
    assert p.desired == {"a": PeerRoute(tunnel.dst, tunnel.gateway, oif=14, onlink=True), "b": direct}
    assert p.tunnel_index == 14
    assert p.route_for(lease("10.244.5.0/24")).oif == 14  # type: ignore[union-attr]  # and future routes too
    assert repoint(p, 14) == 0


class KernelAfterDelete(FakeNL):
    """Netlink as it answers after ``ip link del flannel.ipip``: no device, and its routes gone with it.

    The real path is tested in tests/integration/test_ipip_network.py, where the kernel has ipip; this
    records what the network asks for, so the order of the repair can be checked on any machine.
    """

    def __init__(self) -> None:
        super().__init__()
        self.made: list[IptunSpec] = []
        self.calls: list[tuple[Any, ...]] = []
        self.applied: list[object] = []

    def link_by_name(self, name: str) -> Link | None:
        if not self.made:
            return None
        return Link(index=14, name=name, mtu=1480, mac="", up=bool(self.calls), kind="ipip",
                    iptun=IptunInfo(self.made[-1].local, None, 0))

    def create_ipip(self, spec: IptunSpec) -> Link:
        self.made.append(spec)
        return Link(index=14, name=spec.name, mtu=spec.mtu, mac="", up=False, kind="ipip",
                    iptun=IptunInfo(spec.local, None, 0))

    def addresses(self, index: int, family: int) -> list[Any]:
        return []

    def add_address(self, index: int, address: Any, prefixlen: int) -> None:
        self.calls.append(("addr add", index, address, prefixlen))

    def set_link_up(self, index: int) -> None:
        self.calls.append(("link up", index))

    def routes(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []

    def route_matches(self, dsts: list[Any]) -> list[Any]:
        return [None] * len(dsts)

    def apply(self, ops: list[object]) -> list[None]:
        self.applied.extend(ops)
        return [None] * len(ops)


def test_reconcile_rebuilds_a_deleted_device_then_routes_peers_via_its_new_index() -> None:
    nl = KernelAfterDelete()
    own = Lease(subnet=IPv4Network("10.244.7.0/24"))
    network = IPIPNetwork(nl, own, 1480, plane(nl, direct=False), SPEC, 10.0, "eth0")  # type: ignore[arg-type]
    network.handle_events([LeaseEvent(EventType.ADDED, lease("10.244.3.0/24"))])
    network.synced = True
    nl.applied.clear()
    assert network.reconcile() == 2  # the device, then the one route
    assert nl.made == [SPEC]  # same name, local and MTU
    assert nl.calls == [("addr add", 14, IPv4Address("10.244.7.0"), 32), ("link up", 14)]
    assert nl.applied == [PeerRoute(IPv4Network("10.244.3.0/24"), IPv4Address("198.18.0.9"), oif=14,
                                    onlink=True).replace_op()]
    assert network.plane.tunnel_index == 14 and network.names[14] == "flannel.ipip" and 9 not in network.names
    assert network.reconcile() == 1  # the fake kernel still lacks the route; the device is fine now
    assert nl.made == [SPEC]
