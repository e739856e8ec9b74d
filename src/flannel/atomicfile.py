"""Durable, atomic file replacement, shared by flanneld (subnet.env) and the CNI plugin (saved configs).

Readers must see the old file or the new one, never half of either, and a crash must not lose a file that
was reported written: write a temporary file in the same directory, set its mode explicitly (the umask must
not narrow it), fsync it, rename it over the target, fsync the directory. Only ``os`` is used, because the
CNI plugin imports this on every pod start.
"""

from __future__ import annotations

import os

TMP_PREFIX = "."
"""Temporary files start with a dot: no container ID and no subnet file name does."""
TMP_SUFFIX = ".tmp"
"""And end in ``.tmp``, so leftovers of a crash are easy to recognise and collect."""


def write_atomically(path: str, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` (file mode exactly ``mode``); the directory must exist.

    On failure the temporary file is removed and the ``OSError`` propagates; ``path`` is left untouched.
    """
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f"{TMP_PREFIX}{name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:  # noqa: SIM105 - contextlib is one import more on the CNI plugin's start-up path
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
