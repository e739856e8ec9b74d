"""A request timeout in the middle of a real dump: why the socket is replaced rather than reused; and why the
timeout may be short: it bounds each reply, and the kernel has every reply ready before we ask.

The kernel keeps an unfinished dump attached to its socket and refuses every later dump there (EBUSY) until
the rest has been read. A timeout is simulated by a socket whose receive fails, after the first datagram,
the way an expired SO_RCVTIMEO makes it fail (EAGAIN); the dump behind it is real.
"""

from __future__ import annotations

import errno
import socket
import time
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from flannel import metrics
from flannel.netlink import Netlink, NetlinkError, RouteDelete, wire
from flannel.netlink import routes as wire_routes
from flannel.netlink.consts import NLM_F_DUMP, NLM_F_REQUEST, RTM_GETROUTE
from tests.netns import NetNS, netns_fixture  # noqa: F401

pytestmark = pytest.mark.root

ROUTES = 20000
SHORT = 0.01  # seconds: far below what a dump or a batch of ROUTES takes


@pytest.fixture
def big_table(netns: NetNS) -> NetNS:
    """A namespace whose main table needs many dump datagrams: 20 000 /32 routes via the underlay."""
    lines = (f"route add {_dst(i).network_address}/32 via 198.18.0.254" for i in range(ROUTES))
    netns.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n")
    return netns


def _dst(i: int) -> IPv4Network:
    return IPv4Network(f"100.{i >> 16 & 0xFF}.{i >> 8 & 0xFF}.{i & 0xFF}/32")


class StallsAfterFirstDatagram:
    """A socket that delivers one datagram, then times out on every receive, as SO_RCVTIMEO would."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads = 0

    def recv_into(self, buf: bytearray, *args: int) -> int:
        self.reads += 1
        if self.reads > 1:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return self.sock.recv_into(buf, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_a_dump_abandoned_midway_blocks_every_later_dump_on_its_socket(big_table: NetNS) -> None:
    with Netlink(big_table.name) as nl:
        nl._sock.send(wire.message(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, 4242,
                                   wire_routes.dump_body(socket.AF_INET, 254)))
        nl._sock.recv(1 << 16)  # the first part only; the kernel holds the rest for this socket
        with pytest.raises(NetlinkError) as info:
            nl.links()
    assert info.value.errno == errno.EBUSY


def test_a_timeout_midway_through_a_dump_leaves_a_working_socket(big_table: NetNS) -> None:
    with Netlink(big_table.name) as nl:
        stalled = StallsAfterFirstDatagram(nl._sock)
        nl._sock = stalled  # type: ignore[assignment]
        with pytest.raises(NetlinkError) as info:
            nl.routes()
        assert (info.value.errno, info.value.op) == (errno.ETIMEDOUT, "route show")
        assert stalled.reads == 2 and stalled.sock.fileno() == -1
        assert len(nl.routes()) == ROUTES + 1  # and the /24 of the underlay address
        assert "eth0" in {link.name for link in nl.links()}


def test_the_timeout_bounds_each_reply_so_a_dump_or_batch_longer_than_it_completes(big_table: NetNS) -> None:
    timeouts = sum(metrics.NETLINK_TIMEOUTS.labels(kind).value for kind in ("dump", "batch"))
    with Netlink(big_table.name, timeout=SHORT) as nl:
        started = time.monotonic()
        assert len(nl.routes()) == ROUTES + 1
        dumped = time.monotonic()
        gateway = IPv4Address("198.18.0.254")
        assert not any(nl.apply([RouteDelete(_dst(i), gateway) for i in range(ROUTES)]))
        applied = time.monotonic()
        assert len(nl.routes()) == 1
    assert dumped - started > SHORT and applied - dumped > SHORT, "each took longer than one reply may"
    assert sum(metrics.NETLINK_TIMEOUTS.labels(kind).value for kind in ("dump", "batch")) == timeouts
