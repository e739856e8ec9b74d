"""A black-box view of what a daemon writes into the kernel: a netlink socket subscribed to route and
neighbour notifications, each message timestamped as it is read. Shared by the programming and churn
benchmarks, which must see flanneld's work from outside (not through its own code).

Also: CPU time of a process from ``/proc/<pid>/stat``, and the machine's load average, because the
benchmarks run on a shared machine and report CPU beside wall time.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE = 24
RTM_NEWNEIGH = 28
RTA_DST = 1
NDA_DST = 1
AF_BRIDGE = 7
SO_RCVBUFFORCE = 33
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Entry:
    """One notification: ``kind`` is "route" (an IPv4 route, ``dst`` its destination, ``plen`` its prefix
    length), "neigh" (an IPv4 neighbour) or "fdb" (an AF_BRIDGE neighbour; ``dst`` its NDA_DST)."""

    kind: str
    dst: bytes
    plen: int
    at: float


class KernelWatch:
    """Route and neighbour notifications of the namespace this process runs in.

    The receive buffer is forced to 64 MiB so that a burst of 60 000 notifications fits; ``overrun`` says
    the kernel dropped some anyway (ENOBUFS), and a caller must then count by dumping instead.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        self.sock.bind((0, RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH))
        self.overrun = False

    def close(self) -> None:
        self.sock.close()

    def read(self, timeout: float) -> Iterator[Entry]:
        """Every notification that arrives within ``timeout`` seconds (returns at the first quiet moment
        after something arrived, so that callers can check their condition often)."""
        import select

        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overrun = True
                    continue
                raise
            now = time.monotonic()
            yield from _parse(data, now)


def _parse(data: bytes, now: float) -> Iterator[Entry]:
    off = 0
    while off + 16 <= len(data):
        length, mtype = struct.unpack_from("=IH", data, off)
        if length < 16:
            return
        body = off + 16
        if mtype == RTM_NEWROUTE and length >= 28:
            family, plen = data[body], data[body + 1]
            if family == socket.AF_INET:
                dst = _attr(data, body + 12, off + length, RTA_DST)
                if dst is not None:
                    yield Entry("route", dst, plen, now)
        elif mtype == RTM_NEWNEIGH and length >= 28:
            family = data[body]
            dst = _attr(data, body + 12, off + length, NDA_DST)
            if dst is not None:
                yield Entry("fdb" if family == AF_BRIDGE else "neigh", dst, 0, now)
        off += (length + 3) & ~3


def _attr(data: bytes, off: int, end: int, want: int) -> bytes | None:
    while off + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4:
            return None
        if atype & 0x3FFF == want:
            return data[off + 4:off + alen]
        off += (alen + 3) & ~3
    return None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (kernel work done in its syscalls, netlink included, counts as stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_kib(pid: int, field: str = "VmHWM") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
