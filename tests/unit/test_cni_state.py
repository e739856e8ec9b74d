"""The CNI data directory (``cni.state``): refused when others control it, created 0700, never left through a name.

In-process, on real files; the same cases through the ``flannel`` executable are in test_cni_hostile_input.py.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from flannel import atomicfile
from flannel.cni import state
from flannel.cni.errors import INVALID_ENVIRONMENT, IO_FAILURE, CNIError
from flannel.cni.netconf import read_args
from tests.unit.test_atomicfile import NOBODY, finishes, needs_root, planted_names

BAD_IDS = ["../x", "a/b", "x" * 10_000, "", "a\0b", ".hidden", "..", "-x", "x" * 256]


@pytest.fixture(name="data_dir")
def data_dir_fixture(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture(name="victim")
def victim_fixture(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    return victim


def test_missing_data_dir_is_created_0700_with_its_parents_whatever_the_umask(tmp_path: Path) -> None:
    data_dir = tmp_path / "var" / "lib" / "cni" / "flannel"
    old = os.umask(0o277)  # would leave the owner unable to write
    try:
        state.save(str(data_dir), "ctr1", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "ctr1").stat().st_mode) == 0o600


def test_a_symlinked_data_dir_is_refused_for_every_operation(tmp_path: Path, data_dir: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(data_dir)
    (data_dir / "ctr1").write_bytes(b"{}")
    for op in (
        lambda: state.save(str(link), "ctr2", b"{}"),
        lambda: state.load(str(link), "ctr1"),
        lambda: state.remove(str(link), "ctr1"),
        lambda: state.saved_ids(str(link)),
    ):
        with pytest.raises(CNIError) as info:
            op()
        assert info.value.code == IO_FAILURE
        assert info.value.msg == f"refusing the data directory {link} (dataDir): it is a symbolic link"
    assert sorted(os.listdir(data_dir)) == ["ctr1"]


@pytest.mark.parametrize("mode", [0o770, 0o720, 0o702, 0o777, 0o1777])
def test_a_data_dir_writable_by_group_or_others_is_refused(data_dir: Path, mode: int) -> None:
    data_dir.chmod(mode)
    with pytest.raises(CNIError, match=f"refusing the data directory {data_dir} .*mode {mode:04o}") as info:
        state.save(str(data_dir), "ctr1", b"{}")
    assert info.value.code == IO_FAILURE and "0700" in info.value.details
    assert list(data_dir.iterdir()) == []


@needs_root
def test_a_data_dir_of_another_user_is_refused(data_dir: Path) -> None:
    os.chown(data_dir, NOBODY, NOBODY)
    with pytest.raises(CNIError, match=f"owned by uid {NOBODY}"):
        state.save(str(data_dir), "ctr1", b"{}")


def test_a_data_dir_that_is_a_file_fails_add_and_means_nothing_saved_for_del(tmp_path: Path) -> None:
    not_dir = tmp_path / "file"
    not_dir.write_bytes(b"")
    with pytest.raises(CNIError, match=f"unusable data directory \\(dataDir\\): open {not_dir}: not a directory"):
        state.save(str(not_dir), "ctr1", b"{}")
    assert state.load(str(not_dir), "ctr1") is None and state.saved_ids(str(not_dir)) == []


def test_a_link_planted_at_the_temporary_name_does_not_redirect_the_save(
    data_dir: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (data_dir / ".ctr1.0123456789abcdef.tmp").symlink_to(victim)
    planted_names(monkeypatch, ["0123456789abcdef"])
    state.save(str(data_dir), "ctr1", b'{"type":"bridge"}')
    assert victim.read_bytes() == b"precious\n"
    assert state.load(str(data_dir), "ctr1") == b'{"type":"bridge"}'


def test_a_link_at_the_saved_name_is_replaced_by_save_and_refused_by_load(data_dir: Path, victim: Path) -> None:
    (data_dir / "ctr1").symlink_to(victim)
    with pytest.raises(CNIError, match="is a symbolic link, which is not followed here"):
        state.load(str(data_dir), "ctr1")
    state.save(str(data_dir), "ctr1", b"{}")
    assert victim.read_bytes() == b"precious\n" and not (data_dir / "ctr1").is_symlink()


def test_a_saved_config_that_is_a_fifo_or_huge_is_an_error_not_a_hang(data_dir: Path) -> None:
    os.mkfifo(data_dir / "ctr1")
    err = finishes(lambda: state.load(str(data_dir), "ctr1"))
    assert isinstance(err, CNIError) and err.code == IO_FAILURE and "not a regular file but a FIFO" in err.msg
    with (data_dir / "ctr2").open("wb") as f:
        f.truncate(4 << 30)
    with pytest.raises(CNIError, match="larger than the 1048576 bytes allowed"):
        state.load(str(data_dir), "ctr2")


@pytest.mark.parametrize("container_id", BAD_IDS, ids=lambda c: repr(c[:12]))
def test_no_container_id_leads_outside_the_data_dir(tmp_path: Path, data_dir: Path, container_id: str) -> None:
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for op in (
        lambda: state.save(str(data_dir), container_id, b"{}"),
        lambda: state.load(str(data_dir), container_id),
        lambda: state.remove(str(data_dir), container_id),
    ):
        with pytest.raises(CNIError) as info:
            op()
        assert info.value.code == INVALID_ENVIRONMENT
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("container_id", BAD_IDS, ids=lambda c: repr(c[:12]))
def test_the_environment_check_refuses_bad_container_ids_with_code_4(container_id: str) -> None:
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": container_id, "CNI_IFNAME": "eth0", "CNI_PATH": "/bin"}
    with pytest.raises(CNIError) as info:
        read_args(env)
    assert info.value.code == INVALID_ENVIRONMENT
    assert len(info.value.msg) + len(info.value.details) < 400, "a huge ID is not echoed back"


def test_a_255_character_id_is_a_valid_file_name(data_dir: Path) -> None:
    container_id = "a" * 255
    read_args({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": container_id, "CNI_IFNAME": "eth0", "CNI_PATH": "/bin"})
    state.save(str(data_dir), container_id, b"{}")
    assert state.saved_ids(str(data_dir)) == [container_id]
    state.remove(str(data_dir), container_id)


def test_gc_of_stale_temporary_files_never_follows_links(data_dir: Path, victim: Path) -> None:
    (data_dir / ".ctr1.ffffffffffffffff.tmp").write_bytes(b"half")
    (data_dir / ".ctr2.eeeeeeeeeeeeeeee.tmp").symlink_to(victim)
    removed = state.remove_stale_tmp(str(data_dir), now=1e12)
    assert sorted(removed) == [".ctr1.ffffffffffffffff.tmp", ".ctr2.eeeeeeeeeeeeeeee.tmp"]
    assert victim.read_bytes() == b"precious\n" and list(data_dir.iterdir()) == []


def test_random_token_is_fresh_each_time() -> None:
    assert len({atomicfile.random_token() for _ in range(100)}) == 100
