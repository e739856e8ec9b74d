"""The saved delegate configs: ``<dataDir>/<containerID>``, written at ADD and replayed at DEL (spec §13.3–13.4).

DEL must undo exactly what ADD did even if ``subnet.env`` changed or vanished in between, so ADD saves the
bytes it gave the delegate. Upstream's modes are kept (directory 0700, file 0600, synced to disk). Unlike
upstream, the file is written to a temporary name and renamed into place, so a crash mid-write never leaves
a half file that DEL would then have to refuse; temporary names start with ``.``, which no container ID can.

Whoever can change the data directory decides what DEL replays (which delegate runs, with which config), and
could plant links that make ADD overwrite any file as root. So the directory is trusted only when it is a
real directory (not a symbolic link), owned by root or us, and writable by nobody else; otherwise every verb
refuses it with an error that names the path and says why (``atomicfile.open_directory``). All access goes
through one descriptor of the checked directory, saved files are never followed if they are links, and a
container ID is re-checked here, so that no name can lead outside the directory.
"""

from __future__ import annotations

import posix

from flannel.atomicfile import TMP_PREFIX, TMP_SUFFIX, UnsafeDirectoryError, open_directory, read_bounded, write_in
from flannel.cni.errors import INVALID_ENVIRONMENT, IO_FAILURE, CNIError, os_error_text
from flannel.cni.netconf import MAX_CONTAINER_ID, is_valid_name
from flannel.cni.posixenv import dirname, join

DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_SAVED_BYTES = 1 << 20
"""A saved config is a few hundred bytes; a bigger file was not written by ADD, and is not read whole."""
STALE_TMP_SECONDS = 3600.0
"""GC removes temporary files older than this (left by a crash between write and rename)."""


def saved_path(data_dir: str, container_id: str) -> str:
    return join(data_dir, container_id)


def check_container_id(container_id: str) -> None:
    """A container ID is a file name here: never empty, no ``/``, no leading dot, within NAME_MAX."""
    if not is_valid_name(container_id) or len(container_id) > MAX_CONTAINER_ID:
        raise CNIError(INVALID_ENVIRONMENT, "invalid containerID for a saved delegate config", container_id[:80])


def open_data_dir(data_dir: str, *, create: bool) -> int | None:
    """A descriptor of the checked data directory; None when it does not exist (or is no directory) and
    ``create`` is false. Created with mode exactly 0700 when missing, as upstream (parents as ``mkdir -p``)."""
    try:
        return open_directory(data_dir, private=True)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if not create:
            return None
        if isinstance(exc, NotADirectoryError):
            raise _dir_error(data_dir, exc) from None
    except UnsafeDirectoryError as exc:
        raise _unsafe(data_dir, exc) from None
    except OSError as exc:
        raise _dir_error(data_dir, exc) from None
    try:
        try:
            posix.mkdir(data_dir, DIR_MODE)
        except FileExistsError:  # another ADD made it meanwhile; it is checked below like any other
            pass
        except (FileNotFoundError, NotADirectoryError):
            parent = dirname(data_dir.rstrip("/"))
            if not parent:
                raise
            _make_with_parents(parent, data_dir)
        fd = open_directory(data_dir, private=True)
    except UnsafeDirectoryError as exc:  # lost a race against someone else's link
        raise _unsafe(data_dir, exc) from None
    except OSError as exc:
        raise _dir_error(data_dir, exc) from None
    try:
        posix.fchmod(fd, DIR_MODE)  # the umask must not take the owner's bits
    except OSError as exc:
        posix.close(fd)
        raise _dir_error(data_dir, exc) from None
    return fd


def _make_with_parents(parent: str, data_dir: str) -> None:
    """``mkdir -p parent`` (with ``os.makedirs``'s errors), then the data directory: only where a parent is
    missing, so ``os`` is imported on this path alone."""
    import os

    os.makedirs(parent, exist_ok=True)
    try:  # noqa: SIM105 - contextlib is one import more on the plugin's start-up path
        posix.mkdir(data_dir, DIR_MODE)
    except FileExistsError:
        pass


def save(data_dir: str, container_id: str, data: bytes) -> str:
    """Write ``data`` durably and atomically as ``<data_dir>/<container_id>``; returns the path."""
    check_container_id(container_id)
    path = saved_path(data_dir, container_id)
    dir_fd = open_data_dir(data_dir, create=True)
    if dir_fd is None:  # not reached: create=True either opens the directory or raises
        raise CNIError(IO_FAILURE, f"unusable data directory (dataDir): {data_dir}")
    try:
        # Durable before DEL can need it: a lost file at DEL time would leak the pod's address.
        write_in(dir_fd, container_id, data, FILE_MODE)
    except OSError as exc:
        raise CNIError(IO_FAILURE, f"failed to save the delegate config: {os_error_text('write', path, exc)}") from None
    finally:
        posix.close(dir_fd)
    return path


def load(data_dir: str, container_id: str) -> bytes | None:
    """The saved bytes, or None when there are none (the container was never added, or already deleted)."""
    check_container_id(container_id)
    dir_fd = open_data_dir(data_dir, create=False)
    if dir_fd is None:
        return None
    path = saved_path(data_dir, container_id)
    try:
        return read_bounded(container_id, MAX_SAVED_BYTES, dir_fd=dir_fd, follow=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        msg = f"failed to read the saved delegate config: {os_error_text('open', path, exc)}"
        raise CNIError(IO_FAILURE, msg) from None
    finally:
        posix.close(dir_fd)


def remove(data_dir: str, container_id: str) -> None:
    """Delete the saved config; already gone is fine."""
    check_container_id(container_id)
    dir_fd = open_data_dir(data_dir, create=False)
    if dir_fd is None:
        return
    path = saved_path(data_dir, container_id)
    try:
        posix.unlink(container_id, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as exc:
        msg = f"failed to remove the saved delegate config: {os_error_text('remove', path, exc)}"
        raise CNIError(IO_FAILURE, msg) from None
    finally:
        posix.close(dir_fd)


def saved_ids(data_dir: str) -> list[str]:
    """Container IDs that have a saved config (sorted); temporary files and other names are skipped."""
    dir_fd = open_data_dir(data_dir, create=False)
    if dir_fd is None:
        return []
    try:
        with posix.scandir(dir_fd) as entries:
            return sorted(
                e.name
                for e in entries
                if is_valid_name(e.name) and len(e.name) <= MAX_CONTAINER_ID and e.is_file(follow_symlinks=False)
            )
    except OSError as exc:
        msg = f"failed to list saved delegate configs: {os_error_text('open', data_dir, exc)}"
        raise CNIError(IO_FAILURE, msg) from None
    finally:
        posix.close(dir_fd)


def remove_stale_tmp(data_dir: str, now: float, max_age: float = STALE_TMP_SECONDS) -> list[str]:
    """Delete temporary files older than ``max_age`` seconds; returns their names."""
    dir_fd = open_data_dir(data_dir, create=False)
    if dir_fd is None:
        return []
    removed = []
    try:
        with posix.scandir(dir_fd) as entries:
            for e in entries:
                if not (e.name.startswith(TMP_PREFIX) and e.name.endswith(TMP_SUFFIX)):
                    continue
                try:
                    if now - e.stat(follow_symlinks=False).st_mtime > max_age:
                        posix.unlink(e.name, dir_fd=dir_fd)
                        removed.append(e.name)
                except OSError:
                    continue
    except OSError:
        return removed
    finally:
        posix.close(dir_fd)
    return removed


def _unsafe(data_dir: str, exc: UnsafeDirectoryError) -> CNIError:
    return CNIError(
        IO_FAILURE,
        f"refusing the data directory {data_dir} (dataDir): {exc.strerror}",
        "the saved delegate configs must live in a real directory owned by root with mode 0700; "
        "fix it, or point 'dataDir' at such a directory",
    )


def _dir_error(data_dir: str, exc: OSError) -> CNIError:
    return CNIError(IO_FAILURE, f"unusable data directory (dataDir): {os_error_text('open', data_dir, exc)}")
