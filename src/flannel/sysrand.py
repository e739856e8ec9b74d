"""Random numbers from the system's source (``os.urandom``), for the few places flanneld needs chance.

flanneld spreads its retries (back-off jitter) and picks a free subnet at random, as upstream does. Neither
needs a seeded or fast generator, and the ``random`` module costs 0.15 MiB of resident memory to import
(``_random``, ``_sha512`` and its own code; issue #16): these few lines do both jobs without it. Tests that
want a fixed sequence pass a ``random.Random`` where a ``Chooser`` is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol, TypeVar

T = TypeVar("T")


class Chooser(Protocol):
    """What subnet allocation needs from a random source: ``random.Random`` has it too."""

    def choice(self, seq: Sequence[T]) -> T:
        """One element of ``seq``, each as likely."""
        ...


def unit() -> float:
    """A number in [0, 1), in steps of 2**-56."""
    return int.from_bytes(os.urandom(7), "big") / (1 << 56)


def below(n: int) -> int:
    """A whole number in [0, n), each as likely (draws again rather than bias towards small numbers)."""
    if n <= 0:
        raise ValueError("below() needs a positive bound")
    bits = n.bit_length()
    nbytes = (bits + 7) // 8
    while True:
        value = int.from_bytes(os.urandom(nbytes), "big") >> (nbytes * 8 - bits)
        if value < n:
            return value


class SystemChooser:
    """A ``Chooser`` drawing from ``os.urandom``."""

    def choice(self, seq: Sequence[T]) -> T:
        if not seq:
            raise IndexError("cannot choose from an empty sequence")
        return seq[below(len(seq))]
