"""Running subsystems as guarded asyncio tasks, crash-only.

Each subsystem (lease watch and programming, lease renewal, ...) is one task. When any of them ends — by an
error or by returning when it should run for ever — the others are cancelled with a time limit and the
process exits non-zero so that the supervisor restarts it. A signal ends everything cleanly with status 0.
The kernel data plane is never torn down on the way out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)

CANCEL_TIMEOUT = 5.0


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM set ``stop``; after the first, the default action returns (a second one kills)."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        log.info("received signal %s, shutting down", signal.Signals(signum).name)
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(s)
        stop.set()

    for s in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(s, on_signal, s)


async def cancel_all(tasks: set[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for them, at most ``CANCEL_TIMEOUT`` seconds."""
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=CANCEL_TIMEOUT)


async def supervise(subsystems: dict[str, Coroutine[Any, Any, Any]], stop: asyncio.Event) -> int:
    """Run subsystems until a stop signal (→ 0) or until one of them ends (→ 1, logged)."""
    tasks = {asyncio.create_task(coro, name=name): name for name, coro in subsystems.items()}
    stopper = asyncio.create_task(stop.wait(), name="signals")
    done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
    await cancel_all(set(tasks) | {stopper})
    if stopper in done:
        return 0
    for t in done:
        name = tasks[t]
        exc = t.exception() if not t.cancelled() else None
        if exc is not None:
            log.error("subsystem %s failed: %s", name, exc, exc_info=exc)
        else:
            log.error("subsystem %s ended unexpectedly", name)
    return 1


async def until_stopped(coro: Coroutine[Any, Any, Any], stop: asyncio.Event) -> tuple[bool, Any]:
    """Await ``coro`` unless ``stop`` fires first; returns ``(stopped, result)``."""
    task = asyncio.ensure_future(coro)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopper.cancel()
        return False, task.result()
    await cancel_all({task})
    return True, None


def notify_systemd(state: str = "READY=1") -> None:
    """Tell systemd we are ready when run as a ``Type=notify`` unit; failures are only logged."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    addr = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.send(state.encode())
    except OSError as exc:
        log.warning("failed to notify systemd: %s", exc)


