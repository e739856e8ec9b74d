"""A hard time limit for one test or one Hypothesis example: the test fails when the limit passes.

pytest-timeout is not installed here, and a parser that loops or backtracks must fail its test, not hang the
run. ``time_limit`` arms ``ITIMER_REAL``; when it fires, ``TimeLimitExceeded`` is raised in the main thread
at the next bytecode. It derives from ``BaseException`` so that no ``except Exception`` in the code under
test can swallow it. A single C call (one regex match, one ``int()``) is not interrupted; it fails the test
as soon as it returns.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class TimeLimitExceeded(BaseException):
    """The code under test ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str = "the code under test") -> Iterator[None]:
    """Run the block with at most ``seconds`` of wall time; raise ``TimeLimitExceeded`` otherwise."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("time_limit needs the main thread (it uses SIGALRM)")

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeLimitExceeded(f"{what} took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
