"""Credentials that must never be printed: a wrapper type, URL redaction, and a non-dumpable process.

flanneld holds a few secrets (the etcd password, the Kubernetes bearer token, basic-auth password and client
key) and prints a great deal: option dataclasses at DEBUG, error texts in logs, ``/readyz`` reasons. A
``field(repr=False)`` hides a value from one ``repr`` only; an f-string, ``%s`` or ``str()`` still prints it.
``Secret`` hides it from all of them, so that only code that asks for it by name (``reveal()``) ever sees
the value, and a review can find every such place with one grep.

URLs are the other leak: ``http://user:password@host`` is valid in ``--etcd-endpoints`` and kubeconfig
servers. Neither client uses that user info (as upstream's Go clients do not), so it is dropped where the URL
enters, and ``redact_urls`` scrubs any that still reach a log line or a readiness reason.

See docs/security.md for the inventory and for why the process is made non-dumpable.
"""

from __future__ import annotations

import logging
import re

# hmac.compare_digest, without hmac: importing hmac loads hashlib and OpenSSL's libcrypto (about 4 MiB of RSS
# in a daemon that keeps ``ssl`` out for the same reason, see daemon/entry.py). hmac takes it from here.
from _operator import _compare_digest
from typing import Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

T = TypeVar("T", str, bytes)

REDACTED = "<redacted>"

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3

# scheme://userinfo@ in free text: the user info is everything up to the first '@' before the host part ends.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]+)@")


class Secret(Generic[T]):
    """A credential: ``repr``, ``str`` and formatting show ``<redacted>``; ``reveal()`` gives the value.

    Falsy when empty, so ``if options.password:`` still reads naturally; equal to another ``Secret`` with the
    same value (compared in constant time) and never to a plain ``str``, so a test or a config diff cannot
    print it by accident either.
    """

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value: T = value

    def reveal(self) -> T:
        """The value itself: for the one place that hands it to the server (auth header, TLS, etcd login)."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({REDACTED if self._value else '<empty>'})"

    def __str__(self) -> str:
        return REDACTED if self._value else ""

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        mine, theirs = _as_bytes(self._value), _as_bytes(other._value)
        return type(self._value) is type(other._value) and _compare_digest(mine, theirs)

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[type[Secret[T]], tuple[T]]:
        return (Secret, (self._value,))


NO_SECRET: Secret[str] = Secret("")
"""The empty string credential: a dataclass default (``Secret`` is immutable, so one can be shared)."""
NO_SECRET_BYTES: Secret[bytes] = Secret(b"")
"""The empty bytes credential."""


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value


def strip_userinfo(url: str) -> str:
    """``url`` without ``user:password@``; other URLs (and text that is no URL) unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_urls(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def has_userinfo(url: str) -> bool:
    """Whether ``url`` carries ``user[:password]@`` before its host."""
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return bool(_URL_USERINFO.search(url))


def redact_urls(text: str) -> str:
    """``text`` with the user info of every ``scheme://user:password@host`` replaced by ``<redacted>``."""
    if "@" not in text:  # the common case: a log line with no URL credentials costs one scan
        return text
    return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)


def make_non_dumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)``: no core dump, and ptrace or ``/proc/<pid>/{mem,environ}`` need
    ``CAP_SYS_PTRACE``; True if it took effect.

    Called once a credential is loaded. A core file would hold the password or token in clear, and core
    dumps often land where more people can read them than the process' own memory (a crash collector, a
    shared host path). The price (no core dump for a crash, py-spy needs root with ``CAP_SYS_PTRACE``) is
    small for a Python daemon that runs as root anyway; docs/security.md weighs it.
    """
    import ctypes

    try:
        # The process' own symbols, libc's among them: ``ctypes.util.find_library`` would cost 1.3 MiB of
        # imports (shutil, bz2, lzma, tempfile) and an ``ldconfig`` run to find the same library (issue #16).
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            log.warning("cannot mark the process non-dumpable: errno %d", ctypes.get_errno())
            return False
        return int(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError) as exc:  # not Linux/glibc: nothing to do
        log.warning("cannot mark the process non-dumpable: %s", exc)
        return False
