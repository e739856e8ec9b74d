"""Capped exponential back-off, the one retry pacing used everywhere in flanneld.

Every loop that retries something outside our control (etcd, the kernel, a full subnet range) paces itself
with this, so that a persistent failure costs a log line every few seconds rather than a busy loop.
"""

from __future__ import annotations

import asyncio
import random

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

    async def sleep(self) -> None:
        """Wait the current delay (less up to ``JITTER`` of it), then double the next one."""
        await asyncio.sleep(self.advance() * (1 - random.uniform(0, JITTER)))
