"""The vxlan backend's pure logic: its config section and the per-lease entry diffing."""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest

from flannel.backend.vxlan_config import VXLANConfig, parse_vxlan_config, v6_device_mtu
from flannel.backend.vxlan_plane import PeerEntries, VXLANPlane
from flannel.errors import ConfigError, LeaseDecodeError
from flannel.lease import Lease, LeaseAttrs
from flannel.netlink import FdbDelete, FdbReplace, NeighDelete, NeighReplace, Route, RouteDelete, RouteReplace
from flannel.netlink.transport import Steps, drain


def test_vxlan_defaults_match_upstream() -> None:
    cfg = parse_vxlan_config({"Type": "vxlan"})
    assert cfg == VXLANConfig(vni=1, port=0, mtu=0, gbp=False, learning=False, direct_routing=False)
    assert cfg.device_name == "flannel.1" and cfg.v6_device_name == "flannel-v6.1"


def test_vxlan_keys_are_case_insensitive() -> None:
    cfg = parse_vxlan_config({"type": "vxlan", "vni": 4096, "port": 4789, "directrouting": True, "GBP": True})
    assert (cfg.vni, cfg.port, cfg.direct_routing, cfg.gbp) == (4096, 4789, True, True)
    assert cfg.device_name == "flannel.4096"


@pytest.mark.parametrize(
    ("backend", "field"),
    [
        ({"VNI": "1"}, "Backend.VNI"),
        ({"VNI": 1 << 24}, "Backend.VNI"),
        ({"Port": 70000}, "Backend.Port"),
        ({"Port": -1}, "Backend.Port"),
        ({"DirectRouting": "yes"}, "Backend.DirectRouting"),
        ({"MTU": 100}, "Backend.MTU"),
        ({"Learning": 1}, "Backend.Learning"),
    ],
)
def test_bad_vxlan_values_name_the_key(backend: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_vxlan_config(backend)
    assert err.value.field == field
    assert field in str(err.value)


def test_unknown_key_is_a_warning_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    parse_vxlan_config({"Type": "vxlan", "VNl": 2})
    assert "Backend.VNl" in caplog.text


def plane() -> VXLANPlane:
    return VXLANPlane(nl=None, family=socket.AF_INET, dev_name="flannel.1",  # type: ignore[arg-type]
                      cluster=IPv4Network("10.244.0.0/16"), own_subnet=IPv4Network("10.244.1.0/24"), dev_index=7)


def lease(subnet: str, pub: str, data: str | None) -> Lease:
    return Lease(subnet=IPv4Network(subnet), attrs=LeaseAttrs(public_ip=IPv4Address(pub), backend_type="vxlan",
                                                              backend_data=data))


MAC = "aa:bb:cc:dd:ee:01"
MAC_N = 0xAABBCCDDEE01
MAC2_N = 0xAABBCCDDEE02
SUBNET = int(IPv4Address("10.244.3.0"))
PUB13 = int(IPv4Address("198.18.0.13"))
PUB14 = int(IPv4Address("198.18.0.14"))


def test_lease_becomes_neighbour_fdb_and_onlink_route() -> None:
    p = plane()
    e = p.entries_for(lease("10.244.3.0/24", "198.18.0.13", f'{{"VNI":1,"VtepMAC":"{MAC}"}}'))
    assert e == PeerEntries(dst=SUBNET, prefixlen=24, gateway=SUBNET, direct=False, mac=MAC_N, public_ip=PUB13)
    ops = p.ops_for_change(None, e)
    assert ops == [
        NeighReplace(index=7, ip=SUBNET, mac=MAC_N),
        FdbReplace(index=7, mac=MAC_N, dst=PUB13),
        RouteReplace(dst=(SUBNET, 24), gateway=SUBNET, oif=7, onlink=True),
    ]
    # The numbers pack and read as the objects did.
    assert [op.pack(1) for op in ops] == [  # type: ignore[attr-defined]
        NeighReplace(index=7, ip=IPv4Address("10.244.3.0"), mac=MAC).pack(1),
        FdbReplace(index=7, mac=MAC, dst=IPv4Address("198.18.0.13")).pack(1),
        RouteReplace(dst=IPv4Network("10.244.3.0/24"), gateway=IPv4Address("10.244.3.0"), oif=7,
                     onlink=True).pack(1)]
    assert [op.describe() for op in ops] == [  # type: ignore[attr-defined]
        f"neigh replace 10.244.3.0 lladdr {MAC} dev #7 nud permanent",
        f"fdb replace {MAC} dev #7 dst 198.18.0.13 self permanent",
        "route replace 10.244.3.0/24 via 10.244.3.0 dev #7 onlink"]


def test_replaying_the_same_lease_changes_nothing() -> None:
    p = plane()
    e = p.entries_for(lease("10.244.3.0/24", "198.18.0.13", f'{{"VNI":1,"VtepMAC":"{MAC}"}}'))
    assert p.ops_for_change(e, e) == []


def test_changed_mac_replaces_fdb_and_drops_the_old_entry() -> None:
    p = plane()
    old = p.entries_for(lease("10.244.3.0/24", "198.18.0.13", f'{{"VtepMAC":"{MAC}"}}'))
    new = p.entries_for(lease("10.244.3.0/24", "198.18.0.13", '{"VtepMAC":"aa:bb:cc:dd:ee:02"}'))
    ops = p.ops_for_change(old, new)
    assert FdbDelete(index=7, mac=MAC_N, dst=PUB13) in ops
    assert not any(isinstance(o, RouteDelete | NeighDelete) for o in ops)
    assert FdbReplace(index=7, mac=MAC2_N, dst=PUB13) in ops


def test_a_peer_moving_to_another_public_ip_rewrites_its_fdb_entry_alone() -> None:
    p = plane()
    old = p.entries_for(lease("10.244.3.0/24", "198.18.0.13", f'{{"VtepMAC":"{MAC}"}}'))
    new = p.entries_for(lease("10.244.3.0/24", "198.18.0.14", f'{{"VtepMAC":"{MAC}"}}'))
    assert p.ops_for_change(old, new) == [FdbReplace(index=7, mac=MAC_N, dst=PUB14)]


def test_a_changed_mac_rewrites_neighbour_and_fdb_but_not_the_route() -> None:
    p = plane()
    old = p.entries_for(lease("10.244.3.0/24", "198.18.0.13", f'{{"VtepMAC":"{MAC}"}}'))
    new = p.entries_for(lease("10.244.3.0/24", "198.18.0.13", '{"VtepMAC":"aa:bb:cc:dd:ee:02"}'))
    assert p.ops_for_change(old, new) == [
        FdbDelete(index=7, mac=MAC_N, dst=PUB13),
        NeighReplace(index=7, ip=SUBNET, mac=MAC2_N),
        FdbReplace(index=7, mac=MAC2_N, dst=PUB13),
    ]


def test_removal_deletes_route_fdb_and_neighbour() -> None:
    p = plane()
    old = p.entries_for(lease("10.244.3.0/24", "198.18.0.13", f'{{"VtepMAC":"{MAC}"}}'))
    assert p.ops_for_change(old, None) == [
        RouteDelete(dst=(SUBNET, 24)),
        FdbDelete(index=7, mac=MAC_N, dst=PUB13),
        NeighDelete(index=7, ip=SUBNET),
    ]


@pytest.mark.parametrize("data", [None, '{"VNI":1}', '{"VtepMAC":"not-a-mac"}', '{"VtepMAC":5}', '"text"'])
def test_unusable_backend_data_is_a_decode_error(data: str | None) -> None:
    with pytest.raises(LeaseDecodeError):
        plane().entries_for(lease("10.244.3.0/24", "198.18.0.13", data))


def test_lease_without_this_family_needs_nothing() -> None:
    p = VXLANPlane(nl=None, family=socket.AF_INET6, dev_name="flannel-v6.1",  # type: ignore[arg-type]
                   cluster=IPv4Network("10.244.0.0/16"), own_subnet=IPv4Network("10.244.1.0/24"))
    assert p.entries_for(lease("10.244.3.0/24", "198.18.0.13", f'{{"VtepMAC":"{MAC}"}}')) is None


def test_vtep_mac_key_is_matched_case_insensitively_as_go_does() -> None:
    e = plane().entries_for(lease("10.244.3.0/24", "198.18.0.13", f'{{"vni":1,"vtepmac":"{MAC.upper()}"}}'))
    assert e is not None and e.mac == MAC_N


def test_v6_device_mtu_is_capped_at_what_the_kernel_allows_over_an_ipv6_underlay() -> None:
    assert v6_device_mtu(1450, 1500) == 1430  # default: underlay - 50 asked, kernel allows underlay - 70
    assert v6_device_mtu(1350, 1500) == 1350  # an explicit smaller MTU is kept
    assert v6_device_mtu(8950, 9000) == 8930


class _RoutesOnly:
    """A kernel holding ``routes``, listed as the kernel would (route messages, packed by ``RouteReplace``)."""

    def __init__(self, routes: list[Route]) -> None:
        self._routes = routes

    def routes(self, family: int, oif: int | None = None, *, protocol: int = 0) -> list[Route]:
        return [r for r in self._routes if (oif is None or r.oif == oif) and protocol in (0, r.protocol)]

    def route_scan(self, family: int, oif: int, each: Callable[[bytes, int, int], None], rows: int) -> Steps[object]:
        for r in self.routes(family, oif):
            message = RouteReplace(dst=r.dst, gateway=r.gateway, oif=r.oif, onlink=r.onlink, protocol=r.protocol,
                                   scope=r.scope).pack(1)
            each(message, 16, len(message))
            yield
        return None


def test_v6_reconcile_keeps_the_kernel_route_of_the_device_address_and_drops_stale_ones() -> None:
    own = IPv6Network("fd00:10:244:9::/64")
    kernel = Route(dst=IPv6Network("fd00:10:244:9::/128"), gateway=None, oif=7, onlink=False, type=1, scope=0,
                   protocol=2, table=254)
    stale = Route(dst=IPv6Network("fd00:10:244:5::/64"), gateway=IPv6Address("fd00:10:244:5::"), oif=7,
                  onlink=True, type=1, scope=0, protocol=3, table=254)
    p = VXLANPlane(nl=_RoutesOnly([kernel, stale]), family=socket.AF_INET6,  # type: ignore[arg-type]
                   dev_name="flannel-v6.1", cluster=IPv6Network("fd00:10:244::/56"), own_subnet=own, dev_index=7)
    assert [op for _, op in drain(p.drift_steps()[2]())] == [RouteDelete(dst=stale.dst, oif=7)]
