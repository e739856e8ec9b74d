"""Network config parsing and checking: upstream (§3.4) and derived (§3.5) vectors, Go JSON rules."""

from __future__ import annotations

import contextlib
import dataclasses
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannel.config import (
    ConfigError,
    NetworkConfig,
    check_network_config,
    compatible_subnet,
    parse_network_config,
)


def checked(text: str) -> NetworkConfig:
    return check_network_config(parse_network_config(text))


# --- §3.4 upstream vectors -------------------------------------------------------------------------


def test_upstream_v4_defaults_lowercase_key() -> None:
    cfg = checked('{ "network": "10.3.0.0/16" }')
    assert cfg.network == IPv4Network("10.3.0.0/16")
    assert cfg.subnet_min == IPv4Address("10.3.1.0")
    assert cfg.subnet_max == IPv4Address("10.3.255.0")
    assert cfg.subnet_len == 24


def test_upstream_v6_only_defaults() -> None:
    cfg = checked('{ "enableIPv6": true, "ipv6Network": "fc00::/48", "enableIPv4": false }')
    assert cfg.ipv6_network == IPv6Network("fc00::/48")
    assert cfg.ipv6_subnet_min == IPv6Address("fc00:0:0:1::")
    assert cfg.ipv6_subnet_max == IPv6Address("fc00:0:0:ffff::")
    assert cfg.ipv6_subnet_len == 64
    assert not cfg.enable_ipv4


def test_upstream_v4_parse_only_keeps_values() -> None:
    cfg = parse_network_config(
        '{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.5.0", "SubnetMax": "10.3.8.0", "SubnetLen": 28 }'
    )
    assert cfg.network == IPv4Network("10.3.0.0/16")
    assert cfg.subnet_min == IPv4Address("10.3.5.0")
    assert cfg.subnet_max == IPv4Address("10.3.8.0")
    assert cfg.subnet_len == 28


def test_upstream_v6_parse_only_keeps_values() -> None:
    cfg = parse_network_config(
        '{ "EnableIPv6": true, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:1::", '
        '"IPv6SubnetMax": "fc00:0:0:f::", "IPv6SubnetLen": 124, "enableIPv4": false }'
    )
    assert cfg.enable_ipv6 and not cfg.enable_ipv4
    assert cfg.ipv6_network == IPv6Network("fc00::/48")
    assert cfg.ipv6_subnet_min == IPv6Address("fc00:0:0:1::")
    assert cfg.ipv6_subnet_max == IPv6Address("fc00:0:0:f::")
    assert cfg.ipv6_subnet_len == 124


@pytest.mark.parametrize(
    "text",
    [
        '{"Network":"10.0.0.0/8"}',
        '{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}',
        '{"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}',
        '{"Network":"10.0.0.0/8","SubnetMin":"10.0.1.0","SubnetMax":"10.0.20.0"}',
        "",
        "{}",
    ],
)
def test_fuzz_seeds_never_crash(text: str) -> None:
    with contextlib.suppress(ConfigError):
        check_network_config(parse_network_config(text))


def test_empty_document_is_a_parse_error() -> None:
    with pytest.raises(ConfigError, match="unexpected end of JSON input"):
        parse_network_config("")


@pytest.mark.parametrize(
    "text",
    [
        '{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.1.0", "SubnetMax": "10.3.25.0" }',
        '{ "Network": "10.1.0.0/16", "Backend": { "Type": "host-gw" } }',
        '{ "Network": "10.4.0.0/16" }',
    ],
)
def test_upstream_fixture_configs_check_cleanly(text: str) -> None:
    assert checked(text).subnet_len == 24


# --- §3.5 derived vectors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sublen", "smin", "smax"),
    [
        ('{"Network":"10.0.0.0/8"}', 24, "10.0.1.0", "10.255.255.0"),
        ('{"Network":"10.1.0.0/23"}', 25, "10.1.0.128", "10.1.1.128"),
        ('{"Network":"192.168.0.0/28"}', 30, "192.168.0.4", "192.168.0.12"),
    ],
)
def test_derived_v4_defaults(text: str, sublen: int, smin: str, smax: str) -> None:
    cfg = checked(text)
    assert (cfg.subnet_len, cfg.subnet_min, cfg.subnet_max) == (sublen, IPv4Address(smin), IPv4Address(smax))


@pytest.mark.parametrize(
    ("text", "sublen", "smin", "smax"),
    [
        (
            '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56"}',
            64,
            "fd00:0:0:1::",
            "fd00:0:0:ff::",
        ),
        ('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/120"}', 122, "fd00::40", "fd00::c0"),
    ],
)
def test_derived_v6_defaults(text: str, sublen: int, smin: str, smax: str) -> None:
    cfg = checked(text)
    got = (cfg.ipv6_subnet_len, cfg.ipv6_subnet_min, cfg.ipv6_subnet_max)
    assert got == (sublen, IPv6Address(smin), IPv6Address(smax))


@pytest.mark.parametrize(
    ("text", "message", "field"),
    [
        (
            '{"Network":"192.168.0.0/29"}',
            "network is too small. Minimum useful network prefix is /28",
            "Network",
        ),
        ('{"Network":"10.0.0.0/16","SubnetLen":31}', "SubnetLen must be less than /31", "SubnetLen"),
        (
            '{"Network":"10.0.0.0/24","SubnetLen":25}',
            "network must be able to accommodate at least four subnets",
            "SubnetLen",
        ),
        (
            '{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}',
            "SubnetMin is not in the range of the Network",
            "SubnetMin",
        ),
        (
            '{"Network":"10.0.0.0/16","SubnetMax":"10.1.0.0"}',
            "SubnetMax is not in the range of the Network",
            "SubnetMax",
        ),
        (
            '{"Network":"10.0.0.0/16","SubnetMin":"10.0.1.5"}',
            "SubnetMin is not on a SubnetLen boundary: 10.0.1.5",
            "SubnetMin",
        ),
        (
            '{"Network":"10.0.0.0/16","SubnetMax":"10.0.9.1"}',
            "SubnetMax is not on a SubnetLen boundary: 10.0.9.1",
            "SubnetMax",
        ),
        ("{}", "please define a correct Network parameter in the flannel config", "Network"),
        (
            '{"Network":"0.0.0.0/0"}',
            "please define a correct Network parameter in the flannel config",
            "Network",
        ),
        (
            '{"Network":"10.0.0.0/16","EnableIPv6":true}',
            "please define a correct IPv6Network parameter in the flannel config",
            "IPv6Network",
        ),
        (
            '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/125"}',
            "IPv6Network is too small. Minimum useful network prefix is /124",
            "IPv6Network",
        ),
        (
            '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":127}',
            "SubnetLen must be less than /127",
            "IPv6SubnetLen",
        ),
        (
            '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":49}',
            "network must be able to accommodate at least four subnets",
            "IPv6SubnetLen",
        ),
        (
            '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd01::"}',
            "IPv6SubnetMin is not in the range of the IPv6Network",
            "IPv6SubnetMin",
        ),
        (
            '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMax":"fd01::"}',
            "IPv6SubnetMax is not in the range of the IPv6Network",
            "IPv6SubnetMax",
        ),
        (
            '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:1::1"}',
            "IPv6SubnetMin is not on a SubnetLen boundary: fd00:0:0:1::1",
            "IPv6SubnetMin",
        ),
    ],
)
def test_check_errors_use_upstream_text(text: str, message: str, field: str) -> None:
    cfg = parse_network_config(text)
    with pytest.raises(ConfigError) as info:
        check_network_config(cfg)
    assert str(info.value) == message
    assert info.value.field == field


def test_empty_object_parses_with_ipv4_on_and_udp_backend() -> None:
    cfg = parse_network_config("{}")
    assert cfg.enable_ipv4 and not cfg.enable_ipv6
    assert cfg.backend_type == "udp" and cfg.backend_missing and cfg.backend == {}


def test_network_host_bits_are_masked() -> None:
    assert parse_network_config('{"Network":"10.0.0.5/16"}').network == IPv4Network("10.0.0.0/16")
    assert parse_network_config('{"IPv6Network":"fd00::5/64"}').ipv6_network == IPv6Network("fd00::/64")


def test_ipv6_cidr_in_network_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        parse_network_config('{"Network":"fc00::/48"}')
    assert str(info.value) == "invalid IPv4 CIDR format"
    assert info.value.field == "Network"


def test_backend_type_keeps_its_case_for_a_lower_cased_lookup() -> None:
    cfg = parse_network_config('{"Network":"10.0.0.0/16","Backend":{"Type":"VXLAN"}}')
    assert cfg.backend_type == "VXLAN" and cfg.backend_type.lower() == "vxlan"
    assert cfg.backend == {"Type": "VXLAN"} and not cfg.backend_missing


def test_backend_without_type_gives_empty_type() -> None:
    cfg = parse_network_config('{"Network":"10.0.0.0/16","Backend":{"VNI":4}}')
    assert cfg.backend_type == "" and not cfg.backend_missing and cfg.backend == {"VNI": 4}


def test_backend_type_key_is_case_insensitive() -> None:
    assert parse_network_config('{"backend":{"type":"host-gw"}}').backend_type == "host-gw"


def test_backend_null_counts_as_present_without_type() -> None:
    cfg = parse_network_config('{"Backend":null}')
    assert cfg.backend_type == "" and not cfg.backend_missing


@pytest.mark.parametrize("backend", ['"vxlan"', "[1]", "5", '{"Type":5}', '{"Type":{}}'])
def test_backend_must_be_an_object_with_a_string_type(backend: str) -> None:
    with pytest.raises(ConfigError, match=r"^error decoding Backend property of config: ") as info:
        parse_network_config('{"Backend":' + backend + "}")
    assert info.value.field == "Backend"


def test_backend_type_key_in_document_is_ignored() -> None:
    assert parse_network_config('{"BackendType":"vxlan"}').backend_type == "udp"


# --- Go JSON rules ---------------------------------------------------------------------------------


def test_keys_are_case_insensitive() -> None:
    cfg = parse_network_config(
        '{"NETWORK":"10.0.0.0/8","subnetlen":20,"subnetMIN":"10.0.16.0","SUBNETMAX":"10.0.32.0",'
        '"ENABLEIPV6":true,"ipv6network":"fd00::/48","IPV6SUBNETLEN":64,"enablenftables":true}'
    )
    assert cfg.network == IPv4Network("10.0.0.0/8")
    assert (cfg.subnet_len, cfg.subnet_min, cfg.subnet_max) == (
        20,
        IPv4Address("10.0.16.0"),
        IPv4Address("10.0.32.0"),
    )
    assert cfg.enable_ipv6 and cfg.enable_nftables
    assert cfg.ipv6_network == IPv6Network("fd00::/48") and cfg.ipv6_subnet_len == 64


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ('{"Network":"10.1.0.0/16","Network":"10.2.0.0/16"}', "10.2.0.0/16"),
        ('{"Network":"10.1.0.0/16","network":"10.2.0.0/16"}', "10.2.0.0/16"),
        ('{"network":"10.1.0.0/16","Network":"10.2.0.0/16"}', "10.2.0.0/16"),
        ('{"network":"10.1.0.0/16","Network":"10.2.0.0/16","network":"10.3.0.0/16"}', "10.3.0.0/16"),
    ],
)
def test_duplicate_keys_last_one_wins(text: str, want: str) -> None:
    assert parse_network_config(text).network == IPv4Network(want)


def test_unknown_keys_are_ignored() -> None:
    assert parse_network_config('{"Network":"10.0.0.0/8","Whatever":[1,2]}').network == IPv4Network(
        "10.0.0.0/8"
    )


def test_null_bool_and_number_keep_defaults() -> None:
    cfg = parse_network_config('{"EnableIPv4":null,"SubnetLen":null,"IPv6SubnetMin":null}')
    assert cfg.enable_ipv4 and cfg.subnet_len == 0 and cfg.ipv6_subnet_min is None


def test_json_null_document_is_an_empty_config() -> None:
    assert parse_network_config("null") == NetworkConfig(backend_missing=True)


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        (
            '{"EnableIPv4":"true"}',
            "EnableIPv4",
            "json: cannot unmarshal string into Go struct field Config.EnableIPv4 of type bool",
        ),
        (
            '{"EnableIPv6":1}',
            "EnableIPv6",
            "json: cannot unmarshal number into Go struct field Config.EnableIPv6 of type bool",
        ),
        ('{"EnableNFTables":"yes"}', "EnableNFTables", None),
        (
            '{"SubnetLen":"24"}',
            "SubnetLen",
            "json: cannot unmarshal string into Go struct field Config.SubnetLen of type uint",
        ),
        (
            '{"SubnetLen":-1}',
            "SubnetLen",
            "json: cannot unmarshal number -1 into Go struct field Config.SubnetLen of type uint",
        ),
        ('{"SubnetLen":24.5}', "SubnetLen", None),
        ('{"SubnetLen":true}', "SubnetLen", None),
        ('{"IPv6SubnetLen":-64}', "IPv6SubnetLen", None),
        ('{"Network":10}', "Network", "invalid CIDR address: 10"),
        ('{"Network":null}', "Network", "invalid CIDR address: null"),
        ('{"Network":"10.0.0.0"}', "Network", "invalid CIDR address: 10.0.0.0"),
        ('{"Network":"10.0.0.0/255.255.0.0"}', "Network", None),
        ('{"IPv6Network":"nope"}', "IPv6Network", "invalid CIDR address: nope"),
        ('{"IPv6Network":"10.0.0.0/8"}', "IPv6Network", "invalid IPv6 CIDR format"),
        ('{"SubnetMin":"10.0.0"}', "SubnetMin", "invalid IP address format"),
        ('{"SubnetMax":"fd00::"}', "SubnetMax", "invalid IPv4 address format"),
        ('{"SubnetMin":null}', "SubnetMin", "invalid IP address format"),
        ('{"IPv6SubnetMax":"zz"}', "IPv6SubnetMax", "invalid IP address format"),
        ('{"Networks":"10.0.0.0/8"}', "Networks", None),
        ('{"Networks":["bad"]}', "Networks", "invalid CIDR address: bad"),
    ],
)
def test_type_errors_name_the_key(text: str, field: str, message: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        parse_network_config(text)
    assert info.value.field == field
    if message is not None:
        assert str(info.value) == message


@pytest.mark.parametrize("text", ["{", "[]", '"x"', "{} {}", '{"SubnetLen":NaN}', "nul"])
def test_invalid_json_raises_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_network_config(text)


def test_zero_addresses_mean_unset() -> None:
    cfg = parse_network_config('{"Network":"10.0.0.0/16","SubnetMin":"0.0.0.0","IPv6SubnetMin":"::"}')
    assert cfg.subnet_min is None and cfg.ipv6_subnet_min is None
    assert check_network_config(cfg).subnet_min == IPv4Address("10.0.1.0")


def test_bytes_input_is_accepted() -> None:
    assert parse_network_config(b'{"Network":"10.0.0.0/8"}').network == IPv4Network("10.0.0.0/8")


# --- check returns a new value ---------------------------------------------------------------------


def test_check_returns_a_new_config_and_leaves_the_input_alone() -> None:
    cfg = parse_network_config('{"Network":"10.3.0.0/16"}')
    out = check_network_config(cfg)
    assert out is not cfg
    assert cfg.subnet_len == 0 and cfg.subnet_min is None
    assert dataclasses.replace(out, subnet_len=0, subnet_min=None, subnet_max=None) == cfg


def test_check_with_both_families_disabled_passes() -> None:
    cfg = parse_network_config('{"EnableIPv4":false}')
    assert check_network_config(cfg) == cfg


def test_explicit_subnet_len_is_kept_and_used_for_defaults() -> None:
    cfg = checked('{"Network":"10.0.0.0/16","SubnetLen":20}')
    assert (cfg.subnet_len, cfg.subnet_min, cfg.subnet_max) == (
        20,
        IPv4Address("10.0.16.0"),
        IPv4Address("10.0.240.0"),
    )


def test_default_subnet_max_wraps_like_uint32() -> None:
    cfg = checked('{"Network":"255.0.0.0/8"}')
    assert cfg.subnet_max == IPv4Address("255.255.255.0")


# --- compatible_subnet (§6.3 step 3) ---------------------------------------------------------------

V4 = checked('{"Network":"10.0.0.0/16"}')
DUAL = checked('{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56"}')


@pytest.mark.parametrize(
    ("cfg", "v4", "v6", "ok"),
    [
        (V4, "10.0.5.0/24", None, True),
        (V4, "10.0.1.0/24", None, True),
        (V4, "10.0.255.0/24", None, True),
        (V4, "10.0.0.0/24", None, False),
        (V4, "10.1.0.0/24", None, False),
        (V4, "10.0.5.0/25", None, False),
        (V4, "10.0.5.0/24", "fd00:0:0:1::/64", False),
        (V4, None, None, False),
        (DUAL, "10.0.5.0/24", "fd00:0:0:1::/64", True),
        (DUAL, "10.0.5.0/24", None, False),
        (DUAL, "10.0.5.0/24", "fd00::/64", False),
        (DUAL, "10.0.5.0/24", "fd00:0:0:1::/80", False),
        (DUAL, "10.0.5.0/24", "fd01::/64", False),
    ],
)
def test_compatible_subnet(cfg: NetworkConfig, v4: str | None, v6: str | None, ok: bool) -> None:
    net4 = IPv4Network(v4) if v4 else None
    net6 = IPv6Network(v6) if v6 else None
    assert compatible_subnet(cfg, net4, net6) is ok
