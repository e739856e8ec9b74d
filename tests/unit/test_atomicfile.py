"""``atomicfile``: no write through a planted link, no write into a directory others control, no hanging read.

Real files throughout. A link "at the temporary name" is planted by making the random name source return
that name first: the names are unpredictable by design, so the test has to know the name in advance.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flannel import atomicfile
from flannel.atomicfile import UnsafeDirectoryError, open_directory, read_bounded, write_atomically

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def planted_names(monkeypatch: pytest.MonkeyPatch, tokens: list[str]) -> None:
    """The next random tokens are ``tokens``, then random ones again."""
    queue = list(tokens)
    real = atomicfile.random_token
    monkeypatch.setattr(atomicfile, "random_token", lambda: queue.pop(0) if queue else real())


def finishes(fn: Callable[[], object], seconds: float = 10.0) -> BaseException | object:
    """Run ``fn`` in a daemon thread; fail the test if it does not return in time (a hang must not hang pytest)."""
    outcome: list[BaseException | object] = []

    def target() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:  # handed back to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still blocked after {seconds} s"
    return outcome[0]


@pytest.fixture(name="victim")
def victim_fixture(tmp_path: Path) -> Path:
    """A file elsewhere that a link will point at: it must keep its content."""
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    victim.write_bytes(b"precious\n")
    return victim


@pytest.fixture(name="target_dir")
def target_dir_fixture(tmp_path: Path) -> Path:
    d = tmp_path / "dir"
    d.mkdir(mode=0o755)
    return d


def test_a_link_planted_at_the_temporary_name_is_skipped_not_followed(
    target_dir: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (target_dir / ".subnet.env.aaaaaaaaaaaaaaaa.tmp").symlink_to(victim)
    (target_dir / ".subnet.env.bbbbbbbbbbbbbbbb.tmp").symlink_to(target_dir / "dangling")
    planted_names(monkeypatch, ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"])
    write_atomically(str(target_dir / "subnet.env"), b"new\n", 0o644)
    assert victim.read_bytes() == b"precious\n"
    assert not (target_dir / "dangling").exists()
    assert (target_dir / "subnet.env").read_bytes() == b"new\n"
    assert sorted(p.name for p in target_dir.iterdir() if not p.is_symlink()) == ["subnet.env"]


def test_when_every_temporary_name_is_taken_the_write_fails_and_touches_nothing(
    target_dir: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (target_dir / "f").write_bytes(b"old\n")
    (target_dir / ".f.cccccccccccccccc.tmp").symlink_to(victim)
    monkeypatch.setattr(atomicfile, "random_token", lambda: "cccccccccccccccc")
    with pytest.raises(FileExistsError, match="every temporary name tried"):
        write_atomically(str(target_dir / "f"), b"new\n", 0o644)
    assert victim.read_bytes() == b"precious\n" and (target_dir / "f").read_bytes() == b"old\n"
    assert (target_dir / ".f.cccccccccccccccc.tmp").is_symlink(), "the planted link is not ours to remove"


def test_a_link_at_the_final_name_is_replaced_not_followed(target_dir: Path, victim: Path) -> None:
    (target_dir / "f").symlink_to(victim)
    write_atomically(str(target_dir / "f"), b"new\n", 0o640)
    assert victim.read_bytes() == b"precious\n"
    final = (target_dir / "f").lstat()
    assert stat.S_ISREG(final.st_mode) and stat.S_IMODE(final.st_mode) == 0o640


def test_temporary_names_are_random_and_stay_within_name_max(target_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = atomicfile.create_temp

    def spy(dir_fd: int, name: str) -> tuple[int, str]:
        fd, tmp = real(dir_fd, name)
        seen.append(tmp)
        return fd, tmp

    monkeypatch.setattr(atomicfile, "create_temp", spy)
    long_name = "x" * 255
    for _ in range(2):
        write_atomically(str(target_dir / long_name), b"1", 0o600)
    assert len(set(seen)) == 2 and all(len(t.encode()) <= 255 and t.startswith(".") for t in seen), seen
    assert all(t.endswith(".tmp") for t in seen)


def test_the_mode_is_exact_whatever_the_umask(target_dir: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomically(str(target_dir / "f"), b"x", 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((target_dir / "f").stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("mode", "needle"),
    [(0o777, "writable by others without the sticky bit"), (0o757, "writable by others without the sticky bit")],
)
def test_a_directory_others_may_write_to_is_refused(target_dir: Path, mode: int, needle: str) -> None:
    target_dir.chmod(mode)
    with pytest.raises(UnsafeDirectoryError, match=needle) as info:
        write_atomically(str(target_dir / "f"), b"x", 0o644)
    assert str(target_dir) in str(info.value)
    assert list(target_dir.iterdir()) == []


def test_a_sticky_world_writable_directory_like_tmp_is_accepted(target_dir: Path) -> None:
    target_dir.chmod(0o1777)
    write_atomically(str(target_dir / "f"), b"x", 0o644)
    assert (target_dir / "f").read_bytes() == b"x"


def test_a_private_directory_must_not_be_group_writable_or_a_link(tmp_path: Path, target_dir: Path) -> None:
    target_dir.chmod(0o770)
    with pytest.raises(UnsafeDirectoryError, match=r"writable by group or others \(mode 0770\)"):
        open_directory(str(target_dir), private=True)
    target_dir.chmod(0o700)
    (tmp_path / "link").symlink_to(target_dir)
    with pytest.raises(UnsafeDirectoryError, match="it is a symbolic link"):
        open_directory(str(tmp_path / "link"), private=True)
    os.close(open_directory(str(target_dir), private=True))


def test_a_shared_directory_may_be_reached_through_our_own_link(tmp_path: Path, target_dir: Path) -> None:
    """``/var/run -> /run`` and a linked ``/run/flannel`` are normal; the directory behind the link is checked."""
    (tmp_path / "link").symlink_to(target_dir)
    write_atomically(str(tmp_path / "link" / "f"), b"x", 0o644)
    assert (target_dir / "f").read_bytes() == b"x"


@needs_root
def test_a_directory_or_link_of_another_user_is_refused(tmp_path: Path, target_dir: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(target_dir)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(UnsafeDirectoryError, match=f"symbolic link owned by uid {NOBODY}"):
        write_atomically(str(link / "f"), b"x", 0o644)
    os.chown(target_dir, NOBODY, NOBODY)
    with pytest.raises(UnsafeDirectoryError, match=f"owned by uid {NOBODY}, neither by root nor by us"):
        write_atomically(str(target_dir / "f"), b"x", 0o644)
    assert list(target_dir.iterdir()) == []


@pytest.fixture(name="fifo")
def fifo_fixture(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    yield path
    path.unlink()


def test_reading_a_fifo_without_a_writer_fails_at_once(fifo: Path) -> None:
    err = finishes(lambda: read_bounded(str(fifo), 100))
    assert isinstance(err, OSError) and "not a regular file but a FIFO" in str(err) and str(fifo) in str(err)


def test_reading_a_device_or_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="not a regular file but a character device"):
        read_bounded("/dev/zero", 100)
    with pytest.raises(OSError, match="not a regular file but a directory"):
        read_bounded(str(tmp_path), 100)


def test_a_huge_file_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    huge = tmp_path / "huge"
    with huge.open("wb") as f:
        f.truncate(8 << 30)  # sparse: 8 GiB that would exhaust memory if read
    with pytest.raises(OSError, match="larger than the 65536 bytes allowed"):
        read_bounded(str(huge), 65536)
    exact = tmp_path / "exact"
    exact.write_bytes(b"y" * 65536)
    assert read_bounded(str(exact), 65536) == b"y" * 65536


def test_without_follow_a_link_is_refused_for_reading(tmp_path: Path, victim: Path) -> None:
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(OSError, match="is a symbolic link"):
        read_bounded(str(tmp_path / "link"), 100, follow=False)
    assert read_bounded(str(tmp_path / "link"), 100) == b"precious\n"
