"""flanneld's subnet.env against a hostile file system: no write through links, no hang, no crash (issue 15)."""

from __future__ import annotations

import logging
import os
import random
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from flannel.atomicfile import UnsafeDirectoryError
from flannel.subnetenv import PreviousSubnets, read_previous, render, write_subnet_env
from tests.unit.test_atomicfile import finishes, planted_names
from tests.unit.test_subnetenv import V4_ENV


@pytest.fixture(name="run_dir")
def run_dir_fixture(tmp_path: Path) -> Path:
    d = tmp_path / "run" / "flannel"
    d.mkdir(parents=True)
    return d


def test_a_link_planted_at_the_temporary_name_is_not_written_through(
    tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (run_dir / ".subnet.env.00000000deadbeef.tmp").symlink_to(victim)
    planted_names(monkeypatch, ["00000000deadbeef"])
    write_subnet_env(run_dir / "subnet.env", V4_ENV)
    assert victim.read_bytes() == b"precious\n"
    assert (run_dir / "subnet.env").read_text() == render(V4_ENV)


def test_a_directory_reached_through_a_link_of_ours_is_used(tmp_path: Path, run_dir: Path) -> None:
    """Like ``/var/run -> /run``: the link is followed, and the real directory checked."""
    (tmp_path / "var-run").symlink_to(tmp_path / "run")
    write_subnet_env(tmp_path / "var-run" / "flannel" / "subnet.env", V4_ENV)
    assert (run_dir / "subnet.env").read_text() == render(V4_ENV)


def test_a_world_writable_directory_without_sticky_bit_is_refused(run_dir: Path) -> None:
    run_dir.chmod(0o777)
    with pytest.raises(UnsafeDirectoryError) as info:
        write_subnet_env(run_dir / "subnet.env", V4_ENV)
    assert str(info.value) == (
        f"unsafe directory {run_dir}: it is writable by others without the sticky bit (mode 0777)"
    )
    assert list(run_dir.iterdir()) == []


def test_the_created_directory_is_0755_and_accepted(tmp_path: Path) -> None:
    path = tmp_path / "new" / "flannel" / "subnet.env"
    write_subnet_env(path, V4_ENV)
    assert path.parent.stat().st_mode & 0o7777 == 0o755


def warned(caplog: pytest.LogCaptureFixture, needle: str) -> bool:
    return any(r.levelno == logging.WARNING and needle in r.getMessage() for r in caplog.records)


def test_read_previous_ignores_a_fifo_at_once(run_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    fifo = run_dir / "subnet.env"
    os.mkfifo(fifo)
    with caplog.at_level(logging.WARNING, logger="flannel.subnetenv"):
        assert finishes(lambda: read_previous(fifo)) == PreviousSubnets()
    assert warned(caplog, f"ignoring the previous subnet file {fifo}: not a regular file but a FIFO")


def test_read_previous_ignores_a_huge_file_and_a_device(run_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    huge = run_dir / "subnet.env"
    huge.write_text(render(V4_ENV))
    with huge.open("ab") as f:
        f.truncate(8 << 30)
    with caplog.at_level(logging.WARNING, logger="flannel.subnetenv"):
        assert read_previous(huge) == PreviousSubnets()
        assert read_previous("/dev/zero") == PreviousSubnets()
    assert warned(caplog, "larger than the 65536 bytes allowed")
    assert warned(caplog, "not a regular file but a character device")


@pytest.mark.parametrize("seed", range(20))
def test_read_previous_survives_garbage(run_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    alphabet = b"FLANNEL_SUBNET=10.1.2.1/24,:/\n\r\t\"'#\\ export \x00\xff"
    data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 2000)))
    path = run_dir / "subnet.env"
    path.write_bytes(data + b"\nFLANNEL_NETWORK=10.1.0.0/16\n")
    assert read_previous(path).network == IPv4Network("10.1.0.0/16")
