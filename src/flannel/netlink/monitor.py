"""Link events (device created, changed, deleted) for the asyncio daemon.

flanneld must notice when someone deletes its VXLAN device, and must not poll for it. The monitor is a
non-blocking socket subscribed to RTMGRP_LINK that plugs into ``loop.add_reader``. Optionally it also hears
address changes, because an external interface that comes back is only usable once its address is back.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal

from flannel.netlink import nsenter, wire
from flannel.netlink.consts import (
    IFA_LABEL,
    IFADDRMSG,
    IFINFOMSG,
    IFLA_IFNAME,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkEvent:
    """A device appeared or changed ("new"), disappeared ("del"), or one of its addresses changed ("addr")."""

    kind: Literal["new", "del", "addr"]
    index: int
    name: str
    """The device name; for "addr" the address label (IPv4), empty for IPv6."""


class LinkMonitor:
    """A socket that receives every link change in one namespace.

    When events come faster than they are read the kernel drops them (ENOBUFS); ``overruns`` counts those
    occasions, and a caller that sees it grow should re-list links instead of trusting the event stream.
    """

    def __init__(self, netns: str | None = None, *, bufsize: int = 4 << 20, addresses: bool = False) -> None:
        self.netns = netns
        self.overruns = 0
        groups = RTMGRP_LINK | (RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR if addresses else 0)
        self._sock = nsenter.route_socket(netns, groups)
        try:
            nsenter.set_buffers(self._sock, bufsize)
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self._buf = bytearray(1 << 16)
        self._view = memoryview(self._buf)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> LinkMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_events(self) -> list[LinkEvent]:
        """Everything queued so far, oldest first; an empty list when nothing is (never blocks)."""
        events: list[LinkEvent] = []
        while True:
            try:
                n = self._sock.recv_into(self._buf)
            except BlockingIOError:
                return events
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
                log.warning("link events were lost (receive buffer overrun %d)", self.overruns)
                continue
            data = bytes(self._view[:n])
            for mtype, _flags, _seq, start, end in wire.iter_messages(data):
                if mtype in (RTM_NEWADDR, RTM_DELADDR):
                    index = IFADDRMSG.unpack_from(data, start)[4]
                    label = wire.attrs(data, start + IFADDRMSG.size, end).get(IFA_LABEL, b"")
                    events.append(LinkEvent("addr", index, wire.cstr(label)))
                    continue
                if mtype not in (RTM_NEWLINK, RTM_DELLINK):
                    continue
                index = IFINFOMSG.unpack_from(data, start)[2]
                name = wire.cstr(wire.attrs(data, start + IFINFOMSG.size, end).get(IFLA_IFNAME, b""))
                events.append(LinkEvent("new" if mtype == RTM_NEWLINK else "del", index, name))


async def link_events(monitor: LinkMonitor) -> AsyncGenerator[list[LinkEvent], None]:
    """Yield batches of link events as they arrive, for ``async for`` in the daemon's link task."""
    import asyncio  # here, not at the top: asyncio costs ~10 MiB RSS to processes that never use it

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[LinkEvent] | BaseException] = asyncio.Queue()

    def readable() -> None:
        try:
            events = monitor.read_events()
        except OSError as err:
            queue.put_nowait(err)
            return
        if events:
            queue.put_nowait(events)

    fd = monitor.fileno()
    loop.add_reader(fd, readable)
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        loop.remove_reader(fd)
