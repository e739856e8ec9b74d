"""The one error type of the netlink layer, and the one place where errno numbers become intent.

The kernel answers every failed request with a bare negative errno; which errno means "already there" or
"already gone" depends on the object (a missing route is ESRCH, a missing neighbour ENOENT, a missing
device ENODEV, a missing address EADDRNOTAVAIL). Callers ask ``is_exists``/``is_gone`` instead of
learning that table.
"""

from __future__ import annotations

import errno as _errno
import os

_GONE = frozenset({_errno.ENOENT, _errno.ESRCH, _errno.ENODEV, _errno.EADDRNOTAVAIL})
_UNREACHABLE = frozenset({_errno.ENETUNREACH, _errno.EHOSTUNREACH})
_REJECTED = frozenset({_errno.EINVAL, _errno.EACCES})


class NetlinkError(Exception):
    """The kernel refused a request.

    ``errno`` is the positive errno value, ``op`` says what was asked in ``ip``'s words (for logs), and
    ``detail`` is the kernel's extended-ACK message when it gave one (often the most useful part).
    """

    def __init__(self, errno: int, op: str, detail: str = "") -> None:
        self.errno = errno
        self.op = op
        self.detail = detail
        super().__init__(errno, op, detail)

    def __str__(self) -> str:
        text = f"{self.op}: {os.strerror(self.errno)}"
        return f"{text} ({self.detail})" if self.detail else text

    def __repr__(self) -> str:
        name = _errno.errorcode.get(self.errno, str(self.errno))
        return f"NetlinkError({name}, {self.op!r}, {self.detail!r})"


def is_exists(err: BaseException | None) -> bool:
    """True when the object being created is already there (EEXIST)."""
    return isinstance(err, NetlinkError) and err.errno == _errno.EEXIST


def is_gone(err: BaseException | None) -> bool:
    """True when the object being deleted or looked up does not exist (any object kind)."""
    return isinstance(err, NetlinkError) and err.errno in _GONE


def is_unreachable(err: BaseException | None) -> bool:
    """True when a route lookup found no route (ENETUNREACH/EHOSTUNREACH)."""
    return isinstance(err, NetlinkError) and err.errno in _UNREACHABLE


def is_rejected(err: BaseException | None) -> bool:
    """True when a route lookup ended in a blackhole (EINVAL) or prohibit (EACCES) route."""
    return isinstance(err, NetlinkError) and err.errno in _REJECTED
