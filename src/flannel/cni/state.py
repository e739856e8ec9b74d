"""The saved delegate configs: ``<dataDir>/<containerID>``, written at ADD and replayed at DEL (spec §13.3–13.4).

DEL must undo exactly what ADD did even if ``subnet.env`` changed or vanished in between, so ADD saves the
bytes it gave the delegate. Upstream's modes are kept (directory 0700, file 0600, synced to disk). Unlike
upstream, the file is written to a temporary name and renamed into place, so a crash mid-write never leaves
a half file that DEL would then have to refuse; temporary names start with ``.``, which no container ID can.
"""

from __future__ import annotations

import os

from flannel.atomicfile import TMP_PREFIX, TMP_SUFFIX, write_atomically
from flannel.cni.errors import IO_FAILURE, CNIError, os_error_text
from flannel.cni.netconf import is_valid_name

DIR_MODE = 0o700
FILE_MODE = 0o600
STALE_TMP_SECONDS = 3600.0
"""GC removes temporary files older than this (left by a crash between write and rename)."""


def saved_path(data_dir: str, container_id: str) -> str:
    return os.path.join(data_dir, container_id)


def save(data_dir: str, container_id: str, data: bytes) -> str:
    """Write ``data`` durably and atomically as ``<data_dir>/<container_id>``; returns the path."""
    path = saved_path(data_dir, container_id)
    try:
        os.makedirs(data_dir, DIR_MODE, exist_ok=True)
        # Durable before DEL can need it: a lost file at DEL time would leak the pod's address.
        write_atomically(path, data, FILE_MODE)
    except OSError as exc:
        raise CNIError(IO_FAILURE, f"failed to save the delegate config: {os_error_text('write', path, exc)}") from None
    return path


def load(data_dir: str, container_id: str) -> bytes | None:
    """The saved bytes, or None when there are none (the container was never added, or already deleted)."""
    path = saved_path(data_dir, container_id)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except OSError as exc:
        msg = f"failed to read the saved delegate config: {os_error_text('open', path, exc)}"
        raise CNIError(IO_FAILURE, msg) from None


def remove(data_dir: str, container_id: str) -> None:
    """Delete the saved config; already gone is fine."""
    path = saved_path(data_dir, container_id)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        msg = f"failed to remove the saved delegate config: {os_error_text('remove', path, exc)}"
        raise CNIError(IO_FAILURE, msg) from None


def saved_ids(data_dir: str) -> list[str]:
    """Container IDs that have a saved config (sorted); temporary files and other names are skipped."""
    try:
        with os.scandir(data_dir) as entries:
            return sorted(e.name for e in entries if is_valid_name(e.name) and e.is_file(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        msg = f"failed to list saved delegate configs: {os_error_text('open', data_dir, exc)}"
        raise CNIError(IO_FAILURE, msg) from None


def remove_stale_tmp(data_dir: str, now: float, max_age: float = STALE_TMP_SECONDS) -> list[str]:
    """Delete temporary files older than ``max_age`` seconds; returns their names."""
    removed = []
    try:
        with os.scandir(data_dir) as entries:
            for e in entries:
                if not (e.name.startswith(TMP_PREFIX) and e.name.endswith(TMP_SUFFIX)):
                    continue
                try:
                    if now - e.stat(follow_symlinks=False).st_mtime > max_age:
                        os.unlink(e.path)
                        removed.append(e.name)
                except OSError:
                    continue
    except OSError:
        return removed
    return removed


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        return
