"""Spec versions: parsing, choosing one a delegate speaks, and converting results as the CNI library does."""

from __future__ import annotations

from typing import Any

import pytest

from flannel.cni.results import convert_result
from flannel.cni.versions import SUPPORTED_VERSIONS, at_least, choose_version, go_quote_list, parse_version

DEBIAN = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0")  # containernetworking-plugins 1.1.1

RESULT_100: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
        {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02", "mtu": 1472},
        {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/var/run/netns/p", "socketPath": "/s"},
    ],
    "ips": [
        {"interface": 2, "address": "10.1.17.2/24", "gateway": "10.1.17.1"},
        {"interface": 2, "address": "fc00::2/64", "gateway": "fc00::1"},
    ],
    "routes": [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48", "gw": "fc00::1"}, {"dst": "10.2.0.0/16", "mtu": 1400}],
    "dns": {},
}


def test_supported_versions_are_the_cni_librarys_all() -> None:
    assert SUPPORTED_VERSIONS == ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("1.1.0", (1, 1, 0)), ("0.4", (0, 4, 0)), ("2", (2, 0, 0)), ("", (0, 1, 0)), ("0.10.1", (0, 10, 1))],
)
def test_parse_version(text: str, parsed: tuple[int, int, int]) -> None:
    assert parse_version(text) == parsed


@pytest.mark.parametrize("text", ["1.0.0.0", "a.b.c", "1..0", "1.0.x", "-1.0.0"])
def test_parse_version_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_version(text)


def test_at_least_compares_numerically() -> None:
    assert at_least("0.10.0", "0.4.0") and at_least("1.1.0", "1.1.0") and not at_least("0.3.1", "0.4.0")
    assert not at_least("garbage", "0.1.0")


@pytest.mark.parametrize(
    ("requested", "offered", "minimum", "expected"),
    [
        ("1.1.0", DEBIAN, "0.1.0", "1.0.0"),
        ("1.0.0", DEBIAN, "0.1.0", "1.0.0"),
        ("0.3.1", DEBIAN, "0.1.0", "0.3.1"),
        ("0.3.1", ("0.4.0", "1.0.0"), "0.1.0", "0.4.0"),
        ("1.1.0", DEBIAN, "0.4.0", "1.0.0"),
        ("1.1.0", ("0.1.0", "0.2.0", "0.3.1"), "0.4.0", None),
        ("1.1.0", DEBIAN, "1.1.0", None),
        ("1.1.0", ("9.9.9", "1.0.0"), "0.1.0", "1.0.0"),
        ("0.2.0", (), "0.1.0", None),
    ],
)
def test_choose_version(requested: str, offered: tuple[str, ...], minimum: str, expected: str | None) -> None:
    assert choose_version(requested, offered, minimum) == expected


def test_go_quote_list() -> None:
    assert go_quote_list(["0.1.0", "1.0.0"]) == '["0.1.0" "1.0.0"]'


def test_1_0_0_to_1_1_0_is_the_same_result() -> None:
    out = convert_result(RESULT_100, "1.1.0", "1.0.0")
    assert out == {**RESULT_100, "cniVersion": "1.1.0"}
    assert RESULT_100["cniVersion"] == "1.0.0", "the input is not modified"


@pytest.mark.parametrize("target", ["0.3.0", "0.3.1", "0.4.0"])
def test_1_x_to_0_4_adds_ip_versions_and_drops_newer_fields(target: str) -> None:
    out = convert_result(RESULT_100, target, "1.0.0")
    assert out["cniVersion"] == target
    assert out["interfaces"] == [
        {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
        {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
        {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/var/run/netns/p"},
    ]
    assert out["ips"] == [
        {"version": "4", "interface": 2, "address": "10.1.17.2/24", "gateway": "10.1.17.1"},
        {"version": "6", "interface": 2, "address": "fc00::2/64", "gateway": "fc00::1"},
    ]
    assert out["routes"] == RESULT_100["routes"] and out["dns"] == {}


def test_0_4_to_1_x_drops_ip_versions_and_empty_dns() -> None:
    as_040 = convert_result(RESULT_100, "0.4.0", "1.0.0")
    back = convert_result(as_040, "1.1.0", "0.4.0")
    assert back["cniVersion"] == "1.1.0"
    assert back["ips"] == [{k: v for k, v in ip.items()} for ip in RESULT_100["ips"]]
    assert "dns" not in back
    assert convert_result({**as_040, "dns": {"nameservers": ["10.96.0.10"]}}, "1.0.0", "0.4.0")["dns"] == {
        "nameservers": ["10.96.0.10"]
    }


@pytest.mark.parametrize(("source", "target"), [("1.0.0", "0.2.0"), ("1.0.0", "0.1.0"), ("0.3.1", "0.2.0")])
def test_to_0_2_keeps_first_ip_per_family_and_files_routes_by_family(source: str, target: str) -> None:
    result = RESULT_100 if source == "1.0.0" else convert_result(RESULT_100, source, "1.0.0")
    out = convert_result({**result, "ips": [*result["ips"], result["ips"][0]]}, target, source)
    assert out == {
        "cniVersion": target,
        "ip4": {
            "ip": "10.1.17.2/24",
            "gateway": "10.1.17.1",
            "routes": [{"dst": "10.1.0.0/16"}, {"dst": "10.2.0.0/16"}],
        },
        "ip6": {"ip": "fc00::2/64", "gateway": "fc00::1", "routes": [{"dst": "fc00::/48", "gw": "fc00::1"}]},
        "dns": {},
    }


def test_0_2_to_1_x() -> None:
    old = {
        "cniVersion": "0.2.0",
        "ip4": {"ip": "10.1.17.2/24", "gateway": "10.1.17.1", "routes": [{"dst": "10.1.0.0/16"}]},
    }
    out = convert_result(old, "1.0.0", "0.2.0")
    assert out == {
        "cniVersion": "1.0.0",
        "ips": [{"address": "10.1.17.2/24", "gateway": "10.1.17.1"}],
        "routes": [{"dst": "10.1.0.0/16"}],
    }
    assert convert_result(old, "0.4.0", "0.2.0")["ips"][0]["version"] == "4"


def test_0_1_and_0_2_share_a_format() -> None:
    old = {"cniVersion": "0.1.0", "ip4": {"ip": "10.1.17.2/24"}}
    assert convert_result(old, "0.2.0", "0.1.0") == {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.17.2/24"}}


def test_missing_result_version_is_the_call_version() -> None:
    out = convert_result({"ips": [{"address": "10.0.0.2/24"}]}, "0.4.0", "1.0.0")
    assert out["ips"] == [{"version": "4", "address": "10.0.0.2/24"}]


@pytest.mark.parametrize(
    ("result", "target", "needle"),
    [
        ({"cniVersion": "1.0.0", "interfaces": []}, "0.2.0", "no valid IP addresses"),
        ({"cniVersion": "1.0.0", "ips": [{"address": "bogus"}]}, "0.4.0", "invalid CIDR address: bogus"),
        ({"cniVersion": "1.0.0", "ips": {"address": "10.0.0.2/24"}}, "0.4.0", "'ips' is not a list of objects"),
        ({"cniVersion": "7.0.0"}, "0.4.0", "cannot convert result from version '7.0.0'"),
        ([], "0.4.0", "not a JSON object"),
    ],
)
def test_unconvertible_results(result: Any, target: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        convert_result(result, target, "1.0.0")


def test_supported_versions_are_read_from_the_cni_librarys_refusal() -> None:
    from flannel.cni.invoke import supported_in_refusal

    details = 'config is "1.1.0", plugin supports ["0.1.0" "0.2.0" "0.3.0" "0.3.1" "0.4.0" "1.0.0"]'
    assert supported_in_refusal(details) == ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0")
    assert supported_in_refusal('config is "1.1.0", plugin supports ["1.0.0"]') == ("1.0.0",)
    for other in ("", "config is '1.1.0'", 'plugin supports ["x y"]', "plugin supports []", 'plugin supports ["1.0.0"'):
        assert supported_in_refusal(other) is None, other
