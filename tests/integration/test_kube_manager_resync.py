"""``KubeSubnetManager.watch_leases`` when watches end, break or fall behind: resume, re-list, back off, scale."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from flannel.backoff import Backoff
from flannel.errors import FlannelError
from flannel.kube.client import KubeClient
from flannel.subnet import kube_manager
from flannel.subnet.manager import WatchResult
from tests.integration.test_kube_manager import client_fixture, wait_until  # noqa: F401
from tests.integration.test_kube_manager_watch import (
    add_peer,
    next_result,
    own_node_fixture,  # noqa: F401
    snapshot_set,
    started,
    watching,
)
from tests.kube_fake import FakeKubeApi
from tests.kube_fake.fixtures import fake_api_fixture  # noqa: F401


@pytest.mark.usefixtures("own_node")
async def test_a_dropped_watch_resumes_from_its_version_without_listing_again(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    a = add_peer(fake_api, "node-a", "10.244.1.0/24", "198.18.0.11")
    async with watching(await started(client, tmp_path)) as watch:
        assert snapshot_set(await next_result(watch)) == {a}
        await wait_until(lambda: fake_api.open_watches == 1)
        lists, watches = fake_api.request_count("list", "nodes"), fake_api.request_count("watch", "nodes")
        assert fake_api.drop_watches() == 1
        b = add_peer(fake_api, "node-b", "10.244.2.0/24", "198.18.0.12")  # happens while no watch is open
        assert await next_result(watch) == WatchResult(events=((True, b),))
        fake_api.delete_node("node-a")
        assert await next_result(watch) == WatchResult(events=((False, a),))
        assert fake_api.request_count("list", "nodes") == lists
        assert fake_api.request_count("watch", "nodes") == watches + 1


@pytest.mark.usefixtures("own_node")
async def test_every_watch_leases_call_starts_with_a_snapshot(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    a = add_peer(fake_api, "node-a", "10.244.1.0/24", "198.18.0.11")
    manager = await started(client, tmp_path)
    async with watching(manager) as watch:
        assert snapshot_set(await next_result(watch)) == {a}
        await wait_until(lambda: fake_api.open_watches == 1)
    b = add_peer(fake_api, "node-b", "10.244.2.0/24", "198.18.0.12")
    async with watching(manager) as watch:
        assert snapshot_set(await next_result(watch)) == {a, b}
    assert fake_api.request_count("list", "nodes") == 2


@pytest.mark.usefixtures("own_node")
async def test_a_watch_that_times_out_is_renewed_without_listing_again(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    a = add_peer(fake_api, "node-a", "10.244.1.0/24", "198.18.0.11")
    async with watching(await started(client, tmp_path, watch_timeout=1)) as watch:
        assert snapshot_set(await next_result(watch)) == {a}
        await wait_until(lambda: fake_api.request_count("watch", "nodes") >= 2)  # the first one ran its course
        b = add_peer(fake_api, "node-b", "10.244.2.0/24", "198.18.0.12")
        assert await next_result(watch) == WatchResult(events=((True, b),))
        assert fake_api.request_count("list", "nodes") == 1


@pytest.mark.usefixtures("own_node")
async def test_a_watch_from_a_compacted_version_lists_again_and_sends_a_snapshot(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    a = add_peer(fake_api, "node-a", "10.244.1.0/24", "198.18.0.11")
    b = add_peer(fake_api, "node-b", "10.244.2.0/24", "198.18.0.12")
    async with watching(await started(client, tmp_path)) as watch:
        assert snapshot_set(await next_result(watch)) == {a, b}
        await wait_until(lambda: fake_api.open_watches == 1)
        lists = fake_api.request_count("list", "nodes")
        assert fake_api.drop_watches() == 1
        # While no watch is open: changes, then the history with them is compacted away.
        c = add_peer(fake_api, "node-c", "10.244.3.0/24", "198.18.0.13")
        fake_api.delete_node("node-b")
        fake_api.compact()
        assert snapshot_set(await next_result(watch)) == {a, c}
        assert fake_api.request_count("list", "nodes") == lists + 1
        d = add_peer(fake_api, "node-d", "10.244.4.0/24", "198.18.0.14")  # and it watches on from the new list
        assert await next_result(watch) == WatchResult(events=((True, d),))


@pytest.mark.usefixtures("own_node")
async def test_a_watch_whose_version_is_too_old_lists_again(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    a = add_peer(fake_api, "node-a", "10.244.1.0/24", "198.18.0.11")
    async with watching(await started(client, tmp_path)) as watch:
        first = await next_result(watch)
        assert snapshot_set(first) == {a}
        await wait_until(lambda: fake_api.open_watches == 1)
        # The cluster's version moves on through other objects (a pod), then the history is compacted: the
        # version the manager holds is now too old even though no node changed.
        fake_api.create_pod("default", "web-0", "node-a")
        fake_api.compact()
        fake_api.drop_watches()
        again = await next_result(watch)
        assert snapshot_set(again) == {a}
        assert fake_api.request_count("list", "nodes") == 2
        # The unchanged node's lease is the object listed first, not an equal copy (one lease a peer; issue #16).
        assert first.snapshot is not None and again.snapshot is not None
        assert again.snapshot[0] is first.snapshot[0]


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The manager's back-off, 100 times faster, recording each delay it waits."""
    recorded: list[float] = []

    class FastBackoff(Backoff):
        def __init__(self, initial: float, cap: float) -> None:
            super().__init__(initial / 100, cap / 100)

        def advance(self) -> float:
            delay = super().advance()
            recorded.append(delay)
            return delay

    monkeypatch.setattr(kube_manager, "Backoff", FastBackoff)
    return recorded


@pytest.mark.usefixtures("own_node")
async def test_failing_rewatches_are_retried_with_back_off_and_recover(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path, delays: list[float]) -> None:
    a = add_peer(fake_api, "node-a", "10.244.1.0/24", "198.18.0.11")
    async with watching(await started(client, tmp_path)) as watch:
        assert snapshot_set(await next_result(watch)) == {a}
        await wait_until(lambda: fake_api.open_watches == 1)
        lists, watches = fake_api.request_count("list", "nodes"), fake_api.request_count("watch", "nodes")
        fake_api.fail_next(3, 503)
        fake_api.drop_watches()
        b = add_peer(fake_api, "node-b", "10.244.2.0/24", "198.18.0.12")
        assert await next_result(watch) == WatchResult(events=((True, b),))
        assert fake_api.request_count("watch", "nodes") == watches + 4  # three refused, the fourth served
        assert fake_api.request_count("list", "nodes") == lists
        failures = delays[-3:]
        assert len(delays) >= 3 and failures == [failures[0], 2 * failures[0], 4 * failures[0]], delays
        # After recovering, a new failure starts from the initial delay again.
        await wait_until(lambda: fake_api.open_watches == 1)
        fake_api.drop_watches()
        c = add_peer(fake_api, "node-c", "10.244.3.0/24", "198.18.0.13")
        assert await next_result(watch) == WatchResult(events=((True, c),))
        assert delays[-1] == delays[0] == kube_manager.RETRY_INITIAL / 100


@pytest.mark.usefixtures("own_node")
async def test_a_queue_depth_of_one_still_delivers_every_event_in_order(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    async with watching(await started(client, tmp_path, queue_depth=1)) as watch:
        assert snapshot_set(await next_result(watch)) == set()
        await wait_until(lambda: fake_api.open_watches == 1)
        expected = [add_peer(fake_api, f"node-{i:02d}", f"10.244.{i + 1}.0/24", f"198.18.0.{i + 1}")
                    for i in range(40)]
        got = [await next_result(watch) for _ in expected]
        assert got == [WatchResult(events=((True, lease),)) for lease in expected]


async def test_a_large_cluster_is_listed_in_pages(fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_node("self", pod_cidr="10.244.0.0/24")
    fake_api.add_nodes(100, prefix="plain-")  # kubelet-only nodes: not flannel-managed
    expected = set()
    for i in range(1, 1201):
        cidr = f"10.{244 + i // 256}.{i % 256}.0/24"
        expected.add(add_peer(fake_api, f"node-{i:05d}", cidr, f"198.18.{i // 256}.{i % 256}"))
    async with watching(await started(client, tmp_path)) as watch:
        snapshot = await next_result(watch, timeout=60)
    assert snapshot.snapshot is not None and len(snapshot.snapshot) == 1200
    assert set(snapshot.snapshot) == expected
    assert fake_api.request_count("list", "nodes") > 1


@pytest.mark.usefixtures("own_node")
async def test_cancelling_the_consumer_leaves_no_task_behind(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    manager = await started(client, tmp_path)

    async def consume() -> None:
        async with watching(manager) as watch:
            async for _ in watch:
                pass

    def queue_waits() -> list[asyncio.Task[Any]]:
        """Tasks waiting on a queue other than the fake server's own watch queues."""
        waits = []
        for task in asyncio.all_tasks():
            frame = getattr(task.get_coro(), "cr_frame", None)
            queue = frame.f_locals.get("self") if frame is not None else None
            if isinstance(queue, asyncio.Queue) and queue not in fake_queues:
                waits.append(task)
        return waits

    consumer = asyncio.create_task(consume())
    await wait_until(lambda: fake_api.open_watches == 1)
    fake_queues = {watcher.queue for watcher in fake_api.store.watchers}
    await wait_until(lambda: len(queue_waits()) == 1)  # the consumer waits for the manager's next result
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await asyncio.sleep(0)
    assert queue_waits() == []
    assert [t for t in asyncio.all_tasks() if t.get_name() == "kube-node-watch"] == []


@pytest.mark.usefixtures("own_node", "delays")
async def test_a_first_list_that_never_completes_ends_the_watch(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_manager, "SYNC_DEADLINE", 0.0)  # instead of 10 minutes
    manager = await started(client, tmp_path)
    fake_api.fail_next(1, 503)
    async with watching(manager) as watch:
        with pytest.raises(FlannelError, match="CONT_WHEN_CACHE_NOT_READY") as err:
            await next_result(watch)
    assert "the node list did not complete within 0s" in str(err.value)
    assert "503 ServiceUnavailable" in str(err.value)


@pytest.mark.usefixtures("own_node", "delays")
async def test_cont_when_cache_not_ready_keeps_listing_until_it_succeeds(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_manager, "SYNC_DEADLINE", 0.0)
    a = add_peer(fake_api, "node-a", "10.244.1.0/24", "198.18.0.11")
    manager = await started(client, tmp_path, cont_when_cache_not_ready=True)
    fake_api.fail_next(3, 503)
    async with watching(manager) as watch:
        assert snapshot_set(await next_result(watch)) == {a}
    assert fake_api.request_count("list", "nodes") == 4
