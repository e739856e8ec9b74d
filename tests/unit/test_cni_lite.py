"""The plugin's start-up-cheap building blocks: Go-like JSON, frozen records, Go-compatible address text."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flannel.cni import lite
from flannel.cni.cidr import format_ip, normalize_ip, parse_cidr, parse_ip, parse_network


@pytest.mark.parametrize(
    "text",
    ['{"a":[1,2.5,null,true,false,"x"],"b":{"c":"é\\u00e9\\n"}}', "[]", '"s"', "0", "-1.5e3", ' \n{"k": {}}\t'],
)
def test_loads_agrees_with_json(text: str) -> None:
    assert lite.loads(text) == json.loads(text)


def test_integral_numbers_come_back_as_ints_like_go_float64() -> None:
    assert lite.loads("[1.0, 1e3, 2.5, 1e21]") == [1, 1000, 2.5, 1e21]
    assert lite.dumps(lite.loads('{"mtu":1472.0}')) == '{"mtu":1472}'


def test_last_duplicate_key_wins_and_moves_last() -> None:
    value = lite.loads('{"a":1,"A":2,"a":3}')
    assert value == {"A": 2, "a": 3} and list(value) == ["A", "a"]
    assert lite.fold_keys(value, ("a",)) == {"a": 3}


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "unexpected end of JSON input"),
        (b"   ", "unexpected end of JSON input"),
        (b"{", "Expecting property name"),
        (b'{"a" 1}', "Expecting ':' delimiter"),
        (b"[1] x", "invalid character 'x' after top-level value"),
        (b"NaN", "invalid character 'N'"),
        (b"[Infinity]", "invalid character 'I'"),
        (b"1e999", "out of range"),
        (b'"\x01"', "Invalid control character"),
        (b"[" * 100000, "nested too deeply"),
        (b"\xef\xbb\xbf{}", "invalid character"),
    ],
)
def test_loads_rejects_what_go_rejects_with_a_message(data: bytes, needle: str) -> None:
    with pytest.raises(lite.JSONError, match=needle):
        lite.loads(data)


def test_load_object_wants_an_object() -> None:
    with pytest.raises(lite.JSONError, match="expected a JSON object, got array"):
        lite.load_object(b"[]")


def test_dumps_sorts_maps_keeps_structs_and_escapes_like_go() -> None:
    value = {"z": 1, "a": lite.Struct(dst="d", gw="g", mtu=1), "s": "<a&b>\u2028é\n"}
    assert lite.dumps(value) == '{"a":{"dst":"d","gw":"g","mtu":1},"s":"\\u003ca\\u0026b\\u003e\\u2028é\\n","z":1}'


def test_dumps_rejects_nan_and_unknown_types() -> None:
    with pytest.raises(ValueError):
        lite.dumps({"x": float("nan")})
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        lite.dumps({"x": {1}})


@lite.dataclass(frozen=True)
class Record:
    a: int
    b: str = "x"


def test_record_constructs_compares_and_hashes() -> None:
    r = Record(1)
    assert r == Record(1, "x") == Record(a=1, b="x")
    assert r != Record(2) and hash(r) == hash(Record(a=1))
    assert repr(r) == "Record(a=1, b='x')"
    assert r.__match_args__ == ("a", "b")


def test_record_is_frozen() -> None:
    r = Record(1)
    with pytest.raises(AttributeError):
        r.a = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del r.b  # type: ignore[misc]


@pytest.mark.parametrize(("args", "kwargs"), [((), {}), ((1, "x", 3), {}), ((1,), {"a": 2}), ((), {"a": 1, "c": 3})])
def test_record_rejects_bad_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        Record(*args, **kwargs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.1.17.1/24", "10.1.17.0/24"),
        ("fc00::1/64", "fc00::/64"),
        ("2001:db8:0:0:1:0:0:1/128", "2001:db8::1:0:0:1/128"),
        ("2001:0:0:1:0:0:0:1/128", "2001:0:0:1::1/128"),
        ("1:0:2:0:3:0:4:0/128", "1:0:2:0:3:0:4:0/128"),
        ("::/0", "::/0"),
        ("::ffff:10.1.2.3/120", "10.1.2.0/24"),
        ("::10.0.0.1/128", "::a00:1/128"),
        ("10.1.17.1/024", "10.1.17.0/24"),
    ],
)
def test_networks_print_like_go(text: str, expected: str) -> None:
    assert str(parse_network(text)) == expected


def test_cidr_keeps_host_bits_until_masked() -> None:
    cidr = parse_cidr("10.96.0.1/12")
    assert str(cidr) == "10.96.0.1/12" and str(cidr.network()) == "10.96.0.0/12"
    assert cidr.is_ipv4() and parse_cidr("::ffff:1.2.3.4/128").is_ipv4() and not parse_cidr("::1/128").is_ipv4()


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.0",
        "10.0.0.0/",
        "10.0.0.0/33",
        "::/129",
        "10.0.0/8",
        "10.0.0.0/+8",
        "10.0.0.0/８",
        "fe80::1%lo/64",
        "x/8",
    ],
)
def test_invalid_cidrs_are_rejected_like_go(text: str) -> None:
    with pytest.raises(ValueError, match="invalid CIDR address"):
        parse_cidr(text)


def test_ip_text() -> None:
    assert normalize_ip("FC00:0:0:0:0:0:0:0001") == "fc00::1"
    assert format_ip(*parse_ip("::ffff:1.2.3.4")) == "1.2.3.4"
    with pytest.raises(ValueError, match=r"invalid IP address: 1\.2\.3"):
        parse_ip("1.2.3")
