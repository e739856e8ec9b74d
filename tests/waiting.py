"""Waiting on an observable outcome in tests, instead of sleeping a fixed time and hoping.

``wait_until`` polls a condition (a route is in the kernel, a log line was written, a counter moved) and
returns as soon as it holds; it fails the test with ``what`` once ``timeout`` passes. The timeout is a bound
for a slow, shared CI machine, not a duration any test depends on. ``wait_until_sync`` is the same for
tests that are not coroutines (it blocks the thread, so never call it from inside an event loop), and
``holds_within`` is the polling under it, for callers that want the answer rather than a failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_until(cond: Callable[[], object], what: str = "", timeout: float = 10, every: float = 0.02) -> None:
    """Return once ``cond()`` is true; ``AssertionError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what or cond}")
        await asyncio.sleep(every)


def holds_within(cond: Callable[[], object], timeout: float = 10, every: float = 0.05) -> bool:
    """Poll ``cond()`` until it is true (``True``) or ``timeout`` passes (then its last answer, as a bool)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return bool(cond())
        time.sleep(every)
    return True


def wait_until_sync(cond: Callable[[], object], what: str = "", timeout: float = 10, every: float = 0.05) -> None:
    """``wait_until`` for a test that is not a coroutine: blocks until ``cond()`` is true."""
    if not holds_within(cond, timeout, every):
        raise AssertionError(f"not within {timeout:g}s: {what or cond}")
