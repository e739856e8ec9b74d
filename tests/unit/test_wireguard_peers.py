"""What a remote lease becomes on this node's WireGuard devices (spec §10.6): endpoints, allowed IPs, ports."""

from __future__ import annotations

import base64
import dataclasses
import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flannel.backend.wireguard_config import Mode
from flannel.backend.wireguard_peers import PeerRules, peers_for, select_endpoint
from flannel.errors import LeaseDecodeError
from flannel.lease import Lease, LeaseAttrs
from flannel.secret import Secret

KEY = base64.b64encode(bytes([7]) * 32).decode()
RULES = PeerRules(mode=Mode.SEPARATE, port=51820, port_v6=51821, network=IPv4Network("10.244.0.0/16"),
                  network_v6=IPv6Network("fd00:10:244::/56"), own=IPv4Network("10.244.1.0/24"),
                  own_v6=IPv6Network("fd00:10:244:1::/64"), ext_v4=IPv4Address("198.18.0.11"),
                  ext_v6=IPv6Address("2001:db8::11"), psk=Secret(bytes(32 * [1])), keepalive=25)


def lease(pub4: str = "198.18.0.12", pub6: str | None = "2001:db8::12", port: int | None = 51820,
          port6: int | None = 51821, key: object = KEY) -> Lease:
    def data(p: int | None) -> str:
        text = f'"{key}"' if isinstance(key, str) else str(key)
        return '{"PublicKey":' + text + (f',"Port":{p}' if p is not None else "") + "}"
    return Lease(subnet=IPv4Network("10.244.2.0/24"), ipv6_subnet=IPv6Network("fd00:10:244:2::/64"),
                 attrs=LeaseAttrs(public_ip=IPv4Address(pub4), public_ipv6=IPv6Address(pub6) if pub6 else None,
                                  backend_type="wireguard", backend_data=data(port),
                                  backend_v6_data=data(port6) if pub6 else None))


def test_separate_mode_gives_one_peer_per_device() -> None:
    p4, p6 = peers_for(RULES, lease())
    assert p4 is not None and p6 is not None
    assert p4.endpoint == (IPv4Address("198.18.0.12"), 51820) and p4.allowed_ips == {ip_network("10.244.2.0/24")}
    assert p6.endpoint == (IPv6Address("2001:db8::12"), 51821)
    assert p6.allowed_ips == {ip_network("fd00:10:244:2::/64")}
    assert p4.public_key == bytes([7]) * 32 and p4.keepalive == 25 and p4.psk == RULES.psk


def test_a_port_of_zero_or_none_means_our_own_listen_port() -> None:
    p4, p6 = peers_for(dataclasses.replace(RULES, port=1111, port_v6=2222), lease(port=0, port6=None))
    assert p4 is not None and p6 is not None
    assert p4.endpoint[1] == 1111 and p6.endpoint[1] == 2222  # type: ignore[index]


@pytest.mark.parametrize(("mode", "endpoint"), [
    (Mode.IPV4, (IPv4Address("198.18.0.12"), 51820)),
    (Mode.IPV6, (IPv6Address("2001:db8::12"), 51821)),
    (Mode.AUTO, (IPv4Address("198.18.0.12"), 51820)),
])
def test_single_device_modes_carry_every_subnet_to_one_endpoint(mode: Mode, endpoint: object) -> None:
    p, none = peers_for(dataclasses.replace(RULES, mode=mode), lease())
    assert none is None and p is not None
    assert p.endpoint == endpoint
    assert p.allowed_ips == {ip_network("10.244.2.0/24"), ip_network("fd00:10:244:2::/64")}


def test_single_device_mode_falls_back_to_the_one_listen_port() -> None:
    p, _ = peers_for(dataclasses.replace(RULES, mode=Mode.IPV6), lease(port6=0))
    assert p is not None and p.endpoint == (IPv6Address("2001:db8::12"), 51820)


@pytest.mark.parametrize(("remote4", "remote6", "ext4", "ext6", "family"), [
    ("203.0.113.5", None, "198.18.0.1", None, 4),  # no remote IPv6
    ("0.0.0.0", "2001:db8::5", "198.18.0.1", "2001:db8::1", 6),  # IPv6-only remote (beyond upstream)
    ("203.0.113.5", "2001:db8::5", "198.18.0.1", "2001:db8::1", 4),  # public remote IPv4, local IPv4
    ("10.0.0.5", "2001:db8::5", "10.0.0.1", "2001:db8::1", 6),  # private IPv4, public IPv6 both sides
    ("10.0.0.5", "2001:db8::5", "10.0.0.1", "fd00::1", 4),  # our IPv6 is private
    ("10.0.0.5", "fd00::5", "10.0.0.1", "2001:db8::1", 4),  # their IPv6 is private
    ("192.168.1.5", "2001:db8::5", "10.0.0.1", None, 4),  # we have no IPv6
    ("172.16.0.5", "2001:db8::5", None, "2001:db8::1", 6),
])
def test_auto_mode_endpoint_choice_is_upstreams(remote4: str, remote6: str | None, ext4: str | None,
                                                ext6: str | None, family: int) -> None:
    rules = dataclasses.replace(RULES, mode=Mode.AUTO, ext_v4=IPv4Address(ext4) if ext4 else None,
                                ext_v6=IPv6Address(ext6) if ext6 else None)
    v4 = IPv4Address(remote4)
    assert select_endpoint(rules, v4 if int(v4) else None, IPv6Address(remote6) if remote6 else None) == family


@pytest.mark.parametrize("key", ["garbage", base64.b64encode(b"short").decode(), 42, "null"])
def test_a_garbage_public_key_is_a_decode_error_naming_the_field(key: object) -> None:
    with pytest.raises(LeaseDecodeError, match=r"BackendData\.PublicKey"):
        peers_for(RULES, lease(key=key))


def test_a_subnet_outside_the_network_is_refused() -> None:
    bad = dataclasses.replace(lease(), subnet=IPv4Network("192.168.0.0/24"))
    with pytest.raises(LeaseDecodeError, match="not a peer subnet"):
        peers_for(RULES, bad)


def test_a_lease_without_data_for_a_family_gets_no_peer_there() -> None:
    p4, p6 = peers_for(RULES, lease(pub6=None))
    assert p4 is not None and p6 is None


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False,
                     allow_infinity=False), st.text(max_size=50), st.just(KEY), st.just(51820))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
_data = st.one_of(_values, st.dictionaries(st.sampled_from(["PublicKey", "publickey", "Port", "PORT", "x"]),
                                           _values, max_size=3))


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(_data, _data, st.sampled_from(list(Mode)))
def test_any_lease_data_gives_peers_or_a_decode_error(data4: object, data6: object, mode: Mode) -> None:
    attrs = LeaseAttrs(public_ip=IPv4Address("198.18.0.12"), public_ipv6=IPv6Address("2001:db8::12"),
                       backend_type="wireguard", backend_data=json.dumps(data4), backend_v6_data=json.dumps(data6))
    lease = Lease(subnet=IPv4Network("10.244.2.0/24"), ipv6_subnet=IPv6Network("fd00:10:244:2::/64"), attrs=attrs)
    try:
        got = peers_for(dataclasses.replace(RULES, mode=mode), lease)
    except LeaseDecodeError as exc:
        assert "BackendData" in str(exc) or "BackendV6Data" in str(exc), exc
        return
    for peer in got:
        if peer is not None:
            assert len(peer.public_key) == 32 and peer.endpoint is not None and 0 < peer.endpoint[1] <= 65535
