"""The one retry policy (spec §10.11): a few attempts with exponential back-off plus random jitter.

Upstream wraps vxlan's neighbour, FDB and route calls in retry-go's defaults (10 attempts, 100 ms base delay
doubled each time, plus up to 100 ms of jitter, each retry logged). Ours does not retry those: they are sent
in batches, and a failed operation is repaired by the periodic reconcile (``--reconcile-interval``), which
compares the whole kernel state with the leases instead of trusting one call. This helper is for actions
that have no reconcile behind them, such as the extension backend's per-lease commands.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

ATTEMPTS = 10
"""retry-go's default number of attempts (the first call included)."""
BASE_DELAY = 0.1
"""Seconds before the first retry; doubled for each later one."""
MAX_JITTER = 0.1
"""Up to this many seconds of random delay are added to each back-off."""


def delay_for(retry_number: int, base: float = BASE_DELAY, jitter: float = MAX_JITTER,
              rand: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait before retry ``retry_number`` (1 for the first retry): ``base·2ⁿ⁻¹ + U(0, jitter)``."""
    return base * (1 << (retry_number - 1)) + (rand(0.0, jitter) if jitter > 0 else 0.0)


async def retry(fn: Callable[[], Awaitable[T]], attempts: int = ATTEMPTS, base: float = BASE_DELAY,
                jitter: float = MAX_JITTER, what: str = "operation",
                retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
                sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> T:
    """Await ``fn()`` until it succeeds, at most ``attempts`` times; the last failure is re-raised.

    Only exceptions of ``retry_on`` are retried (cancellation never is). Each retry is logged as a warning
    naming ``what``, the attempt, the error and the delay.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            return await fn()
        except retry_on as exc:
            if attempt == attempts:
                raise
            wait = delay_for(attempt, base, jitter)
            log.warning("%s failed (attempt %d of %d): %s; retrying in %.2fs", what, attempt, attempts, exc, wait)
            await sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises
