"""The real ``KubeClient`` against the fake API server over plain HTTP: reads, pages, watches, patches, errors."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from flannel.errors import DatastoreUnavailableError
from flannel.kube.client import KubeClient
from flannel.kube.config import KubeClientConfig
from flannel.kube.errors import ConflictError, GoneError, KubeUnavailableError, NotFoundError
from tests.kube_fake import FakeKubeApi
from tests.kube_fake.fixtures import fake_api_fixture  # noqa: F401

NETWORK_UNAVAILABLE = {
    "type": "NetworkUnavailable",
    "status": "False",
    "reason": "FlannelIsUp",
    "message": "Flannel is running on this node",
    "lastHeartbeatTime": "2024-01-01T00:00:00Z",
    "lastTransitionTime": "2024-01-01T00:00:00Z",
}


@pytest.fixture
async def client(fake_api: FakeKubeApi) -> Any:
    async with KubeClient(KubeClientConfig(server=fake_api.url), request_timeout=5) as c:
        yield c


async def collect(client: KubeClient, rv: str, count: int, timeout: int = 5) -> list[tuple[str, str, str]]:
    """The first ``count`` non-bookmark events after ``rv`` as (type, name, resourceVersion)."""
    seen: list[tuple[str, str, str]] = []
    async with asyncio.timeout(timeout + 5):
        async with contextlib.aclosing(client.watch_nodes(rv, timeout_seconds=timeout)) as events:
            async for kind, obj in events:
                if kind != "BOOKMARK":
                    seen.append((kind, obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))
                if len(seen) == count:
                    break
    return seen


async def test_get_node_returns_the_stored_node(fake_api: FakeKubeApi, client: KubeClient) -> None:
    created = fake_api.create_node("node-a")
    node = await client.get_node("node-a")
    assert node == created
    assert node["spec"]["podCIDR"] == "10.244.0.0/24"
    assert await client.get_node("node-a", resource_version="0") == created


async def test_missing_node_raises_not_found_naming_verb_path_and_message(client: KubeClient) -> None:
    with pytest.raises(NotFoundError) as err:
        await client.get_node("nope")
    assert err.value.status == 404
    assert str(err.value) == 'GET /api/v1/nodes/nope: 404 NotFound: nodes "nope" not found'


async def test_list_pages_1200_nodes_from_one_consistent_snapshot(fake_api: FakeKubeApi, client: KubeClient) -> None:
    fake_api.add_nodes(1200)
    listing = client.list_nodes(limit=500)
    sizes, names = [], []
    async for page in listing:
        sizes.append(len(page))
        names += [n["metadata"]["name"] for n in page]
        if len(sizes) == 1:  # changes after the first page must not leak into the later ones
            fake_api.create_node("zzz-late")
            fake_api.delete_node("node-01199")
    assert sizes == [500, 500, 200]
    assert names == sorted(f"node-{i:05d}" for i in range(1200))
    assert int(listing.resource_version) == int(fake_api.store.rv) - 2
    assert fake_api.request_count("list", "nodes") == 3


async def test_list_without_status_keeps_metadata_and_spec_and_drops_each_status(fake_api: FakeKubeApi,
                                                                                 client: KubeClient) -> None:
    fake_api.add_nodes(12)
    stored = {f"node-{i:05d}": await client.get_node(f"node-{i:05d}") for i in range(12)}
    listing = client.list_nodes(limit=5, without_status=True)
    nodes = [n async for page in listing for n in page]
    assert [n["metadata"]["name"] for n in nodes] == sorted(stored)
    for node in nodes:
        full = stored[node["metadata"]["name"]]
        assert "status" in full and "status" not in node  # a list's items carry no kind/apiVersion either
        assert (node["metadata"], node["spec"]) == (full["metadata"], full["spec"])
    assert listing.resource_version


async def test_list_continuation_expired_by_compaction_raises_gone(fake_api: FakeKubeApi, client: KubeClient) -> None:
    fake_api.add_nodes(20)
    listing = client.list_nodes(limit=10)
    await anext(listing)
    fake_api.create_node("newer")
    fake_api.compact()
    with pytest.raises(GoneError):
        await anext(listing)


async def test_watch_sees_added_modified_deleted_in_order(fake_api: FakeKubeApi, client: KubeClient) -> None:
    fake_api.create_node("before")
    rv = fake_api.store.rv
    fake_api.create_node("n1")
    fake_api.set_pod_cidrs("n1", ["10.244.9.0/24"])
    fake_api.delete_node("n1")
    fake_api.create_node("n2")
    events = await collect(client, str(rv), 4)
    assert [(kind, name) for kind, name, _ in events] == [
        ("ADDED", "n1"), ("MODIFIED", "n1"), ("DELETED", "n1"), ("ADDED", "n2")]
    versions = [int(v) for _, _, v in events]
    assert versions == sorted(versions) and versions[0] == rv + 1


async def test_watch_delivers_events_that_happen_while_it_is_open(fake_api: FakeKubeApi, client: KubeClient) -> None:
    rv = str(fake_api.store.rv)
    task = asyncio.create_task(collect(client, rv, 2))
    while fake_api.open_watches == 0:
        await asyncio.sleep(0.01)
    fake_api.create_node("live")
    await client.patch_node_status("live", {"metadata": {"annotations": {"x": "1"}}})
    assert [(k, n) for k, n, _ in await task] == [("ADDED", "live"), ("MODIFIED", "live")]


async def test_watch_from_a_compacted_version_raises_gone(fake_api: FakeKubeApi, client: KubeClient) -> None:
    rv = fake_api.store.rv
    fake_api.create_node("a")
    fake_api.create_node("b")
    fake_api.compact()
    with pytest.raises(GoneError) as err:
        await collect(client, str(rv), 1)
    assert err.value.reason == "Expired"
    assert f"too old resource version: {rv}" in str(err.value)


async def test_watch_ends_normally_when_the_server_times_it_out(fake_api: FakeKubeApi, client: KubeClient) -> None:
    kinds = []
    async with asyncio.timeout(10):
        async for kind, obj in client.watch_nodes(str(fake_api.store.rv), timeout_seconds=1):
            kinds.append(kind)
            assert obj["metadata"]["resourceVersion"] == str(fake_api.store.rv)
    assert set(kinds) <= {"BOOKMARK"} and len(kinds) >= 2  # bookmarks every 0.2 s, then a clean end


async def test_dropped_watch_raises_kube_unavailable(fake_api: FakeKubeApi, client: KubeClient) -> None:
    fake_api.create_node("a")

    async def drop_soon() -> None:
        while fake_api.open_watches == 0:
            await asyncio.sleep(0.01)
        assert fake_api.drop_watches() == 1

    dropper = asyncio.create_task(drop_soon())
    with pytest.raises(KubeUnavailableError, match="watch connection lost"):
        await collect(client, str(fake_api.store.rv), 1, timeout=30)
    await dropper


async def test_strategic_patch_of_network_unavailable_merges_by_type(fake_api: FakeKubeApi,
                                                                      client: KubeClient) -> None:
    fake_api.create_node("n")
    patch = {"status": {"conditions": [NETWORK_UNAVAILABLE]}}
    node = await client.patch_node_status("n", patch)
    types = [c["type"] for c in node["status"]["conditions"]]
    assert types == ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready", "NetworkUnavailable"]
    again = await client.patch_node_status("n", {"status": {"conditions": [{**NETWORK_UNAVAILABLE, "status": "True"}]}})
    conditions = {c["type"]: c for c in again["status"]["conditions"]}
    assert len(again["status"]["conditions"]) == 5
    assert conditions["NetworkUnavailable"]["status"] == "True"
    assert conditions["Ready"]["status"] == "True"
    assert await client.get_node("n") == again


async def test_merge_patch_replaces_the_whole_conditions_list(fake_api: FakeKubeApi, client: KubeClient) -> None:
    fake_api.create_node("n")
    node = await client.patch_node_status("n", {"status": {"conditions": [NETWORK_UNAVAILABLE]}}, patch_type="merge")
    assert [c["type"] for c in node["status"]["conditions"]] == ["NetworkUnavailable"]


async def test_annotations_patched_through_status_are_stored_and_spec_is_ignored(fake_api: FakeKubeApi,
                                                                                  client: KubeClient) -> None:
    fake_api.create_node("n")
    annotations = {"flannel.alpha.coreos.com/backend-type": "vxlan",
                   "flannel.alpha.coreos.com/kube-subnet-manager": "true"}
    patch = {"metadata": {"annotations": annotations}, "spec": {"podCIDR": "10.99.0.0/24", "unschedulable": True}}
    patched = await client.patch_node_status("n", patch)
    stored = await client.get_node("n")
    assert patched == stored
    assert annotations.items() <= stored["metadata"]["annotations"].items()
    assert "node.alpha.kubernetes.io/ttl" in stored["metadata"]["annotations"]  # merged, not replaced
    assert stored["spec"]["podCIDR"] == "10.244.0.0/24" and "unschedulable" not in stored["spec"]


async def test_unchanged_patch_does_not_bump_the_resource_version(fake_api: FakeKubeApi, client: KubeClient) -> None:
    fake_api.create_node("n")
    first = await client.patch_node_status("n", {"metadata": {"annotations": {"a": "1"}}})
    second = await client.patch_node_status("n", {"metadata": {"annotations": {"a": "1"}}})
    assert first["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]


async def test_stale_resource_version_in_a_patch_raises_conflict(fake_api: FakeKubeApi, client: KubeClient) -> None:
    old_rv = fake_api.create_node("n")["metadata"]["resourceVersion"]
    fake_api.set_pod_cidrs("n", ["10.244.7.0/24"])
    with pytest.raises(ConflictError, match="the object has been modified") as err:
        await client.patch_node_status("n", {"metadata": {"resourceVersion": old_rv, "annotations": {"a": "b"}}})
    assert str(err.value).startswith("PATCH /api/v1/nodes/n/status: 409 Conflict: ")
    current = fake_api.store.nodes["n"]["metadata"]["resourceVersion"]
    ok = await client.patch_node_status("n", {"metadata": {"resourceVersion": current, "annotations": {"a": "b"}}})
    assert ok["metadata"]["annotations"]["a"] == "b"


@pytest.mark.parametrize("code", [500, 503])
async def test_server_errors_raise_kube_unavailable(fake_api: FakeKubeApi, client: KubeClient, code: int) -> None:
    fake_api.create_node("n")
    fake_api.fail_next(1, code)
    with pytest.raises(KubeUnavailableError) as err:
        await client.get_node("n")
    assert err.value.status == code
    assert isinstance(err.value, DatastoreUnavailableError)
    assert (await client.get_node("n"))["metadata"]["name"] == "n"  # the failure was only the next request


async def test_unreachable_server_raises_kube_unavailable() -> None:
    async with KubeClient(KubeClientConfig(server="http://127.0.0.1:9"), request_timeout=5) as c:
        with pytest.raises(KubeUnavailableError, match=r"^GET /api/v1/nodes/x: ") as err:
            await c.get_node("x")
    assert err.value.status == 0


async def test_get_pod_gives_its_node_name(fake_api: FakeKubeApi, client: KubeClient) -> None:
    fake_api.create_pod("kube-flannel", "kube-flannel-ds-abcde", "node-7")
    pod = await client.get_pod("kube-flannel", "kube-flannel-ds-abcde")
    assert pod["spec"]["nodeName"] == "node-7"
    with pytest.raises(NotFoundError):
        await client.get_pod("kube-flannel", "other")


async def test_requests_reuse_one_keep_alive_connection(fake_api: FakeKubeApi, client: KubeClient) -> None:
    fake_api.add_nodes(30)
    for _ in range(3):
        async for _page in client.list_nodes(limit=7):
            pass
    for i in range(5):
        await client.get_node(f"node-{i:05d}")
    assert fake_api.request_count() == 20
    assert fake_api.connections_accepted == 1
