"""The netlink request timeout, proven without a wedged kernel: a "kernel" that never answers.

``nsenter.route_socket`` is swapped for a factory that first hands out one end of a socketpair (whose other
end swallows every request and never replies), then real netlink sockets. Needs no root: an unprivileged
process may open NETLINK_ROUTE sockets and list its own namespace's links.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address

import pytest

from flannel import metrics
from flannel.backend.reconcile_loop import ReconcileLoop
from flannel.netlink import LinkMonitor, NeighReplace, Netlink, NetlinkError, nsenter
from flannel.netlink.transport import REQUEST_TIMEOUT

TIMEOUT = 0.2


class SilentKernel:
    """``route_socket`` stand-in: the first ``silent`` sockets lead nowhere, later ones to the kernel."""

    def __init__(self, silent: int = 1) -> None:
        self.silent = silent
        self.handed: list[socket.socket] = []
        self._peers: list[socket.socket] = []
        self._real = nsenter.route_socket

    def __call__(self, netns: str | None, groups: int = 0) -> socket.socket:
        if self.silent:
            self.silent -= 1
            ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._peers.append(peer)  # kept open, so that sends succeed, and never read
            sock = ours
        else:
            sock = self._real(netns, groups)
        self.handed.append(sock)
        return sock

    def close(self) -> None:
        for peer in self._peers:
            peer.close()


@pytest.fixture
def silent_kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[SilentKernel]:
    fake = SilentKernel()
    monkeypatch.setattr(nsenter, "route_socket", fake)
    yield fake
    fake.close()


def _rcvtimeo(sock: socket.socket) -> float:
    sec, usec = struct.unpack("@ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize("@ll")))
    return sec + usec / 1e6


def test_request_sockets_wait_at_most_the_request_timeout_and_the_link_monitor_never_waits() -> None:
    with Netlink() as nl, LinkMonitor() as monitor:
        assert _rcvtimeo(nl._sock) == REQUEST_TIMEOUT == 1.0  # what a lost reply may cost the event loop
        assert _rcvtimeo(monitor._sock) == 0.0 and monitor._sock.gettimeout() == 0.0  # non-blocking instead
    with Netlink(timeout=0.25) as nl:
        assert _rcvtimeo(nl._sock) == pytest.approx(0.25, abs=0.011)  # the kernel counts in jiffies
    with Netlink(timeout=1e-9) as nl:  # would round to zero, which means "wait forever"
        assert 0 < _rcvtimeo(nl._sock) < 0.011
    with pytest.raises(ValueError):
        Netlink(timeout=0)


@pytest.mark.parametrize(
    ("call", "op", "exchange"),
    [
        (lambda nl: nl.links(), "link show", "dump"),
        (lambda nl: nl.link_by_name("lo"), "link show lo", "request"),
        (lambda nl: nl.route_match("10.0.0.1"), "route get fibmatch", "get"),
        (lambda nl: nl.apply([NeighReplace(1, IPv4Address("10.0.0.1"), "0a:00:00:00:00:01")]), "batch of 1 changes",
         "batch"),
    ],
    ids=["dump", "request", "get", "batch"],
)
def test_a_request_the_kernel_never_answers_fails_with_etimedout_and_is_counted(
        silent_kernel: SilentKernel, call: Callable[[Netlink], object], op: str, exchange: str) -> None:
    timeouts = metrics.NETLINK_TIMEOUTS.labels(exchange).value
    nl = Netlink(timeout=TIMEOUT)
    try:
        started = time.monotonic()
        with pytest.raises(NetlinkError) as info:
            call(nl)
        elapsed = time.monotonic() - started
    finally:
        nl.close()
    err = info.value
    assert (err.errno, err.op) == (errno.ETIMEDOUT, op)
    assert str(err) == f"{op}: Connection timed out (no answer from the kernel within {TIMEOUT:g} s)"
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 2
    assert metrics.NETLINK_TIMEOUTS.labels(exchange).value == timeouts + 1


def test_after_a_timeout_the_socket_is_replaced_and_the_next_request_is_answered(silent_kernel: SilentKernel) -> None:
    with Netlink(timeout=TIMEOUT) as nl:
        stuck = nl._sock
        with pytest.raises(NetlinkError):
            nl.links()
        assert stuck.fileno() == -1, "the socket that timed out is closed, with whatever it still held"
        assert nl._sock is silent_kernel.handed[-1] and nl._sock is not stuck
        assert _rcvtimeo(nl._sock) == pytest.approx(TIMEOUT, abs=0.011)  # configured like the original
        assert "lo" in {link.name for link in nl.links()}
        lo = nl.link_by_name("lo")
        assert lo is not None and lo.index == 1


async def test_a_withheld_reply_holds_the_event_loop_for_one_timeout_then_renewal_and_health_run_on(
        silent_kernel: SilentKernel, caplog: pytest.LogCaptureFixture) -> None:
    """The daemon's way of calling netlink: synchronously, from a reconcile on the event loop. A ticking task
    stands for lease renewal, the watch and /healthz; it is held for one reply timeout, not longer, and the
    next reconcile is answered on the replacement socket."""
    ticks: list[float] = []
    ticked = asyncio.Event()

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            ticked.set()
            await asyncio.sleep(0.005)  # the ticker's period, not a wait: what is measured is the gap between ticks

    async def next_tick() -> None:
        ticked.clear()
        await ticked.wait()

    outcomes: list[int] = []
    reconciled = asyncio.Event()
    with Netlink(timeout=TIMEOUT) as nl:
        def reconcile() -> None:
            try:
                outcomes.append(len(nl.links()))
            finally:
                reconciled.set()

        loop = ReconcileLoop(reconcile, interval=3600)
        tasks = [asyncio.create_task(tick()), asyncio.create_task(loop.run())]
        try:
            await next_tick()
            with caplog.at_level(logging.WARNING, "flannel.backend.reconcile_loop"):
                loop.kick()
                await reconciled.wait()
            assert not outcomes and "reconcile failed" in caplog.text and "Connection timed out" in caplog.text
            for _ in range(3):  # the ticker runs on
                await next_tick()
            held = max(b - a for a, b in itertools.pairwise(ticks))
            assert TIMEOUT * 0.9 <= held < TIMEOUT + 2, "the loop was held for the reply timeout, not longer"
            reconciled.clear()
            loop.kick()
            await reconciled.wait()
            assert outcomes and outcomes[0] >= 1  # the fresh socket answers: at least "lo"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
