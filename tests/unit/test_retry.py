"""The shared retry helper (spec §10.11): attempts, exponential back-off with jitter, one log line per retry."""

from __future__ import annotations

import asyncio
import logging

import pytest

from flannel.retry import ATTEMPTS, BASE_DELAY, MAX_JITTER, delay_for, retry


class Flaky:
    def __init__(self, failures: int, exc: type[Exception] = OSError) -> None:
        self.failures = failures
        self.calls = 0
        self.exc = exc

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc(f"failure {self.calls}")
        return "ok"


def test_defaults_are_retry_gos() -> None:
    assert (ATTEMPTS, BASE_DELAY, MAX_JITTER) == (10, 0.1, 0.1)


def test_delays_double_and_add_bounded_jitter() -> None:
    assert [delay_for(n, rand=lambda a, b: 0.0) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.8]
    assert delay_for(1, rand=lambda a, b: b) == pytest.approx(0.2)
    assert all(0.4 <= delay_for(3) <= 0.5 for _ in range(100))


async def test_succeeds_after_failures_logging_each_retry(caplog: pytest.LogCaptureFixture) -> None:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    fn = Flaky(2)
    assert await retry(fn, what="route add 10.0.1.0/24", sleep=sleep) == "ok"
    assert fn.calls == 3 and len(slept) == 2 and 0.1 <= slept[0] <= 0.2 and 0.2 <= slept[1] <= 0.3
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines[0].startswith("route add 10.0.1.0/24 failed (attempt 1 of 10): failure 1; retrying in 0.")
    assert len(lines) == 2


async def test_gives_up_after_the_attempts_and_reraises_the_last_error() -> None:
    async def sleep(s: float) -> None:
        pass

    fn = Flaky(99)
    with pytest.raises(OSError, match="failure 3"):
        await retry(fn, attempts=3, sleep=sleep)
    assert fn.calls == 3


async def test_other_errors_and_cancellation_are_not_retried() -> None:
    fn = Flaky(1, exc=ValueError)
    with pytest.raises(ValueError):
        await retry(fn, retry_on=OSError)
    assert fn.calls == 1

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await retry(cancelled)


async def test_at_least_one_attempt() -> None:
    with pytest.raises(ValueError):
        await retry(Flaky(0), attempts=0)
