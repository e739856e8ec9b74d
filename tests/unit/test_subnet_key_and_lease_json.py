"""Subnet key text (§4), LeaseAttrs JSON bytes (§5.1) and Go address text: what Go nodes write and read."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannel.errors import LeaseDecodeError
from flannel.gojson import fold, load_object
from flannel.ipaddr import go_ip_text, go_net_text
from flannel.ipaddr import ipv4_int as _ipv4_int
from flannel.lease import UNSET_IPV4, Lease, LeaseAttrs, make_subnet_key, parse_subnet_key, vtep_mac

# --- subnet keys -----------------------------------------------------------------------------------


def test_v4_key_parses_and_round_trips() -> None:
    assert parse_subnet_key("10.12.13.0-24") == (IPv4Network("10.12.13.0/24"), None)
    assert make_subnet_key(IPv4Network("10.12.13.0/24"), None) == "10.12.13.0-24"


def test_dual_stack_key_parses_and_round_trips() -> None:
    parsed = parse_subnet_key("10.12.13.0-24&fd00:12:13::-56")
    assert parsed == (IPv4Network("10.12.13.0/24"), IPv6Network("fd00:12:13::/56"))
    assert make_subnet_key(*parsed) == "10.12.13.0-24&fd00:12:13::-56"


def test_key_regex_is_unanchored_at_the_start() -> None:
    assert parse_subnet_key("/coreos.com/network/subnets/10.5.1.0-24") == (IPv4Network("10.5.1.0/24"), None)


@pytest.mark.parametrize(
    "key",
    [
        "10",
        "10.12.13.0",
        "10.12.13-24",
        "10.12.13.300-24",
        "10.12.13.0-24hi",
        "&2001::-56",
        "10.12.13.0-24&:12:13:-56",
        "10.12.13.0-24&20011::-56",
        "10.12.13.0-24&2001-56",
        "10.12.13.0-24&2001::",
        "10.12.13.0-24&2001::-56hi",
    ],
)
def test_upstream_invalid_keys(key: str) -> None:
    assert parse_subnet_key(key) is None


@pytest.mark.parametrize(
    "key",
    [
        "255.255.255.255-32",  # the IPv4 prefix must fit in 5 bits
        "10.0.0.0-24&fd00::-128",  # the IPv6 prefix must fit in 7 bits
        "10.0.0.0-24&FD00::-64",  # upper-case IPv6 is not matched
        "010.0.0.0-24",  # leading zeros are not an IPv4 address
        "10.0x0y0-24",  # the unescaped dots match anything, but the address must still parse
    ],
)
def test_derived_invalid_keys(key: str) -> None:
    assert parse_subnet_key(key) is None


def test_prefix_31_is_the_largest_ipv4_prefix_accepted() -> None:
    assert parse_subnet_key("10.5.1.0-31") == (IPv4Network("10.5.1.0/31"), None)


@pytest.mark.parametrize("key", ["10.5.1.0-24", "10.5.1.0-24&fc00::-64", "255.255.255.255-32", "garbage", ""])
def test_fuzz_seeds_do_not_crash(key: str) -> None:
    result = parse_subnet_key(key)
    if result is not None:
        assert make_subnet_key(*result) == key


def test_make_key_needs_an_ipv4_part() -> None:
    with pytest.raises(ValueError):
        make_subnet_key(None, IPv6Network("fd00::/64"))


def test_an_ipv6_only_lease_is_named_by_its_ipv6_subnet() -> None:
    assert Lease(subnet=None, ipv6_subnet=IPv6Network("fd00:10:244:3::/64")).key == "fd00:10:244:3::-64"


def test_key_uses_go_text_for_ipv6() -> None:
    assert (
        make_subnet_key(IPv4Network("10.0.0.0/24"), IPv6Network("::a00:0/120")) == "10.0.0.0-24&10.0.0.0-120"
    )


# --- LeaseAttrs JSON -------------------------------------------------------------------------------

MAC4 = '{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}'
MAC6 = '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}'


def test_minimal_lease_is_byte_exact() -> None:
    assert (
        LeaseAttrs(public_ip=IPv4Address("1.2.3.4")).to_json() == '{"PublicIP":"1.2.3.4","PublicIPv6":null}'
    )


def test_vxlan_v4_value() -> None:
    attrs = LeaseAttrs(public_ip=IPv4Address("192.168.64.3"), backend_type="vxlan", backend_data=MAC4)
    assert attrs.to_json() == (
        '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}'
    )


def test_vxlan_dual_stack_value() -> None:
    attrs = LeaseAttrs(
        public_ip=IPv4Address("192.168.64.3"),
        public_ipv6=IPv6Address("fd00::3"),
        backend_type="vxlan",
        backend_data=MAC4,
        backend_v6_data=MAC6,
    )
    assert attrs.to_json() == (
        '{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::3","BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},'
        '"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}'
    )


def test_vxlan_v6_only_value() -> None:
    attrs = LeaseAttrs(public_ipv6=IPv6Address("fd00::3"), backend_type="vxlan", backend_v6_data=MAC6)
    assert attrs.to_json() == (
        '{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::3","BackendType":"vxlan",'
        '"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}'
    )


@pytest.mark.parametrize(
    "value",
    [
        '{"PublicIP":"1.2.3.4","PublicIPv6":null}',
        '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}',
        '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"wireguard",'
        '"BackendData":{"PublicKey":"abc=","Port":51820}}',
        '{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::3","BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}',
        '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"extension","BackendData":"some output"}',
    ],
)
def test_go_values_round_trip_byte_for_byte(value: str) -> None:
    assert LeaseAttrs.from_json(value).to_json() == value


def test_decoding_is_case_insensitive_and_compacts_backend_data() -> None:
    attrs = LeaseAttrs.from_json(
        b'{"publicip": "10.0.0.5", "PUBLICIPV6": "fd00::5", "backendtype": "vxlan",\n'
        b' "backendData": {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}, "backendv6data": {"VNI": 2}}'
    )
    assert attrs.public_ip == IPv4Address("10.0.0.5")
    assert attrs.public_ipv6 == IPv6Address("fd00::5")
    assert attrs.backend_type == "vxlan"
    assert attrs.backend_data == MAC4
    assert attrs.backend_v6_data == '{"VNI":2}'
    assert attrs.backend_json() == {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}
    assert attrs.backend_json(v6=True) == {"VNI": 2}


def test_missing_fields_decode_to_zero_values() -> None:
    attrs = LeaseAttrs.from_json("{}")
    assert attrs == LeaseAttrs()
    assert attrs.public_ip == UNSET_IPV4 and attrs.backend_json() == {}


def test_duplicate_keys_in_lease_last_one_wins() -> None:
    attrs = LeaseAttrs.from_json('{"PublicIP":"1.1.1.1","publicIP":"2.2.2.2"}')
    assert attrs.public_ip == IPv4Address("2.2.2.2")


def test_ipv4_text_in_public_ipv6_prints_dotted_like_go() -> None:
    attrs = LeaseAttrs.from_json('{"PublicIP":"1.2.3.4","PublicIPv6":"5.6.7.8"}')
    assert attrs.to_json() == '{"PublicIP":"1.2.3.4","PublicIPv6":"5.6.7.8"}'


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        "",
        "[]",
        '"x"',
        '{"PublicIP":5}',
        '{"PublicIP":"1.2.3"}',
        '{"PublicIP":"fd00::1"}',
        '{"PublicIPv6":"zz"}',
        '{"PublicIPv6":7}',
        '{"BackendType":5}',
        '{"PublicIP":"1.2.3.4","BackendData":NaN}',
    ],
)
def test_malformed_values_raise_lease_decode_error(value: str) -> None:
    with pytest.raises(LeaseDecodeError):
        LeaseAttrs.from_json(value)


def test_backend_json_that_is_not_an_object_raises() -> None:
    attrs = LeaseAttrs.from_json('{"PublicIP":"1.2.3.4","BackendData":"text"}')
    with pytest.raises(LeaseDecodeError):
        attrs.backend_json()


# --- Go address text -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "text"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("::", "::"),
        ("::1", "::1"),
        ("fd00::3", "fd00::3"),
        ("fc00:0:0:1::", "fc00:0:0:1::"),
        ("1:0:0:1:0:0:0:1", "1:0:0:1::1"),  # the longest zero run is compressed
        ("1:0:0:1:1:0:0:1", "1::1:1:0:0:1"),  # on a tie, the first run
        ("1:0:1:1:1:1:1:1", "1:0:1:1:1:1:1:1"),  # a single zero group is not compressed
        ("::ffff:1.2.3.4", "1.2.3.4"),  # IPv4-mapped prints as IPv4
        ("::a00:1", "10.0.0.1"),  # flannel's big-integer quirk: a 4-byte value prints as IPv4
        ("::100:0", "1.0.0.0"),  # smallest 4-byte value
        ("::ff:ffff", "::ff:ffff"),  # 3 bytes: stays IPv6
        ("::1:0:0", "::1:0:0"),  # 5 bytes: stays IPv6
        ("FD00::AB", "fd00::ab"),  # lower case
    ],
)
def test_go_ip_text(addr: str, text: str) -> None:
    parsed: IPv4Address | IPv6Address = (
        IPv4Address(addr) if "." in addr and ":" not in addr else IPv6Address(addr)
    )
    assert go_ip_text(parsed) == text


def test_go_net_text() -> None:
    assert go_net_text(IPv4Network("10.5.0.0/16")) == "10.5.0.0/16"
    assert go_net_text(IPv6Network("2001:cafe:42::/56")) == "2001:cafe:42::/56"


# --- gojson ----------------------------------------------------------------------------------------


def test_fold_last_matching_key_wins_even_over_an_exact_match() -> None:
    assert fold({"network": 1, "Network": 2}, ["Network"]) == {"Network": 2}
    assert fold({"Network": 1, "network": 2}, ["Network"]) == {"Network": 2}


def test_fold_matches_go_unicode_folding() -> None:
    assert fold({"\u017fubnetLen": 24}, ["SubnetLen"]) == {"SubnetLen": 24}  # long s folds to s
    assert fold({"\u212aey": 1}, ["Key"]) == {"Key": 1}  # Kelvin sign folds to k


def test_load_object_keeps_last_duplicate_in_document_order() -> None:
    obj = load_object('{"a":1,"b":2,"a":3}', "x")
    assert list(obj.items()) == [("b", 2), ("a", 3)]


@pytest.mark.parametrize("text", ["[1]", "1", "NaN", "{", '{"a":Infinity}'])
def test_load_object_rejects_non_objects_and_non_go_json(text: str) -> None:
    with pytest.raises(ValueError):
        load_object(text, "thing")


def test_absurdly_nested_backend_data_is_a_decode_error_not_a_crash() -> None:
    deep = '{"PublicIP":"1.2.3.4","BackendData":' + "[" * 100000 + "]" * 100000 + "}"
    with pytest.raises(LeaseDecodeError):
        LeaseAttrs.from_json(deep)


def test_backend_data_is_escaped_as_go_marshals_raw_json() -> None:
    attrs = LeaseAttrs.from_json('{"PublicIP":"1.2.3.4","BackendType":"extension","BackendData":"a<b>&c\\u2028é"}')
    assert attrs.to_json() == (
        '{"PublicIP":"1.2.3.4","PublicIPv6":null,"BackendType":"extension",'
        '"BackendData":"a\\u003cb\\u003e\\u0026c\\u2028é"}'
    )


@pytest.mark.parametrize("text", ["1.2.3.4", "0.0.0.0", "255.255.255.255", "10.0.0.0", "01.2.3.4", "1.2.3.04",
                                  "00.1.1.1", "256.1.1.1", "1.2.3", "1.2.3.4.5", "1.2.3.4 ", " 1.2.3.4", "1..3.4",
                                  "\u0661.2.3.4", "1.2.3.4\n", "1.2.3.-4", "+1.2.3.4", "1.2.3.1000", "", "1.2.3.4/24"])
def test_the_fast_dotted_quad_accepts_exactly_what_ipaddress_accepts(text: str) -> None:
    try:
        expected: int | None = int(IPv4Address(text))
    except ValueError:
        expected = None
    assert _ipv4_int(text) == expected


def test_repeated_keys_keep_gos_last_wins_order_and_a_bom_is_refused_as_before() -> None:
    attrs = LeaseAttrs.from_json('{"PublicIP":"1.2.3.4","BackendData":{"VNI":1,"VtepMAC":"aa","VNI":2},'
                                 '"publicip":"5.6.7.8"}')
    assert attrs.public_ip == IPv4Address("5.6.7.8"), "the last key folding onto a field wins"
    assert attrs.backend_data == '{"VtepMAC":"aa","VNI":2}', "a repeated key moves to its last place"
    assert fold(load_object('{"PublicIP":"x","BackendType":"y"}', "v"), ["PublicIP", "BackendType"]) == {
        "PublicIP": "x", "BackendType": "y"}
    with pytest.raises(ValueError, match="BOM"):
        load_object('\ufeff{"PublicIP":"1.2.3.4"}', "lease value")


@pytest.mark.parametrize(("data", "mac"), [
    ('{"VNI":1,"VtepMAC":"02:00:0a:0b:0c:0d"}', "02:00:0a:0b:0c:0d"),  # what Go writes: the matched text
    ('{"VNI":4096,"VtepMAC":"02:00:0A:0B:0C:0D"}', "02:00:0A:0B:0C:0D"),  # upper case: decoded, kept as is
    ('{"VtepMAC":"02:00:0a:0b:0c:0d","VNI":1}', "02:00:0a:0b:0c:0d"),
    ('{"vni":1,"vtepmac":"02:00:0a:0b:0c:0e"}', "02:00:0a:0b:0c:0e"),  # Go's case-insensitive keys
    ('{"VNI":1,"Nested":{"VtepMAC":"02:00:00:00:00:09"},"VtepMAC":"02:00:0a:0b:0c:0d"}', "02:00:0a:0b:0c:0d"),
    ('{"VNI":1}', None),
    ('{"VNI":1,"VtepMAC":5}', 5),
    (None, None),
])
def test_vtep_mac_reads_backend_data_as_go_does_whatever_its_shape(data: str | None, mac: object) -> None:
    attrs = LeaseAttrs.from_json('{"PublicIP":"198.18.0.1","BackendType":"vxlan"'
                                 + (f',"BackendData":{data}' if data else "") + "}")
    assert vtep_mac(attrs) == mac


def test_vtep_mac_of_backend_data_that_is_not_an_object_is_a_decode_error() -> None:
    attrs = LeaseAttrs.from_json('{"PublicIP":"198.18.0.1","BackendType":"vxlan","BackendData":"text"}')
    with pytest.raises(LeaseDecodeError):
        vtep_mac(attrs)


@pytest.mark.parametrize("seed", range(3))
def test_the_fast_path_for_gos_vxlan_values_decodes_exactly_as_the_full_decoder(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import random
    import re

    from flannel import lease_attrs as lease_module

    rnd = random.Random(seed)
    values = [
        '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":'
        '{"VNI":1,"VtepMAC":"02:00:0a:0b:0c:0d"}}',
        '{"PublicIP":"0.0.0.0","PublicIPv6":null,"BackendType":"vxlan","BackendData":'
        '{"VNI":0,"VtepMAC":"02:00:0a:0b:0c:0d"}}',
    ]
    for _ in range(300):
        octets = [rnd.choice(["0", "1", "25", "255", "256", "01", "300", str(rnd.randrange(256))]) for _ in range(4)]
        vni = rnd.choice(["1", "0", "01", "4096", "9999999999", "-1", "1.0", "1e3"])
        mac = rnd.choice(["02:00:0a:0b:0c:0d", "02:00:0A:0B:0C:0D", "02:00:0a:0b:0c", "zz:00:0a:0b:0c:0d"])
        values.append(f'{{"PublicIP":"{".".join(octets)}","PublicIPv6":null,"BackendType":"vxlan",'
                      f'"BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}}}')

    def decode(value: str) -> LeaseAttrs | str:
        try:
            return LeaseAttrs.from_json(value.encode())
        except LeaseDecodeError as exc:
            return f"error: {exc}"

    fast = [decode(v) for v in values]
    monkeypatch.setattr(lease_module, "_GO_VXLAN_VALUE", re.compile(rb"(?!)"))
    assert fast == [decode(v) for v in values]
    assert sum(isinstance(a, LeaseAttrs) for a in fast) > 10


@pytest.mark.parametrize("data", [
    '{"VNI":1,"VtepMAC":"02:00:00:01:00:01"}',
    '{"VNI":0,"VtepMAC":"ff:ff:ff:ff:ff:ff"}',
    '{"VNI":4294967295,"VtepMAC":"00:00:00:00:00:00"}',
    '{"VNI":9999999999,"VtepMAC":"0a:1b:2c:3d:4e:5f"}',
])
def test_go_vxlan_backend_data_held_as_a_number_reads_back_byte_for_byte(data: str) -> None:
    """Go's vxlan form is held as VNI << 48 | MAC (issue #16): what goes in comes out, in the value too."""
    attrs = LeaseAttrs(IPv4Address("198.18.0.1"), None, "vxlan", data, data)
    assert isinstance(attrs._data, int) and isinstance(attrs._v6_data, int)
    assert attrs.backend_data == data and attrs.backend_v6_data == data
    assert vtep_mac(attrs) == vtep_mac(attrs, v6=True) == data[-19:-2]
    value = attrs.to_json()
    assert LeaseAttrs.from_json(value) == attrs and LeaseAttrs.from_json(value).to_json() == value
    assert repr(attrs) == ("LeaseAttrs(public_ip=IPv4Address('198.18.0.1'), public_ipv6=None, backend_type='vxlan', "
                           f"backend_data={data!r}, backend_v6_data={data!r})")


@pytest.mark.parametrize("data", [
    '{"VNI":1,"VtepMAC":"02:00:00:01:00:0A"}',  # upper case: kept as written
    '{"VtepMAC":"02:00:00:01:00:01","VNI":1}',
    '{"VNI":1,"VtepMAC":"02:00:00:01:00:01","Extra":true}',
    '{"VNI":10000000000,"VtepMAC":"02:00:00:01:00:01"}',
    '{"PublicKey":"abc="}',
])
def test_other_backend_data_is_held_as_text(data: str) -> None:
    attrs = LeaseAttrs(backend_type="vxlan", backend_data=data)
    assert attrs._data == data and attrs.backend_data == data
    assert LeaseAttrs(backend_type="vxlan", backend_data=data) == attrs
    assert hash(LeaseAttrs(backend_type="vxlan", backend_data=data)) == hash(attrs)


def test_lease_attrs_stay_frozen_and_compare_by_value() -> None:
    import dataclasses

    a = LeaseAttrs(IPv4Address("198.18.0.1"), None, "vxlan", '{"VNI":1,"VtepMAC":"02:00:00:01:00:01"}')
    b = LeaseAttrs.from_json('{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan",'
                             '"BackendData":{"VNI":1,"VtepMAC":"02:00:00:01:00:01"}}')
    assert a == b and hash(a) == hash(b)
    assert a != LeaseAttrs(IPv4Address("198.18.0.1"), None, "vxlan", '{"VNI":1,"VtepMAC":"02:00:00:01:00:02"}')
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.backend_type = "host-gw"  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):  # TypeError: 3.11's frozen slots classes, any non-field name
        a.backend_data = "{}"  # type: ignore[misc]
