"""Every backend reads its ``Backend`` section by the same rules (``backend/backend_config.py``).

Each backend is built the way the daemon builds it, through ``create_backend`` with a ``BackendContext``, so
these tests prove that the real construction path validates, not just a parse function: a value of the
wrong type or out of range is a ``ConfigError`` naming ``Backend.<key>``, an unknown key is a warning naming
it, and keys match case-insensitively (as Go's ``encoding/json`` does). host-gw and alloc have no keys of
their own, so for them every key but ``Type`` is unknown: a warning, whatever its value.
"""

from __future__ import annotations

import json
import logging
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from flannel.backend.alloc import AllocBackend
from flannel.backend.base import Backend, BackendContext, ExternalInterface
from flannel.backend.extension import ExtensionBackend
from flannel.backend.hostgw import HostGWBackend
from flannel.backend.ipip import IPIPBackend
from flannel.backend.registry import create_backend
from flannel.backend.udp import UDPBackend, parse_udp_config
from flannel.backend.vxlan import VXLANBackend
from flannel.config import parse_network_config
from flannel.errors import ConfigError
from flannel.lease import Lease
from tests.backend_harness import FakeSubnetManager

EXT = ExternalInterface(name="eth0", index=2, mtu=1500, iface_addr=IPv4Address("198.18.0.1"), iface_v6_addr=None,
                        ext_addr=IPv4Address("198.18.0.1"), ext_v6_addr=None)
CLASSES: dict[str, type] = {"vxlan": VXLANBackend, "host-gw": HostGWBackend, "ipip": IPIPBackend,
                            "extension": ExtensionBackend, "alloc": AllocBackend, "udp": UDPBackend}
BACKENDS = list(CLASSES)


def build(backend: dict[str, Any]) -> Any:
    """The backend the daemon would construct for this ``Backend`` section."""
    config = parse_network_config(json.dumps({"Network": "10.244.0.0/16", "Backend": backend}))
    sm = FakeSubnetManager(Lease(subnet=IPv4Network("10.244.7.0/24")))
    made: Backend = create_backend(BackendContext(subnet_manager=sm, ext_iface=EXT), config)  # type: ignore[arg-type]
    return made


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("backend", "key"),
    [
        ({"Type": "vxlan", "VNI": "1"}, "VNI"),
        ({"Type": "vxlan", "Port": 4789.5}, "Port"),
        ({"Type": "vxlan", "MTU": True}, "MTU"),
        ({"Type": "vxlan", "GBP": "true"}, "GBP"),
        ({"Type": "vxlan", "Learning": 1}, "Learning"),
        ({"Type": "vxlan", "DirectRouting": "yes"}, "DirectRouting"),
        ({"Type": "ipip", "DirectRouting": 1}, "DirectRouting"),
        ({"Type": "udp", "Port": "8285"}, "Port"),
        ({"Type": "udp", "Port": 8285.5}, "Port"),
        ({"Type": "udp", "Offload": "yes"}, "Offload"),
        ({"Type": "extension", "PreStartupCommand": ["echo", "x"]}, "PreStartupCommand"),
        ({"Type": "extension", "PostStartupCommand": 1}, "PostStartupCommand"),
        ({"Type": "extension", "SubnetAddCommand": {"sh": "x"}}, "SubnetAddCommand"),
        ({"Type": "extension", "SubnetRemoveCommand": False}, "SubnetRemoveCommand"),
        ({"Type": "extension", "SubnetAddResyncInterval": "10"}, "SubnetAddResyncInterval"),
        ({"Type": "extension", "SubnetAddResyncInterval": 1.5}, "SubnetAddResyncInterval"),
    ],
)
def test_a_value_of_the_wrong_type_is_a_config_error_naming_the_key(backend: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(backend)
    assert err.value.field == f"Backend.{key}"
    assert str(err.value).startswith(f"Backend.{key} must be ")


@pytest.mark.parametrize(
    ("backend", "key", "bounds"),
    [
        ({"Type": "vxlan", "VNI": 1 << 24}, "VNI", "between 0 and 16777215, got 16777216"),
        ({"Type": "vxlan", "VNI": -1}, "VNI", "between 0 and 16777215, got -1"),
        ({"Type": "vxlan", "Port": 65536}, "Port", "between 0 and 65535, got 65536"),
        ({"Type": "vxlan", "Port": -1}, "Port", "between 0 and 65535, got -1"),
        ({"Type": "udp", "Port": 0}, "Port", "between 1 and 65535, got 0"),
        ({"Type": "udp", "Port": 65536}, "Port", "between 1 and 65535, got 65536"),
        ({"Type": "extension", "SubnetAddCommand": "true", "SubnetAddResyncInterval": -5},
         "SubnetAddResyncInterval", "at least 0, got -5"),
    ],
)
def test_a_value_out_of_range_is_a_config_error_naming_the_key_and_the_bounds(
        backend: dict[str, Any], key: str, bounds: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(backend)
    assert err.value.field == f"Backend.{key}"
    assert str(err.value) == f"Backend.{key} must be {bounds}"


def test_a_vxlan_mtu_too_small_for_the_headers_names_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        build({"Type": "vxlan", "MTU": 100})
    assert err.value.field == "Backend.MTU" and "too small" in str(err.value)


@pytest.mark.parametrize("mtu", [65536, 70000, 4294967295, 4294967296, 10**10, 10**300])
def test_a_vxlan_mtu_beyond_the_kernels_range_is_a_config_error_not_a_netlink_one(mtu: int) -> None:
    # These used to reach netlink (EINVAL) or struct.pack (u32 overflow) and end flanneld with a traceback.
    with pytest.raises(ConfigError) as err:
        build({"Type": "vxlan", "MTU": mtu})
    assert err.value.field == "Backend.MTU"
    assert "too large for vxlan: it must be between 119 and 65535" in str(err.value)


@pytest.mark.parametrize("mtu", [119, 1500, 9000, 65535])
def test_a_vxlan_mtu_within_the_range_is_taken(mtu: int) -> None:
    build({"Type": "vxlan", "MTU": mtu})


@pytest.mark.parametrize("text", ["1500.0", "1.5e3", "1e10"])
def test_a_number_written_with_a_fraction_or_exponent_is_not_an_integer_as_in_go(text: str) -> None:
    # Go's encoding/json: "cannot unmarshal number 1500.0 into Go struct field ... of type int".
    config = parse_network_config('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan","MTU":' + text + "}}")
    with pytest.raises(ConfigError) as err:
        build(config.backend)
    assert err.value.field == "Backend.MTU" and "must be an integer" in str(err.value)


def test_an_infinite_number_is_not_an_integer() -> None:
    # int(inf) raised OverflowError; gojson refuses 1e400 anyway, but a section may come from elsewhere.
    with pytest.raises(ConfigError) as err:
        parse_udp_config({"Type": "udp", "Port": float("inf")})
    assert err.value.field == "Backend.Port" and str(err.value) == "Backend.Port must be an integer, got inf"


def test_a_number_beyond_float64_is_refused_when_the_config_is_read() -> None:
    with pytest.raises(ConfigError, match="number 1e400 is out of range"):
        parse_network_config('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan","MTU":1e400}}')


@pytest.mark.parametrize("name", BACKENDS)
def test_an_unknown_key_is_a_warning_naming_it_not_an_error(name: str, caplog: pytest.LogCaptureFixture) -> None:
    build({"Type": name, "Bogus": [1, 2], "VNl": "x"})
    found = warnings(caplog)
    assert f"{name} backend: ignoring unknown key Backend.Bogus" in found
    assert f"{name} backend: ignoring unknown key Backend.VNl" in found


@pytest.mark.parametrize("name", BACKENDS)
def test_type_in_any_case_is_known_and_selects_the_backend(name: str, caplog: pytest.LogCaptureFixture) -> None:
    backend = build({"TYPE": name.upper()})
    assert type(backend) is CLASSES[name]
    assert warnings(caplog) == []


def test_vxlan_keys_are_case_insensitive(caplog: pytest.LogCaptureFixture) -> None:
    cfg = build({"type": "vxlan", "vni": 7, "PORT": 4789, "mtu": 1400, "gbp": True, "LEARNING": True,
                 "directRouting": True}).cfg
    assert (cfg.vni, cfg.port, cfg.mtu, cfg.gbp, cfg.learning, cfg.direct_routing) == (7, 4789, 1400, True, True,
                                                                                        True)
    assert warnings(caplog) == []


def test_vxlan_windows_only_keys_are_warned_about_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    build({"Type": "vxlan", "macprefix": "0E-2A", "Name": "x"})
    assert set(warnings(caplog)) == {"vxlan backend: Backend.macprefix only applies on Windows; ignored",
                                     "vxlan backend: Backend.Name only applies on Windows; ignored"}


def test_ipip_keys_are_case_insensitive(caplog: pytest.LogCaptureFixture) -> None:
    assert build({"Type": "ipip", "directrouting": True}).cfg.direct_routing is True
    assert build({"Type": "ipip", "DIRECTROUTING": None}).cfg.direct_routing is False  # null: not set
    assert warnings(caplog) == []


def test_extension_keys_are_case_insensitive(caplog: pytest.LogCaptureFixture) -> None:
    cfg = build({"Type": "extension", "prestartupcommand": " echo a ", "POSTSTARTUPCOMMAND": "echo b",
                 "subnetAddCommand": "ip route replace $SUBNET via $PUBLIC_IP", "SubnetRemovecommand": "true",
                 "subnetaddresyncinterval": 30}).cfg
    assert (cfg.pre_startup, cfg.post_startup, cfg.subnet_remove, cfg.resync_interval) == (
        "echo a", "echo b", "true", 30)
    assert cfg.subnet_add == "ip route replace $SUBNET via $PUBLIC_IP"
    assert warnings(caplog) == []


def test_extension_shutdown_command_is_warned_about_as_not_implemented(caplog: pytest.LogCaptureFixture) -> None:
    build({"Type": "extension", "shutdowncommand": "true"})
    assert warnings(caplog) == ["extension backend: Backend.shutdowncommand is not implemented (as upstream); ignored"]


@pytest.mark.parametrize("name", ["host-gw", "alloc"])
def test_backends_without_keys_accept_any_value_of_an_unknown_key(name: str, caplog: pytest.LogCaptureFixture) -> None:
    # Upstream's host-gw and alloc read no keys at all, so nothing a section holds can be of the wrong type.
    build({"type": name, "DirectRouting": "yes", "VNI": None})
    assert sorted(warnings(caplog)) == [f"{name} backend: ignoring unknown key Backend.DirectRouting",
                                        f"{name} backend: ignoring unknown key Backend.VNI"]
