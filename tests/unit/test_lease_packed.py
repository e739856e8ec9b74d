"""The packed lease (issue #16): IPv4 subnets and public IPs held as numbers, objects built on demand.

What is pinned: the objects read back equal to those given, equality and hashing do not depend on how a lease
was made, ``repr`` and the JSON bytes are what the dataclass and ``go_ip_text`` produced before, and the netlink
operations the vxlan plane now builds from numbers pack and describe byte for byte as those built from objects.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannel.backend.vxlan_plane import PeerEntries, VXLANPlane
from flannel.ipaddr import go_ip_text, ipv4_text, mac_text
from flannel.lease import (
    UNSET_IPV4,
    Lease,
    LeaseAttrs,
    make_subnet_key,
    parse_subnet_key,
    parse_subnet_key_numbers,
    vtep_mac_int,
)
from flannel.netlink import FdbDelete, FdbReplace, NeighDelete, NeighReplace, RouteDelete, RouteReplace
from flannel.netlink.nexthops import NexthopReplace, RouteViaNexthop
from flannel.subnet.kube_nodes import _cidr4_ints, _parse_cidr

SUBNETS = ["10.244.3.0/24", "0.0.0.0/1", "255.255.255.254/31", "10.0.0.0/8", "192.168.255.128/25"]
VXLAN = '{"VNI":1,"VtepMAC":"0a:0b:0c:0d:0e:0f"}'


@pytest.mark.parametrize("text", SUBNETS)
def test_the_subnet_reads_back_as_given_and_as_numbers(text: str) -> None:
    net = IPv4Network(text)
    lease = Lease(net, revision=3)
    assert lease.subnet == net and type(lease.subnet) is IPv4Network
    assert (lease.subnet_int, lease.subnet_prefixlen) == (int(net.network_address), net.prefixlen)
    assert lease.net_ints() == (int(net.network_address), net.prefixlen) and lease.net_ints(v6=True) is None
    made = Lease.from_ints(int(net.network_address), net.prefixlen, revision=3)
    assert made == lease and hash(made) == hash(lease) and made.key == lease.key == make_subnet_key(net, None)


def test_a_lease_without_an_ipv4_subnet() -> None:
    v6 = IPv6Network("fd00:1::/64")
    lease = Lease(None, v6)
    assert lease.subnet is None and lease.subnet_int is None and lease.net_ints() is None
    assert lease.net_ints(v6=True) == (int(v6.network_address), 64)
    assert lease.key == "fd00:1::-64" and lease == Lease.from_ints(None, 0, v6)


def test_equality_sees_every_field_as_before() -> None:
    attrs = LeaseAttrs(public_ip=IPv4Address("198.18.0.1"), backend_type="vxlan", backend_data=VXLAN)
    lease = Lease(IPv4Network("10.1.2.0/24"), None, attrs, 5.0, 7, False)
    assert lease == Lease(IPv4Network("10.1.2.0/24"), None, attrs, 5.0, 7, False)
    assert lease != Lease(IPv4Network("10.1.2.0/25"), None, attrs, 5.0, 7, False)  # the length counts
    assert lease != Lease(IPv4Network("10.1.3.0/24"), None, attrs, 5.0, 7, False)
    assert lease != Lease(IPv4Network("10.1.2.0/24"), IPv6Network("fd00::/64"), attrs, 5.0, 7, False)
    assert lease != Lease(IPv4Network("10.1.2.0/24"), None, attrs, 5.0, 8, False)
    assert lease != Lease(None, None, attrs, 5.0, 7, False)
    assert len({lease, Lease(IPv4Network("10.1.2.0/24"), None, attrs, 5.0, 7, False)}) == 1
    assert lease.same_subnets(Lease(IPv4Network("10.1.2.0/24")))
    assert not lease.same_subnets(Lease(IPv4Network("10.1.2.0/23")))


def test_repr_is_the_dataclass_repr_of_before() -> None:
    attrs = LeaseAttrs(public_ip=IPv4Address("198.18.0.1"), backend_type="vxlan", backend_data=VXLAN)
    lease = Lease(IPv4Network("10.1.2.0/24"), IPv6Network("fd00::/64"), attrs, 1.5, 9, True)
    assert repr(lease) == (
        "Lease(subnet=IPv4Network('10.1.2.0/24'), ipv6_subnet=IPv6Network('fd00::/64'), attrs=LeaseAttrs("
        "public_ip=IPv4Address('198.18.0.1'), public_ipv6=None, backend_type='vxlan', "
        "backend_data='{\"VNI\":1,\"VtepMAC\":\"0a:0b:0c:0d:0e:0f\"}', backend_v6_data=None), expiration=1.5, "
        "revision=9, reserved=True)")
    assert repr(Lease(None)).startswith("Lease(subnet=None, ipv6_subnet=None, attrs=LeaseAttrs(public_ip="
                                        "IPv4Address('0.0.0.0'),")


def test_dataclasses_replace_keeps_the_subnet_or_takes_a_new_one() -> None:
    lease = Lease(IPv4Network("10.1.2.0/24"), revision=1)
    assert lease.key == "10.1.2.0-24"
    later = dataclasses.replace(lease, revision=2)
    assert later.subnet == lease.subnet and later.revision == 2 and later.key == "10.1.2.0-24"
    moved = dataclasses.replace(lease, subnet=IPv4Network("10.1.9.0/24"))
    assert moved.subnet == IPv4Network("10.1.9.0/24") and moved.key == "10.1.9.0-24"  # not the old cached key
    assert dataclasses.replace(lease, subnet=None).subnet is None


def test_the_lease_stays_frozen() -> None:
    lease = Lease(IPv4Network("10.1.2.0/24"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        lease.revision = 3  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):  # a property: no setter (a slots dataclass says TypeError)
        lease.subnet = IPv4Network("10.1.3.0/24")  # type: ignore[misc]
    assert lease.subnet == IPv4Network("10.1.2.0/24")


@pytest.mark.parametrize("ip", ["0.0.0.0", "1.2.3.4", "198.18.0.13", "255.255.255.255", "10.0.0.1"])
def test_public_ip_reads_back_and_writes_go_bytes(ip: str) -> None:
    addr = IPv4Address(ip)
    by_object = LeaseAttrs(public_ip=addr, backend_type="vxlan", backend_data=VXLAN)
    by_number = LeaseAttrs(public_ip=int(addr), backend_type="vxlan", backend_data=VXLAN)
    assert by_object == by_number and hash(by_object) == hash(by_number) and repr(by_object) == repr(by_number)
    assert by_object.public_ip == addr and type(by_object.public_ip) is IPv4Address
    assert by_object.public_ip_int == int(addr)
    # The bytes of before: the address as ``go_ip_text`` wrote it, through ``json.dumps``.
    before = f'{{"PublicIP":{json.dumps(go_ip_text(addr))},"PublicIPv6":null,"BackendType":"vxlan",' \
             f'"BackendData":{VXLAN}}}'
    assert by_object.to_json() == before
    assert LeaseAttrs.from_json(before) == by_object and LeaseAttrs.from_json(before).to_json() == before
    assert ipv4_text(int(addr)) == str(addr)


def test_a_public_ip_number_out_of_range_is_refused() -> None:
    for bad in (-1, 1 << 32):
        with pytest.raises(ValueError, match="not an IPv4 address"):
            LeaseAttrs(public_ip=bad)


def test_an_unset_public_ip_is_zero() -> None:
    assert LeaseAttrs().public_ip == UNSET_IPV4 and LeaseAttrs().public_ip_int == 0
    assert LeaseAttrs.from_json('{"PublicIP":""}').public_ip_int == 0


def test_the_slow_decoder_gives_the_same_attributes_as_the_fast_one() -> None:
    fast = '{"PublicIP":"198.18.0.13","PublicIPv6":null,"BackendType":"vxlan","BackendData":' + VXLAN + "}"
    slow = '{"BackendType":"vxlan","PublicIP":"198.18.0.13","BackendData":' + VXLAN + ',"PublicIPv6":null}'
    assert LeaseAttrs.from_json(fast) == LeaseAttrs.from_json(slow)
    assert LeaseAttrs.from_json(slow).to_json() == fast


@pytest.mark.parametrize("key", ["10.5.52.0-24", "10.5.52.7-24", "/x/subnets/10.5.0.0-16&fd00:5::-64", "1.2.3.4-0",
                                 "10.5.52.0-024", "10.5.52.0-32", "10.5.52-24", "10.5.52.0-24&::ffff:1.2.3.4-64"])
def test_key_numbers_agree_with_the_parsed_objects(key: str) -> None:
    objects = parse_subnet_key(key)
    numbers = parse_subnet_key_numbers(key)
    if objects is None:
        assert numbers is None
        return
    assert numbers is not None
    assert (IPv4Network((numbers[0], numbers[1])), numbers[2]) == objects
    assert Lease.from_ints(*numbers) == Lease(*objects)


@pytest.mark.parametrize("text", ["10.244.3.0/24", "10.244.3.7/24", "10.0.0.0/024", "10.0.0.0/04", "0.0.0.0/0",
                                  "1.2.3.4/32", "10.0.0.0/33", "10.0.0.0/+4", "010.0.0.0/8", "10.0.0.0", "fd00::/64",
                                  "10.0.0.0/8 ", " 10.0.0.0/8", "10.0.0.0/٤"])
def test_fast_pod_cidr_decoding_agrees_with_gos_parse(text: str) -> None:
    fast = _cidr4_ints(text)
    try:
        net = _parse_cidr(text)
    except ValueError:
        assert fast is None
        return
    if fast is not None:
        assert isinstance(net, IPv4Network) and fast == (int(net.network_address), net.prefixlen)


def test_vtep_mac_as_a_number() -> None:
    assert vtep_mac_int(LeaseAttrs(backend_data=VXLAN)) == 0x0A0B0C0D0E0F
    assert vtep_mac_int(LeaseAttrs(backend_data='{"vtepmac":"0A:0B:0C:0D:0E:0F","VNI":2}')) == 0x0A0B0C0D0E0F
    assert vtep_mac_int(LeaseAttrs(backend_v6_data=VXLAN), v6=True) == 0x0A0B0C0D0E0F
    for bad in (None, '{"VNI":1}', '{"VtepMAC":"0a:0b"}', '{"VtepMAC":5}'):
        assert vtep_mac_int(LeaseAttrs(backend_data=bad)) is None
    assert mac_text(0x0A0B0C0D0E0F) == "0a:0b:0c:0d:0e:0f"


GW = IPv4Address("10.244.3.0")
NET = IPv4Network("10.244.3.0/24")
PUB = IPv4Address("198.18.0.13")
MAC = "aa:bb:cc:dd:ee:01"


@pytest.mark.parametrize(("numbers", "objects"), [
    (NeighReplace(7, int(GW), 0xAABBCCDDEE01), NeighReplace(7, GW, MAC)),
    (NeighDelete(7, int(GW)), NeighDelete(7, GW)),
    (FdbReplace(7, 0xAABBCCDDEE01, int(PUB)), FdbReplace(7, MAC, PUB)),
    (FdbDelete(7, 0xAABBCCDDEE01, int(PUB)), FdbDelete(7, MAC, PUB)),
    (RouteReplace((int(GW), 24), int(GW), oif=7, onlink=True), RouteReplace(NET, GW, oif=7, onlink=True)),
    (RouteReplace((int(GW), 24), None, oif=7), RouteReplace(NET, None, oif=7)),
    (RouteDelete((int(GW), 24), oif=7), RouteDelete(NET, oif=7)),
    (NexthopReplace(int(GW), int(GW), 7), NexthopReplace(int(GW), GW, 7)),
    (RouteViaNexthop((int(GW), 24), int(GW)), RouteViaNexthop(NET, int(GW))),
])
def test_operations_from_numbers_are_the_operations_from_objects(numbers: object, objects: object) -> None:
    assert numbers.pack(5) == objects.pack(5)  # type: ignore[attr-defined]
    assert numbers.describe({7: "flannel.1"}) == objects.describe({7: "flannel.1"})  # type: ignore[attr-defined]


def test_the_ipv6_plane_holds_128_bit_numbers_and_gives_objects_to_the_operations() -> None:
    plane = VXLANPlane(nl=None, family=socket.AF_INET6, dev_name="flannel-v6.1",  # type: ignore[arg-type]
                       cluster=IPv6Network("fd00:10::/56"), own_subnet=IPv6Network("fd00:10:0:1::/64"), dev_index=7)
    attrs = LeaseAttrs(public_ipv6=IPv6Address("fd00:18::13"), backend_type="vxlan", backend_v6_data=VXLAN)
    e = plane.entries_for(Lease(IPv4Network("10.244.3.0/24"), IPv6Network("fd00:10:0:3::/64"), attrs))
    dst = int(IPv6Address("fd00:10:0:3::"))
    assert e == PeerEntries(dst=dst, prefixlen=64, gateway=dst, direct=False, mac=0x0A0B0C0D0E0F,
                            public_ip=int(IPv6Address("fd00:18::13")))
    ops = plane.ops_for_change(None, e)
    assert ops == [NeighReplace(7, IPv6Address("fd00:10:0:3::"), 0x0A0B0C0D0E0F),
                   FdbReplace(7, 0x0A0B0C0D0E0F, IPv6Address("fd00:18::13")),
                   RouteReplace(IPv6Network("fd00:10:0:3::/64"), IPv6Address("fd00:10:0:3::"), oif=7, onlink=True)]
    assert ops[0].describe() == "neigh replace fd00:10:0:3:: lladdr 0a:0b:0c:0d:0e:0f dev #7 nud permanent"  # type: ignore[attr-defined]


def test_the_plane_shares_the_leases_numbers() -> None:
    """Nothing per peer is made twice: destination and gateway are the lease's subnet number, the FDB
    destination its public address's number."""
    plane = VXLANPlane(nl=None, family=socket.AF_INET, dev_name="flannel.1",  # type: ignore[arg-type]
                       cluster=IPv4Network("10.244.0.0/16"), own_subnet=IPv4Network("10.244.1.0/24"), dev_index=7)
    lease = Lease.from_ints(int(ipaddress.ip_address("10.244.3.0")), 24, None,
                            LeaseAttrs.from_json('{"PublicIP":"198.18.0.13","PublicIPv6":null,"BackendType":"vxlan",'
                                                 f'"BackendData":{VXLAN}}}'))
    e = plane.entries_for(lease)
    assert e is not None
    assert e.dst is lease.subnet_int and e.gateway is lease.subnet_int
    assert e.public_ip is lease.attrs.public_ip_int
