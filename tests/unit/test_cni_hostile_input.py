"""The ``flannel`` executable against a hostile file system and hostile container IDs (issue 15).

Each case must end as one CNI error object (never a traceback, never a hang: ``Harness.run`` has a 30 s
bound) and must write nothing outside the data directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.test_cni_plugin import V4_ENV, Harness, cni_fixture, error_of  # noqa: F401 - a fixture


def tree(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root`` with its content (a link's target, a directory's mode)."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = f"-> {os.readlink(p)}"
        elif p.is_dir():
            out[str(p)] = f"dir {p.stat().st_mode:o}"
        elif p.is_file():
            out[str(p)] = p.read_bytes()
        else:
            out[str(p)] = "special"
    return out


@pytest.mark.parametrize("container_id", ["../x", "a/b", "x" * 10_000, "..", ".x", "-x", "a b"])
def test_a_bad_container_id_is_code_4_and_writes_nothing(cni: Harness, container_id: str) -> None:
    cni.data_dir.mkdir(mode=0o700)
    before = tree(cni.tmp)
    for command in ("ADD", "DEL", "CHECK"):
        err = error_of(cni.run(command, CNI_CONTAINERID=container_id))
        assert err["code"] == 4 and "containerID" in err["msg"], err
        assert len(err["details"]) <= 255
    assert tree(cni.tmp) == before and cni.calls() == []


def test_an_empty_container_id_is_a_missing_variable(cni: Harness) -> None:
    err = error_of(cni.run("ADD", CNI_CONTAINERID=""))
    assert (err["code"], err["msg"]) == (4, "required env variables [CNI_CONTAINERID] missing")


def test_a_symlinked_data_dir_is_refused_and_its_target_untouched(cni: Harness, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    cni.data_dir.symlink_to(real)
    for command in ("ADD", "DEL"):
        err = error_of(cni.run(command))
        assert err["code"] == 5, err
        assert err["msg"] == f"refusing the data directory {cni.data_dir} (dataDir): it is a symbolic link"
    assert list(real.iterdir()) == [] and cni.calls() == []


def test_a_group_writable_data_dir_is_refused(cni: Harness) -> None:
    cni.data_dir.mkdir()
    cni.data_dir.chmod(0o770)
    err = error_of(cni.run("ADD"))
    assert err["code"] == 5 and "writable by group or others (mode 0770)" in err["msg"], err
    assert str(cni.data_dir) in err["msg"] and list(cni.data_dir.iterdir()) == []


def test_add_creates_a_missing_data_dir_0700(cni: Harness) -> None:
    assert cni.run("ADD").returncode == 0
    assert cni.data_dir.stat().st_mode & 0o7777 == 0o700


def test_a_fifo_subnet_env_is_an_error_not_a_hang(cni: Harness) -> None:
    cni.subnet_file.unlink()
    os.mkfifo(cni.subnet_file)
    for command in ("ADD", "STATUS"):
        conf = cni.conf("1.1.0")
        err = error_of(cni.run(command, conf))
        assert "not a regular file but a FIFO" in err["msg"] and str(cni.subnet_file) in err["msg"], err
    assert not cni.saved().exists()


def test_a_huge_subnet_env_is_refused_without_reading_it(cni: Harness) -> None:
    with cni.subnet_file.open("ab") as f:
        f.truncate(16 << 30)
    err = error_of(cni.run("ADD"))
    assert err["code"] == 5 and "larger than the 65536 bytes allowed" in err["msg"], err


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            V4_ENV.replace("FLANNEL_MTU=1472", "FLANNEL_MTU=0"),
            "FLANNEL_MTU=0 is out of range: an IPv4 network needs an MTU from 68 to 65535",
        ),
        (V4_ENV.replace("FLANNEL_MTU=1472", "FLANNEL_MTU=65536"), "FLANNEL_MTU=65536 is out of range"),
        (
            V4_ENV.replace("FLANNEL_MTU=1472", "FLANNEL_MTU=1000") + "FLANNEL_IPV6_SUBNET=fc00::1/64\n",
            "FLANNEL_MTU=1000 is out of range: an IPv6 network needs an MTU from 1280 to 65535",
        ),
    ],
)
def test_an_mtu_no_link_can_have_is_refused_naming_variable_and_file(cni: Harness, text: str, needle: str) -> None:
    cni.subnet_file.write_text(text)
    err = error_of(cni.run("ADD"))
    assert err["code"] == 6 and needle in err["msg"] and str(cni.subnet_file) in err["msg"], err
    assert not cni.saved().exists()


def test_a_link_at_the_version_cache_is_not_followed(cni: Harness, tmp_path: Path) -> None:
    """The cache of the delegate's versions lives in the data dir too; a link there is replaced, not written."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    cni.data_dir.mkdir(mode=0o700)
    (cni.data_dir / ".versions-bridge").symlink_to(victim)
    assert cni.run("ADD", cni.conf("1.1.0")).returncode == 0
    assert victim.read_bytes() == b"precious\n"
    assert not (cni.data_dir / ".versions-bridge").is_symlink()
