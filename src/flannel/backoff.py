"""Capped exponential back-off, the one retry pacing used everywhere in flanneld, and its log-line limiter.

Every loop that retries something outside our control (etcd, the kernel, a full subnet range) paces itself
with this, so that a persistent failure costs a log line every few seconds rather than a busy loop. A loop
that must keep a fixed period (the traffic-rule resync) or a failure that repeats per request (a full fd
table at accept) uses ``RepeatLimiter`` instead: one line per distinct message per interval, with a count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from flannel import sysrand

JITTER = 0.2
"""Each wait is shortened by up to this fraction at random, so that the nodes of a cluster that lost their
datastore together do not all come back at the same instant."""


class Backoff:
    """Doubling delay from ``initial`` up to ``cap``; ``reset()`` after a success."""

    def __init__(self, initial: float, cap: float) -> None:
        self._initial = initial
        self._cap = cap
        self._next = initial

    @property
    def next_delay(self) -> float:
        """The delay the next ``advance()`` or ``sleep()`` uses."""
        return self._next

    def reset(self) -> None:
        """Start again from the initial delay."""
        self._next = self._initial

    def advance(self) -> float:
        """Return the current delay and double the next one (up to the cap)."""
        delay, self._next = self._next, min(self._next * 2, self._cap)
        return delay

    def advance_jittered(self) -> float:
        """``advance()`` less up to ``JITTER`` of it, at random."""
        return self.advance() * (1 - JITTER * sysrand.unit())

    async def sleep(self) -> None:
        """Wait the current delay (less up to ``JITTER`` of it), then double the next one."""
        await asyncio.sleep(self.advance_jittered())


class RepeatLimiter:
    """Lets the same message through once per ``interval`` seconds and counts the repeats held back meanwhile.

    ``check(message)`` returns ``None`` to hold the line back, or the number of repeats held back since the
    message was last let through (0 the first time), which the caller adds to the line. At most ``max_keys``
    distinct messages are remembered; the oldest is forgotten first, so varying texts cannot grow memory.
    """

    def __init__(self, interval: float, *, max_keys: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._max_keys = max_keys
        self._clock = clock
        self._seen: dict[str, list[float]] = {}  # message -> [last let through, repeats held back]

    def check(self, message: str) -> int | None:
        now = self._clock()
        entry = self._seen.get(message)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        held = int(entry[1]) if entry is not None else 0
        self._seen.pop(message, None)
        self._seen[message] = [now, 0]
        while len(self._seen) > self._max_keys:
            del self._seen[next(iter(self._seen))]
        return held

    def pending(self) -> int:
        """Repeats held back and not yet reported (they are reported when their message next comes through)."""
        return sum(int(held) for _, held in self._seen.values())

    def reset(self) -> None:
        """Forget every message: the next occurrence of each is let through (after a recovery)."""
        self._seen.clear()


def repeats(held: int) -> str:
    """The suffix for a line let through by ``RepeatLimiter``: empty, or how often it was held back."""
    return f" (repeated {held} times since last logged)" if held else ""
