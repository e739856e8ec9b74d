"""Waiting on an observable outcome in async tests, instead of sleeping a fixed time and hoping.

``wait_until`` polls a condition (a route is in the kernel, a log line was written, a counter moved) and
returns as soon as it holds; it fails the test with ``what`` once ``timeout`` passes. The timeout is a bound
for a slow, shared CI machine, not a duration any test depends on.
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
