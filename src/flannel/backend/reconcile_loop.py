"""When a network compares the kernel with the leases: every ``--reconcile-interval``, and at once when kicked.

Every backend that programs the kernel (vxlan, host-gw, ipip, udp) repairs drift the same way, so the loop
is written once: a periodic ``reconcile()``, an early one when something is known to be wrong (its device
was deleted, or the external interface went down, came back or got its address back: seen on the link
monitor; or the udp forwarder's descriptor failed), and a failure that is logged and retried next round
rather than restarting the daemon over a kernel hiccup.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable, Collection, Iterator

from flannel.backoff import RepeatLimiter, repeats
from flannel.errors import FlannelError
from flannel.netlink import LinkEvent, LinkMonitor, NetlinkError, link_events
from flannel.readiness import KERNEL, READINESS

log = logging.getLogger(__name__)

UNREADY_AFTER = 2
"""Failed rounds in a row that make the node unready."""
STEP_PAUSE = 0.001
"""Seconds a stepped reconcile pauses between steps: long enough for a lease event that is already waiting on
a socket to travel through the watch and the backend to the kernel (several loop iterations)."""


class ReconcileLoop:
    """Runs ``reconcile`` every ``interval`` seconds, and as soon as ``kick()`` is called."""

    def __init__(self, reconcile: Callable[[], object], interval: float,
                 steps: Callable[[], Iterator[None]] | None = None) -> None:
        """``steps``, when given, is the same reconcile as a generator that yields between its parts (kernel
        tables): the loop then lets other tasks (lease events) run at each yield instead of stalling them for
        the whole round. ``reconcile`` may also be a coroutine function (ipsec's talks to charon)."""
        self._reconcile = reconcile
        self._steps = steps
        self.interval = interval
        self._kick = asyncio.Event()
        self._failures = 0
        self._quiet = RepeatLimiter(60.0)  # the same failure every round is a line a minute

    def kick(self) -> None:
        """Reconcile now instead of at the end of the interval."""
        self._kick.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._kick.wait()
            self._kick.clear()
            if self._steps is None:
                await self.areconcile_once()
                continue
            try:
                for _ in self._steps():
                    await asyncio.sleep(STEP_PAUSE)
            except (NetlinkError, OSError, FlannelError) as exc:
                self._failed(exc)
            else:
                self._succeeded()

    async def areconcile_once(self) -> None:
        """``reconcile_once`` for a reconcile that may be a coroutine function (ipsec's talks to charon)."""
        try:
            result = self._reconcile()
            if inspect.isawaitable(result):
                await result
        except (NetlinkError, OSError, FlannelError) as exc:
            self._failed(exc)
        else:
            self._succeeded()

    def reconcile_once(self) -> None:
        """One reconcile; a failure is logged and left to the next round.

        Failing rounds in a row make the node unready (condition ``kernel``): its routes may not match the
        leases, and ``/readyz`` should say so rather than answer 200 while, say, the vxlan device cannot be
        made. One failure alone does not: the next round usually repairs a hiccup.
        """
        try:
            self._reconcile()
        except (NetlinkError, OSError, FlannelError) as exc:
            self._failed(exc)
        else:
            self._succeeded()

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        held = self._quiet.check(str(exc))
        if held is not None:
            log.warning("reconcile failed, retrying in %gs: %s%s", self.interval, exc, repeats(held))
        if self._failures >= UNREADY_AFTER:
            READINESS.problem(KERNEL, f"reconcile failed {self._failures} times in a row: {exc}")

    def _succeeded(self) -> None:
        if self._failures:
            self._failures = 0
            self._quiet.reset()
            READINESS.resolved(KERNEL)

    async def kick_on_link_delete(self, names: Callable[[], Collection[str]]) -> None:
        """Kick whenever a device whose name is in ``names()`` is deleted (``ip link del``, a module unload)."""
        await self.kick_on_link_events(lambda ev: ev.kind == "del" and ev.name in names())

    async def kick_on_link_events(self, wanted: Callable[[LinkEvent], bool], addresses: bool = False) -> None:
        """Kick whenever a link (or, with ``addresses``, address) event satisfies ``wanted``.

        Events lost to a receive-buffer overrun kick too: one of them may have been the one that mattered.
        """
        with LinkMonitor(addresses=addresses) as monitor:
            overruns = 0
            async for events in link_events(monitor):
                if any(wanted(ev) for ev in events) or monitor.overruns != overruns:
                    overruns = monitor.overruns
                    self.kick()
