"""subnet.env: exact text (§8.1), atomic 0644 write (§8.2) and the tolerant read-back (§8.3)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest

from flannel.subnetenv import (
    PreviousSubnets,
    SubnetEnv,
    read_cidr_list,
    read_previous,
    read_single_cidr,
    read_subnet_env_values,
    render,
    write_subnet_env,
)

V4_ENV = SubnetEnv(
    network=IPv4Network("10.5.0.0/16"),
    subnet=IPv4Network("10.5.72.0/24"),
    ipv6_network=None,
    ipv6_subnet=None,
    mtu=1450,
    ipmasq=False,
)
DUAL_ENV = SubnetEnv(
    network=IPv4Network("10.42.0.0/16"),
    subnet=IPv4Network("10.42.0.0/24"),
    ipv6_network=IPv6Network("2001:cafe:42::/56"),
    ipv6_subnet=IPv6Network("2001:cafe:42::/64"),
    mtu=1450,
    ipmasq=True,
)
V6_ENV = SubnetEnv(
    network=None,
    subnet=None,
    ipv6_network=IPv6Network("fc00::/48"),
    ipv6_subnet=IPv6Network("fc00:0:0:1::/64"),
    mtu=1430,
    ipmasq=False,
)


# --- render ----------------------------------------------------------------------------------------


def test_render_ipv4_docs_example() -> None:
    assert render(V4_ENV) == (
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    )


def test_render_dual_stack_example() -> None:
    assert render(DUAL_ENV) == (
        "FLANNEL_NETWORK=10.42.0.0/16\n"
        "FLANNEL_SUBNET=10.42.0.1/24\n"
        "FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n"
        "FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n"
        "FLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=true\n"
    )


def test_render_ipv6_only_has_no_ipv4_lines() -> None:
    assert render(V6_ENV) == (
        "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"
    )


def test_render_uses_go_text_for_ipv6() -> None:
    env = SubnetEnv(None, None, IPv6Network("::a00:0/104"), IPv6Network("::a00:0/112"), 1500, False)
    assert render(env).splitlines()[:2] == [
        "FLANNEL_IPV6_NETWORK=10.0.0.0/104",
        "FLANNEL_IPV6_SUBNET=10.0.0.1/112",
    ]


def test_render_refuses_half_a_family() -> None:
    with pytest.raises(ValueError):
        render(SubnetEnv(IPv4Network("10.0.0.0/8"), None, None, None, 1500, False))
    with pytest.raises(ValueError):
        render(SubnetEnv(None, None, None, IPv6Network("fd00::/64"), 1500, False))


# --- write -----------------------------------------------------------------------------------------


@pytest.fixture
def strict_umask() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_creates_parents_and_ignores_umask(tmp_path: Path, strict_umask: None) -> None:
    target = tmp_path / "run" / "flannel" / "subnet.env"
    write_subnet_env(target, V4_ENV)
    assert target.read_text() == render(V4_ENV)
    assert _mode(target) == 0o644
    assert _mode(target.parent) == 0o755
    assert _mode(target.parent.parent) == 0o755


def test_write_replaces_existing_file_and_leaves_no_temporaries(tmp_path: Path, strict_umask: None) -> None:
    target = tmp_path / "subnet.env"
    target.write_text("old contents\n")
    target.chmod(0o600)
    inode_before = target.stat().st_ino
    write_subnet_env(str(target), DUAL_ENV)
    assert target.read_text() == render(DUAL_ENV)
    assert _mode(target) == 0o644
    assert target.stat().st_ino != inode_before  # replaced by rename, not rewritten in place
    assert os.listdir(tmp_path) == ["subnet.env"]


def test_write_keeps_existing_directory_mode(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    directory.chmod(0o700)
    write_subnet_env(directory / "subnet.env", V4_ENV)
    assert _mode(directory) == 0o700


def test_failed_write_leaves_old_file_and_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "subnet.env"
    target.write_text("old\n")
    bad = SubnetEnv(IPv4Network("10.0.0.0/8"), None, None, None, 1500, False)
    with pytest.raises(ValueError):
        write_subnet_env(target, bad)
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["subnet.env"]


def test_written_file_reads_back(tmp_path: Path) -> None:
    target = tmp_path / "subnet.env"
    write_subnet_env(target, DUAL_ENV)
    assert read_previous(target) == PreviousSubnets(
        subnet=IPv4Network("10.42.0.0/24"),
        ipv6_subnet=IPv6Network("2001:cafe:42::/64"),
        network=IPv4Network("10.42.0.0/16"),
        ipv6_network=IPv6Network("2001:cafe:42::/56"),
    )


# --- read ------------------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "subnet.env"
    path.write_text(text)
    return path


def test_upstream_vector_v4_list_skips_invalid_parts(tmp_path: Path) -> None:
    values = read_subnet_env_values(
        _write(tmp_path, "FLANNEL_SUBNET=10.244.1.0/24,not-a-cidr,10.244.2.0/24\n")
    )
    assert read_cidr_list(values, "FLANNEL_SUBNET") == [
        IPv4Network("10.244.1.0/24"),
        IPv4Network("10.244.2.0/24"),
    ]
    assert read_single_cidr(values, "FLANNEL_SUBNET") is None


def test_upstream_vector_v6_list_skips_invalid_parts(tmp_path: Path) -> None:
    values = read_subnet_env_values(_write(tmp_path, "FLANNEL_IPV6_SUBNET=fd00::/64,not-a-cidr,fd01::/64\n"))
    assert read_cidr_list(values, "FLANNEL_IPV6_SUBNET") == [
        IPv6Network("fd00::/64"),
        IPv6Network("fd01::/64"),
    ]


@pytest.mark.parametrize("key", ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"])
def test_upstream_vector_not_a_cidr_is_empty(tmp_path: Path, key: str) -> None:
    values = read_subnet_env_values(_write(tmp_path, f"{key}=not-a-cidr\n"))
    assert read_cidr_list(values, key) == []
    assert read_single_cidr(values, key) is None


def test_host_bits_are_masked(tmp_path: Path) -> None:
    values = read_subnet_env_values(_write(tmp_path, "FLANNEL_SUBNET=10.5.52.1/24\n"))
    assert read_single_cidr(values, "FLANNEL_SUBNET") == IPv4Network("10.5.52.0/24")


def test_single_reader_logs_warning_for_none_and_error_for_several(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    values = {"A": "", "B": "10.0.0.0/24,10.0.1.0/24"}
    with caplog.at_level(logging.WARNING, logger="flannel.subnetenv"):
        assert read_single_cidr(values, "A") is None
        assert read_single_cidr(values, "B") is None
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.WARNING, "no subnet found for key: A in subnet file") in levels
    assert any(lvl == logging.ERROR and "more than 1 entry" in msg for lvl, msg in levels)


def test_version_filter_skips_the_other_family() -> None:
    values = {"FLANNEL_SUBNET": "fd00::/64", "FLANNEL_IPV6_SUBNET": "10.0.0.0/24"}
    assert read_single_cidr(values, "FLANNEL_SUBNET", 4) is None
    assert read_single_cidr(values, "FLANNEL_IPV6_SUBNET", 6) is None


def test_dotenv_syntax_is_tolerated(tmp_path: Path) -> None:
    text = (
        "# written by flanneld\n"
        "\n"
        "export FLANNEL_NETWORK=10.5.0.0/16\n"
        'FLANNEL_SUBNET="10.5.72.1/24"\n'
        "FLANNEL_IPV6_NETWORK='fd00::/48'\n"
        "  FLANNEL_IPV6_SUBNET = fd00:0:0:3::1/64   # inline comment\n"
        "FLANNEL_MTU=1450\r\n"
        'QUOTED="a \\"b\\" # not a comment"\n'
        "HASH=a#b\n"
        "EMPTY=\n"
    )
    values = read_subnet_env_values(_write(tmp_path, text))
    assert values == {
        "FLANNEL_NETWORK": "10.5.0.0/16",
        "FLANNEL_SUBNET": "10.5.72.1/24",
        "FLANNEL_IPV6_NETWORK": "fd00::/48",
        "FLANNEL_IPV6_SUBNET": "fd00:0:0:3::1/64",
        "FLANNEL_MTU": "1450",
        "QUOTED": 'a "b" # not a comment',
        "HASH": "a#b",
        "EMPTY": "",
    }


def test_line_without_equals_is_skipped_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path, "GARBAGE LINE\nFLANNEL_SUBNET=10.5.72.1/24\n=novalue\nFLANNEL_MTU\n")
    with caplog.at_level(logging.WARNING, logger="flannel.subnetenv"):
        values = read_subnet_env_values(path)
    assert values == {"FLANNEL_SUBNET": "10.5.72.1/24"}
    assert sum("malformed" in r.getMessage() for r in caplog.records) == 3
    assert read_previous(path).subnet == IPv4Network("10.5.72.0/24")


def test_missing_file_reads_as_empty(tmp_path: Path) -> None:
    assert read_subnet_env_values(tmp_path / "nope.env") == {}
    assert read_previous(tmp_path / "nope.env") == PreviousSubnets()


def test_unreadable_path_gives_all_none(tmp_path: Path) -> None:
    assert read_previous(tmp_path) == PreviousSubnets()  # a directory: read fails, startup goes on


def test_read_previous_of_ipv4_only_file(tmp_path: Path) -> None:
    path = _write(tmp_path, render(V4_ENV))
    assert read_previous(path) == PreviousSubnets(
        subnet=IPv4Network("10.5.72.0/24"), network=IPv4Network("10.5.0.0/16")
    )


def test_read_previous_of_ipv6_only_file(tmp_path: Path) -> None:
    path = _write(tmp_path, render(V6_ENV))
    assert read_previous(path) == PreviousSubnets(
        ipv6_subnet=IPv6Network("fc00:0:0:1::/64"), ipv6_network=IPv6Network("fc00::/48")
    )


def test_undecodable_bytes_do_not_crash(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    path.write_bytes(b"\xff\xfe=\x00\nFLANNEL_SUBNET=10.1.2.1/24\n")
    assert read_previous(path).subnet == IPv4Network("10.1.2.0/24")
