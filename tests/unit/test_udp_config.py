"""The udp backend's config section, the offload advertisement in leases, and its construction checks."""

from __future__ import annotations

import json
import logging
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from typing import Any

import pytest

from flannel.backend.base import Backend, BackendContext, ExternalInterface
from flannel.backend.registry import create_backend
from flannel.backend.udp import OFFLOAD_DATA, UDPBackend, UDPConfig, parse_udp_config, peer_offload
from flannel.config import parse_network_config
from flannel.errors import ConfigError, FlannelError
from flannel.lease import Lease, LeaseAttrs
from tests.backend_harness import FakeSubnetManager

EXT = ExternalInterface(name="eth0", index=2, mtu=1500, iface_addr=IPv4Address("198.18.0.1"), iface_v6_addr=None,
                        ext_addr=IPv4Address("198.18.0.1"), ext_v6_addr=None)
V6_ONLY_EXT = ExternalInterface(name="eth1", index=3, mtu=1500, iface_addr=None, iface_v6_addr=IPv6Address("fd00::1"),
                                ext_addr=None, ext_v6_addr=IPv6Address("fd00::1"))


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# -- parse_udp_config -------------------------------------------------------------------------------------------


def test_defaults(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_udp_config({"Type": "udp"}) == UDPConfig(port=8285, offload=True)
    assert parse_udp_config({}) == UDPConfig(port=8285, offload=True)
    assert parse_udp_config({"Type": "udp", "Port": None, "Offload": None}) == UDPConfig(port=8285, offload=True)
    assert warnings(caplog) == []


def test_explicit_values() -> None:
    assert parse_udp_config({"Type": "udp", "Port": 9000, "Offload": False}) == UDPConfig(port=9000, offload=False)
    assert parse_udp_config({"Port": 1}).port == 1
    assert parse_udp_config({"Port": 65535}).port == 65535
    with pytest.raises(ConfigError, match="must be an integer"):  # as Go's encoding/json: not an int literal
        parse_udp_config({"Port": 8286.0})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "Backend.Port must be between 1 and 65535, got 0"),
        (65536, "Backend.Port must be between 1 and 65535, got 65536"),
        (-1, "Backend.Port must be between 1 and 65535, got -1"),
        ("8285", "Backend.Port must be an integer, got '8285'"),
        (1.5, "Backend.Port must be an integer, got 1.5"),
        (True, "Backend.Port must be an integer, got True"),
    ],
)
def test_a_bad_port_is_rejected_naming_the_key(value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_udp_config({"Type": "udp", "Port": value})
    assert err.value.field == "Backend.Port"
    assert str(err.value) == message


@pytest.mark.parametrize("value", ["yes", "true", 1, 0])
def test_a_non_boolean_offload_is_rejected_naming_the_key(value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        parse_udp_config({"Type": "udp", "Offload": value})
    assert err.value.field == "Backend.Offload"
    assert str(err.value).startswith("Backend.Offload must be true or false")


def test_an_unknown_key_is_a_warning_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_udp_config({"Type": "udp", "GSO": 1, "VNI": 1}) == UDPConfig()
    assert sorted(warnings(caplog)) == ["udp backend: ignoring unknown key Backend.GSO",
                                        "udp backend: ignoring unknown key Backend.VNI"]


def test_keys_are_case_insensitive(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_udp_config({"type": "UDP", "port": 7000, "OFFLOAD": False}) == UDPConfig(port=7000, offload=False)
    assert parse_udp_config({"TYPE": "udp", "pOrT": 7001, "offload": True}) == UDPConfig(port=7001, offload=True)
    assert warnings(caplog) == []


def test_a_bad_value_under_a_differently_cased_key_is_still_rejected() -> None:
    with pytest.raises(ConfigError) as err:
        parse_udp_config({"port": "8285"})
    assert err.value.field == "Backend.Port"


# -- peer_offload -----------------------------------------------------------------------------------------------


def lease(backend_data: str | None, subnet: str = "10.244.3.0/24") -> Lease:
    return Lease(subnet=IPv4Network(subnet), attrs=LeaseAttrs(public_ip=IPv4Address("198.18.0.3"),
                                                              backend_data=backend_data))


@pytest.mark.parametrize("data", ['{"Offload":1}', '{"Offload":2}', '{"Offload":1,"Other":"x"}'])
def test_a_lease_advertising_offload_is_an_offload_peer(data: str, caplog: pytest.LogCaptureFixture) -> None:
    assert peer_offload(lease(data)) is True
    assert warnings(caplog) == []


@pytest.mark.parametrize(
    "data",
    [
        None,
        "",
        "null",
        '{"VtepMAC":"0e:2a:bb:cc:dd:ee"}',
        '{"Offload":0}',
        '{"Offload":"1"}',
        '{"Offload":null}',
        '{"GSO":1}',
        "[1]",
        "1",
    ],
)
def test_anything_else_is_a_plain_peer_silently(data: str | None, caplog: pytest.LogCaptureFixture) -> None:
    assert peer_offload(lease(data)) is False
    assert warnings(caplog) == []


@pytest.mark.parametrize("data", ['{"Offload":', "{Offload:1}", "not json"])
def test_malformed_backend_data_warns_naming_the_lease_and_means_plain(
        data: str, caplog: pytest.LogCaptureFixture) -> None:
    assert peer_offload(lease(data, "10.244.9.0/24")) is False
    found = warnings(caplog)
    assert len(found) == 1 and "10.244.9.0-24" in found[0]


def test_what_this_node_advertises_is_read_back_as_offload_after_a_datastore_round_trip() -> None:
    attrs = LeaseAttrs(public_ip=IPv4Address("198.18.0.1"), backend_data=OFFLOAD_DATA)
    stored = attrs.to_json()
    assert json.loads(stored)["BackendData"] == {"Offload": 1}
    assert peer_offload(Lease(subnet=IPv4Network("10.244.1.0/24"), attrs=LeaseAttrs.from_json(stored))) is True
    upstream = LeaseAttrs.from_json('{"PublicIP":"198.18.0.2","PublicIPv6":null}')  # what a Go udp node writes
    assert peer_offload(Lease(subnet=IPv4Network("10.244.2.0/24"), attrs=upstream)) is False


# -- construction through create_backend ------------------------------------------------------------------------


def build(doc: dict[str, Any], ext: ExternalInterface = EXT) -> Backend:
    config = parse_network_config(json.dumps(doc))
    sm = FakeSubnetManager(Lease(subnet=IPv4Network("10.244.7.0/24")))
    return create_backend(BackendContext(subnet_manager=sm, ext_iface=ext), config)


def test_create_backend_builds_a_udp_backend_with_its_config(caplog: pytest.LogCaptureFixture) -> None:
    made = build({"Network": "10.244.0.0/16", "Backend": {"Type": "UDP", "port": 9999, "Offload": False}})
    assert isinstance(made, UDPBackend)
    assert made.cfg == UDPConfig(port=9999, offload=False)
    assert warnings(caplog) == []


def test_udp_is_the_default_backend() -> None:
    assert isinstance(build({"Network": "10.244.0.0/16"}), UDPBackend)


def test_create_backend_rejects_a_bad_port_naming_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        build({"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": 0}})
    assert err.value.field == "Backend.Port"


def test_enable_ipv6_is_rejected() -> None:
    with pytest.raises(ConfigError) as err:
        build({"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00::/56",
               "Backend": {"Type": "udp"}})
    assert err.value.field == "EnableIPv6"
    assert "IPv4 only" in str(err.value)


def test_an_ipv6_only_network_is_rejected() -> None:
    with pytest.raises(ConfigError) as err:
        build({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00::/56", "Backend": {"Type": "udp"}},
              V6_ONLY_EXT)
    assert err.value.field == "EnableIPv6"


def test_a_missing_network_is_rejected() -> None:
    with pytest.raises(ConfigError) as err:
        build({"Backend": {"Type": "udp"}})
    assert err.value.field == "Network"


def test_an_interface_without_an_ipv4_address_is_rejected() -> None:
    with pytest.raises(FlannelError) as err:
        build({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}, V6_ONLY_EXT)
    assert not isinstance(err.value, ConfigError)
    assert "IPv4 address" in str(err.value) and "eth1" in str(err.value)


@pytest.mark.parametrize(("iface_addr", "ext_addr"), [(None, "198.18.0.1"), ("198.18.0.1", None)])
def test_both_the_interface_and_the_public_ipv4_address_are_needed(iface_addr: str | None,
                                                                     ext_addr: str | None) -> None:
    ext = ExternalInterface(name="eth0", index=2, mtu=1500,
                            iface_addr=IPv4Address(iface_addr) if iface_addr else None, iface_v6_addr=None,
                            ext_addr=IPv4Address(ext_addr) if ext_addr else None, ext_v6_addr=None)
    with pytest.raises(FlannelError, match="needs an IPv4 address on eth0"):
        build({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}, ext)
