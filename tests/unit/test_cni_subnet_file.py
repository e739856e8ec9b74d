"""The plugin's subnet.env reader (§13.2): upstream's vectors, upstream's error texts, and no crash on bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flannel.cni.cidr import Cidr, parse_cidr
from flannel.cni.errors import DECODING_FAILURE, IO_FAILURE, TRY_AGAIN_LATER
from flannel.cni.subnet_file import SubnetEnv, SubnetFileError, load_subnet_env, parse_subnet_env

ALL_KEYS = "FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"
V4 = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"


def write(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "subnet.env"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def net(text: str) -> Cidr:
    return parse_cidr(text)


def test_v4_file_parses_to_networks_subnet_mtu_and_ipmasq(tmp_path: Path) -> None:
    env = load_subnet_env(write(tmp_path, V4))
    assert [str(n) for n in env.networks] == ["10.1.0.0/16"]
    assert str(env.subnet) == "10.1.17.0/24"
    assert (env.mtu, env.ipmasq, env.ipv6_networks, env.ipv6_subnet) == (1472, True, (), None)


def test_v6_file(tmp_path: Path) -> None:
    env = load_subnet_env(
        write(
            tmp_path,
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        )
    )
    assert [str(n) for n in env.ipv6_networks] == ["fc00::/48"]
    assert str(env.ipv6_subnet) == "fc00::/64"
    assert env.networks == () and env.subnet is None


def test_foo_bar_reports_every_missing_key(tmp_path: Path) -> None:
    path = write(tmp_path, "foo=bar")
    with pytest.raises(SubnetFileError) as info:
        load_subnet_env(path)
    assert info.value.reason == f"{path} is missing {ALL_KEYS}"
    assert info.value.msg == (
        f"failed to load flannel 'subnet.env' file: {path} is missing {ALL_KEYS}. "
        "Check the flannel pod log for this node."
    )
    assert info.value.code == DECODING_FAILURE


def test_missing_mtu_only(tmp_path: Path) -> None:
    with pytest.raises(SubnetFileError, match=r"is missing FLANNEL_MTU\."):
        load_subnet_env(write(tmp_path, V4.replace("FLANNEL_MTU=1472\n", "")))


def test_missing_file_means_try_again_later(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.env")
    with pytest.raises(SubnetFileError) as info:
        load_subnet_env(path)
    assert info.value.code == TRY_AGAIN_LATER
    assert info.value.reason == f"open {path}: no such file or directory"


def test_empty_file_means_try_again_later(tmp_path: Path) -> None:
    with pytest.raises(SubnetFileError) as info:
        load_subnet_env(write(tmp_path, ""))
    assert info.value.code == TRY_AGAIN_LATER


def test_unreadable_path_is_an_io_failure(tmp_path: Path) -> None:
    os.mkdir(tmp_path / "dir.env")
    with pytest.raises(SubnetFileError) as info:
        load_subnet_env(str(tmp_path / "dir.env"))
    assert info.value.code == IO_FAILURE


@pytest.mark.parametrize(
    "key", ["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ", "FLANNEL_IPV6_SUBNET"]
)
def test_known_key_without_equals_is_an_error_not_a_crash(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, V4 + key + "\n")
    with pytest.raises(SubnetFileError) as info:
        load_subnet_env(path)
    assert info.value.reason == f"{path}: line 5: {key} has no value (expected {key}=<value>)"
    assert info.value.code == DECODING_FAILURE


def test_unknown_lines_without_equals_are_ignored(tmp_path: Path) -> None:
    assert load_subnet_env(write(tmp_path, "# comment\nexport\n" + V4)).mtu == 1472


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("FLANNEL_NETWORK=10.1.0.0/16,not-a-cidr", "FLANNEL_NETWORK: invalid CIDR address: not-a-cidr"),
        ("FLANNEL_SUBNET=10.1.17.1", "FLANNEL_SUBNET: invalid CIDR address: 10.1.17.1"),
        ("FLANNEL_SUBNET=10.1.17.1/33", "invalid CIDR address: 10.1.17.1/33"),
        ("FLANNEL_SUBNET=10.1.17.1/255.255.255.0", "invalid CIDR address"),
        ("FLANNEL_SUBNET= 10.1.17.1/24", "invalid CIDR address:  10.1.17.1/24"),
        ("FLANNEL_SUBNET=010.1.17.1/24", "invalid CIDR address"),
        ("FLANNEL_IPV6_SUBNET=fe80::1%eth0/64", "invalid CIDR address"),
        ('FLANNEL_SUBNET="10.1.17.1/24"', "invalid CIDR address"),
        ("FLANNEL_NETWORK=", "FLANNEL_NETWORK: invalid CIDR address: "),
        ("FLANNEL_MTU=abc", "FLANNEL_MTU: invalid unsigned integer 'abc'"),
        ("FLANNEL_MTU=-1", "invalid unsigned integer"),
        ("FLANNEL_MTU=4294967296", "value out of range"),
    ],
)
def test_invalid_values_name_the_file_line_and_key(tmp_path: Path, line: str, needle: str) -> None:
    path = write(tmp_path, V4 + line + "\n")
    with pytest.raises(SubnetFileError) as info:
        load_subnet_env(path)
    assert info.value.reason.startswith(f"{path}: line 5: ")
    assert needle in info.value.reason
    assert info.value.code == DECODING_FAILURE


def test_networks_are_masked_and_deduplicated() -> None:
    env = parse_subnet_env("FLANNEL_NETWORK=10.1.2.3/16,10.1.0.0/16,192.168.0.0/16\n" + V4.split("\n", 1)[1], "f")
    assert isinstance(env, SubnetEnv)
    assert [str(n) for n in env.networks] == ["10.1.0.0/16", "192.168.0.0/16"]


def test_crlf_line_endings_and_last_value_wins() -> None:
    env = parse_subnet_env(V4.replace("\n", "\r\n") + "FLANNEL_MTU=1400\r\n", "f")
    assert isinstance(env, SubnetEnv) and env.mtu == 1400


def test_ipmasq_is_true_only_for_exactly_true() -> None:
    for value, expected in (("true", True), ("TRUE", False), ("1", False), ("true ", False)):
        env = parse_subnet_env(V4.replace("FLANNEL_IPMASQ=true", f"FLANNEL_IPMASQ={value}"), "f")
        assert isinstance(env, SubnetEnv) and env.ipmasq is expected


def test_what_the_daemon_writes_is_what_the_plugin_reads(tmp_path: Path) -> None:
    from ipaddress import IPv4Network, IPv6Network

    from flannel.subnetenv import SubnetEnv as DaemonEnv
    from flannel.subnetenv import write_subnet_env

    path = tmp_path / "run" / "subnet.env"
    write_subnet_env(
        path,
        DaemonEnv(
            IPv4Network("10.42.0.0/16"),
            IPv4Network("10.42.7.0/24"),
            IPv6Network("2001:cafe:42::/56"),
            IPv6Network("2001:cafe:42:7::/64"),
            1450,
            True,
        ),
    )
    env = load_subnet_env(str(path))
    assert (str(env.subnet), str(env.ipv6_subnet), env.mtu, env.ipmasq) == (
        "10.42.7.0/24",
        "2001:cafe:42:7::/64",
        1450,
        True,
    )
    assert env.networks == (net("10.42.0.0/16"),) and env.ipv6_networks == (net("2001:cafe:42::/56"),)
