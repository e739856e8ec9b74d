"""The reconcile loop's failure handling: logged and retried, and a failure that persists makes the node unready."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Iterator

import pytest

from flannel.backend.reconcile_loop import ReconcileLoop
from flannel.netlink import NetlinkError
from flannel.readiness import READINESS


@pytest.fixture(autouse=True)
def started() -> Iterator[None]:
    READINESS.reset()
    READINESS.mark_started()
    yield
    READINESS.reset()


def test_one_failed_round_is_a_hiccup_two_in_a_row_make_the_node_unready_until_one_succeeds(
        caplog: pytest.LogCaptureFixture) -> None:
    fail = True

    def reconcile() -> None:
        if fail:
            raise NetlinkError(errno.ENODEV, "link add flannel.1", "No such device")

    loop = ReconcileLoop(reconcile, interval=2)
    loop.reconcile_once()
    assert READINESS.ready, "one failure alone"
    loop.reconcile_once()
    assert not READINESS.ready
    assert "kernel: reconcile failed 2 times in a row: link add flannel.1" in READINESS.explain()
    for _ in range(10):
        loop.reconcile_once()
    assert caplog.text.count("reconcile failed, retrying in 2s") == 1, "the same failure is logged once a minute"
    fail = False
    loop.reconcile_once()
    assert READINESS.ready


async def test_a_coroutine_reconcile_is_awaited_and_its_failures_count_the_same() -> None:
    from flannel.errors import FlannelError

    calls: list[str] = []
    fail = True

    async def reconcile() -> int:
        calls.append("ran")
        if fail:
            raise FlannelError("load-conn x: charon at unix:///var/run/charon.vici not reachable")
        return 1

    loop = ReconcileLoop(reconcile, interval=2)
    await loop.areconcile_once()
    await loop.areconcile_once()
    assert calls == ["ran", "ran"], "awaited, not merely called"
    assert "kernel: reconcile failed 2 times in a row: load-conn x" in READINESS.explain()
    fail = False
    await loop.areconcile_once()
    assert READINESS.ready


async def test_a_stepped_reconcile_lets_other_tasks_run_between_its_steps_and_a_failing_step_fails_the_round() -> None:
    trace: list[str] = []
    fail = False

    def steps() -> Iterator[None]:
        for table in ("neigh", "fdb", "route"):
            yield
            trace.append(table)
            if fail and table == "fdb":
                raise NetlinkError(errno.EBUSY, "dump fdb", "busy")

    async def events() -> None:
        for _ in range(200):
            trace.append("event")
            await asyncio.sleep(0.0005)

    loop = ReconcileLoop(lambda: None, interval=3600, steps=steps)
    runner = asyncio.create_task(loop.run())
    other = asyncio.create_task(events())
    loop.kick()
    await asyncio.sleep(0.05)
    tables = [t for t in trace if t != "event"]
    assert tables == ["neigh", "fdb", "route"]
    first, last = trace.index("neigh"), trace.index("route")
    assert "event" in trace[first:last], f"no event ran between the steps: {trace}"
    fail = True
    for _ in range(2):
        loop.kick()
        await asyncio.sleep(0.05)
    assert not READINESS.ready and "dump fdb" in READINESS.explain()
    runner.cancel()
    other.cancel()
    await asyncio.gather(runner, other, return_exceptions=True)
