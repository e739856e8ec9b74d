"""The reconcile loop's failure handling: logged and retried, and a failure that persists makes the node unready."""

from __future__ import annotations

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
