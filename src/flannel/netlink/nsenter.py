"""Open rtnetlink (and XFRM) sockets inside another network namespace.

A netlink socket stays bound to the namespace of the thread that created it, so entering a namespace just
for the ``socket()`` call is enough: every later request through that socket acts there. This is what lets
tests and the benchmark drive a namespace from the same process, and it needs nothing but libc's
``setns`` (the ``os.setns`` wrapper only arrived in Python 3.12).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from flannel.netlink.consts import NETLINK_ROUTE

if TYPE_CHECKING:
    import ctypes

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"
SO_SNDBUFFORCE = 32  # asm-generic/socket.h; the socket module does not export these two
SO_RCVBUFFORCE = 33

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    import ctypes  # only here: flanneld itself never enters a namespace, and ctypes costs 0.4 MiB

    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_path(netns: str) -> str:
    """``ip netns`` names live in /var/run/netns; an absolute path (e.g. /proc/PID/ns/net) is used as is."""
    return netns if netns.startswith("/") else os.path.join(NETNS_RUN_DIR, netns)


@contextmanager
def entered(netns: str) -> Iterator[None]:
    """Run the body with this thread in ``netns``, then return to the thread's original namespace."""
    target = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                # Failing to return would leave the whole thread in the wrong namespace: do not hide it.
                _setns(saved)
        finally:
            os.close(saved)
    finally:
        os.close(target)


def route_socket(netns: str | None, groups: int = 0) -> socket.socket:
    """A bound NETLINK_ROUTE socket in ``netns`` (None: the caller's namespace), subscribed to ``groups``."""
    return netlink_socket(netns, NETLINK_ROUTE, groups)


def netlink_socket(netns: str | None, protocol: int, groups: int = 0) -> socket.socket:
    """A bound netlink socket of ``protocol`` (NETLINK_ROUTE, NETLINK_XFRM...) in ``netns``."""
    if netns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    else:
        with entered(netns):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    try:
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


def set_buffers(sock: socket.socket, size: int) -> int:
    """Grow both socket buffers to ``size`` (beyond rmem_max/wmem_max when root); returns the receive size.

    A large send buffer lets one ``sendto`` carry a whole chunk of requests (the kernel rejects a message
    bigger than the send buffer); a large receive buffer lets their ACKs queue up while it processes them.
    """
    for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
