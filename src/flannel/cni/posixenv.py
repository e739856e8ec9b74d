"""The process environment and path strings for the CNI plugin, without importing ``os``.

``os`` is frozen into the interpreter, but importing it still runs ``_collections_abc``, ``stat``, ``posixpath``
and ``genericpath``: 1.3 ms of every pod start, for ``os.environ`` and ``os.path.join`` (docs/performance.md,
session 6). The calls themselves live in ``posix``, the built-in module ``os`` re-exports (on every Python for
Linux: CPython, PyPy, GraalPy), so the plugin calls them there, and this module gives what ``os`` adds on
top, with the same results for the inputs the plugin has.
"""

from __future__ import annotations

import posix
import sys


def environ() -> dict[str, str]:
    """A copy of the environment as ``os.environ`` shows it: names and values decoded as the file system
    encoding says, undecodable bytes kept as surrogates (``surrogateescape``, so ``posix_spawn`` hands the
    delegate the very bytes we were given)."""
    encoding = sys.getfilesystemencoding()
    out = {}
    for key, value in posix.environ.items():
        if isinstance(key, bytes):  # CPython and PyPy: bytes
            out[key.decode(encoding, "surrogateescape")] = value.decode(encoding, "surrogateescape")
        else:  # a Python whose posix.environ holds str already
            out[key] = value
    return out


def join(directory: str, name: str) -> str:
    """``os.path.join(directory, name)``: an absolute ``name`` stands alone, one ``/`` between the two."""
    if name.startswith("/") or not directory:
        return name
    return directory + name if directory.endswith("/") else directory + "/" + name


def dirname(path: str) -> str:
    """``os.path.dirname(path)``: everything before the last ``/``, without trailing slashes unless all."""
    head = path[: path.rfind("/") + 1]
    if head and head != "/" * len(head):
        head = head.rstrip("/")
    return head


def basename(path: str) -> str:
    """``os.path.basename(path)``: everything after the last ``/``."""
    return path[path.rfind("/") + 1 :]
