"""A persistent failure costs one log line per distinct message per interval, with the count of the repeats, not
one line per attempt: ``RepeatLimiter`` and the traffic-rule keeper that uses it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from flannel.backoff import RepeatLimiter, repeats
from flannel.traffic.base import SyncResult, TrafficPlan
from flannel.traffic.keeper import TrafficKeeper


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_message_passes_once_per_interval_with_the_count_held_back() -> None:
    clock = Clock()
    limiter = RepeatLimiter(60, clock=clock)
    assert limiter.check("EMFILE") == 0
    assert [limiter.check("EMFILE") for _ in range(1000)] == [None] * 1000
    assert limiter.check("other") == 0  # distinct messages are limited apart
    assert limiter.pending() == 1000
    clock.now += 60
    assert limiter.check("EMFILE") == 1000 and repeats(1000) == " (repeated 1000 times since last logged)"
    assert limiter.check("EMFILE") is None and repeats(0) == ""


def test_memory_is_bounded_whatever_the_messages() -> None:
    limiter = RepeatLimiter(60, max_keys=8, clock=Clock())
    for i in range(10_000):
        assert limiter.check(f"error {i}") == 0
    assert len(limiter._seen) == 8


class FailingManager:
    """A firewall whose every resync fails the same way, until told otherwise."""

    mode = "iptables"

    def __init__(self) -> None:
        self.errors: tuple[str, ...] = ("FLANNEL-POSTRTG (nat, IPv4): iptables-restore: Too many open files",
                                        "FLANNEL-FWD (filter, IPv4): iptables-restore: Too many open files")

    async def setup(self, plan: TrafficPlan) -> SyncResult:
        return SyncResult(errors=self.errors)

    async def ensure(self) -> SyncResult:
        return SyncResult(errors=self.errors)

    async def remove_all(self) -> SyncResult:
        return SyncResult()


def test_thousands_of_identical_resync_errors_make_one_line_each_then_one_recovery_line(
        caplog: pytest.LogCaptureFixture) -> None:
    manager = FailingManager()
    keeper = TrafficKeeper(manager, FailingManager(), TrafficPlan(), 5)  # type: ignore[arg-type]
    keeper.error_log._clock = clock = Clock()  # type: ignore[assignment]

    async def scenario() -> None:
        await keeper.start()
        for _ in range(2000):
            await keeper.check()
        clock.now += 60
        await keeper.check()
        manager.errors = ()
        await keeper.check()

    with caplog.at_level(logging.INFO, logger="flannel.traffic.keeper"):
        asyncio.run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 4  # each distinct line: once at first, once after the interval with the count
    assert errors[0] == ("traffic rules: FLANNEL-POSTRTG (nat, IPv4): iptables-restore: Too many open files "
                         "(retrying in 5s)")
    assert errors[2].endswith("(retrying in 5s) (repeated 2000 times since last logged)")
    assert caplog.records[-1].getMessage() == "traffic rules: in place again"
    assert not keeper.failing and keeper.error_log.pending() == 0
