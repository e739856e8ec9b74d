"""The fake itself, spoken to with ``http.client`` (not our client): it refuses what kube-apiserver refuses and
frames answers as kube-apiserver does, so that passing against it means something."""

from __future__ import annotations

import asyncio
import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.kube_fake import FakeKubeApi
from tests.kube_fake.fixtures import fake_api_fixture  # noqa: F401

SMP = "application/strategic-merge-patch+json"


def _call(url: str, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


async def call(api: FakeKubeApi, method: str, path: str, body: Any = None,
               content_type: str | None = None) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": content_type} if content_type else {}
    status, hdrs, raw = await asyncio.to_thread(_call, api.url, method, path, body, headers)
    return status, hdrs, json.loads(raw) if hdrs.get("content-type") == "application/json" else raw


def assert_status(obj: dict[str, Any], code: int, reason: str) -> None:
    assert obj["kind"] == "Status" and obj["apiVersion"] == "v1" and obj["status"] == "Failure"
    assert (obj["code"], obj["reason"]) == (code, reason)
    assert obj["message"]


@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain", "application/json-patch+json"])
async def test_patch_without_a_supported_patch_content_type_is_415(fake_api: FakeKubeApi,
                                                                   content_type: str | None) -> None:
    fake_api.create_node("n")
    status, _, body = await call(fake_api, "PATCH", "/api/v1/nodes/n/status", {"metadata": {}}, content_type)
    assert status == 415
    assert_status(body, 415, "UnsupportedMediaType")


async def test_patch_of_the_main_resource_ignores_status(fake_api: FakeKubeApi) -> None:
    before = fake_api.create_node("n")
    patch = {"metadata": {"labels": {"l": "v"}}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    status, _, body = await call(fake_api, "PATCH", "/api/v1/nodes/n", patch, SMP)
    assert status == 200
    assert body["status"] == before["status"]
    assert body["metadata"]["labels"]["l"] == "v"


async def test_patch_of_the_status_subresource_ignores_spec(fake_api: FakeKubeApi) -> None:
    before = fake_api.create_node("n")
    status, _, body = await call(fake_api, "PATCH", "/api/v1/nodes/n/status", {"spec": {"podCIDR": "1.0.0.0/8"}}, SMP)
    assert status == 200
    assert body == before  # nothing changed, so not even the resourceVersion moved


async def test_unknown_path_is_404_status(fake_api: FakeKubeApi) -> None:
    for path in ("/api/v1/widgets", "/apis/apps/v1/deployments", "/api/v1/nodes/a/b/c"):
        status, _, body = await call(fake_api, "GET", path)
        assert status == 404
        assert_status(body, 404, "NotFound")
        assert body["message"] == "the server could not find the requested resource"


async def test_invalid_json_is_400_status(fake_api: FakeKubeApi) -> None:
    fake_api.create_node("n")
    status, _, body = await call(fake_api, "PATCH", "/api/v1/nodes/n/status", b"{not json", SMP)
    assert status == 400
    assert_status(body, 400, "BadRequest")
    status, _, body = await call(fake_api, "POST", "/api/v1/nodes", b"[", "application/json")
    assert_status(body, 400, "BadRequest")


async def test_list_item_without_its_merge_key_is_400(fake_api: FakeKubeApi) -> None:
    fake_api.create_node("n")
    patch = {"status": {"conditions": [{"status": "False"}]}}
    status, _, body = await call(fake_api, "PATCH", "/api/v1/nodes/n/status", patch, SMP)
    assert status == 400 and "merge key" in body["message"]


async def test_name_in_body_must_match_the_url(fake_api: FakeKubeApi) -> None:
    fake_api.create_node("n")
    status, _, body = await call(fake_api, "PATCH", "/api/v1/nodes/n", {"metadata": {"name": "m"}}, SMP)
    assert status == 400 and "does not match the name on the URL" in body["message"]


async def test_delete_of_the_status_subresource_is_405(fake_api: FakeKubeApi) -> None:
    fake_api.create_node("n")
    status, _, body = await call(fake_api, "DELETE", "/api/v1/nodes/n/status")
    assert status == 405
    assert_status(body, 405, "MethodNotAllowed")


async def test_create_and_delete_nodes_over_the_api(fake_api: FakeKubeApi) -> None:
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "made"}, "spec": {"podCIDR": "10.1.0.0/24"}}
    status, _, body = await call(fake_api, "POST", "/api/v1/nodes", node, "application/json")
    assert status == 201 and body["metadata"]["uid"] and body["metadata"]["resourceVersion"]
    status, _, body = await call(fake_api, "POST", "/api/v1/nodes", node, "application/json")
    assert status == 409
    assert_status(body, 409, "AlreadyExists")
    status, _, body = await call(fake_api, "DELETE", "/api/v1/nodes/made")
    assert status == 200 and body["status"] == "Success"
    status, _, body = await call(fake_api, "GET", "/api/v1/nodes/made")
    assert_status(body, 404, "NotFound")


async def test_put_with_a_stale_resource_version_is_409(fake_api: FakeKubeApi) -> None:
    node = fake_api.create_node("n")
    fake_api.set_pod_cidrs("n", ["10.9.0.0/24"])
    status, _, body = await call(fake_api, "PUT", "/api/v1/nodes/n", node, "application/json")
    assert status == 409
    assert_status(body, 409, "Conflict")


async def test_watch_from_a_compacted_version_is_an_expired_error_event(fake_api: FakeKubeApi) -> None:
    fake_api.create_node("a")
    fake_api.compact()
    status, headers, event = await call(fake_api, "GET", "/api/v1/nodes?watch=true&resourceVersion=1")
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert event["type"] == "ERROR"
    assert_status(event["object"], 410, "Expired")
    assert event["object"]["message"].startswith("too old resource version: 1 (")


async def test_large_answers_are_chunked_and_small_ones_have_a_length(fake_api: FakeKubeApi) -> None:
    fake_api.add_nodes(3)
    _, small, _ = await call(fake_api, "GET", "/api/v1/nodes/nope")
    assert "content-length" in small and "transfer-encoding" not in small
    _, large, body = await call(fake_api, "GET", "/api/v1/nodes")
    assert large["transfer-encoding"] == "chunked"
    assert [n["metadata"]["name"] for n in body["items"]] == ["node-00000", "node-00001", "node-00002"]
    assert "kind" not in body["items"][0]  # list items carry no kind, as in a real NodeList


async def test_node_objects_are_realistically_sized(fake_api: FakeKubeApi) -> None:
    fake_api.add_nodes(1)
    _, _, body = await call(fake_api, "GET", "/api/v1/nodes/node-00000")
    size = len(json.dumps(body))
    assert 3000 <= size <= 5500, size
    assert {a["type"] for a in body["status"]["addresses"]} == {"InternalIP", "Hostname"}


async def test_missing_bearer_token_is_401_status() -> None:
    async with FakeKubeApi(token="secret") as api:
        status, _, body = await call(api, "GET", "/api/v1/nodes")
    assert status == 401
    assert_status(body, 401, "Unauthorized")
    assert api.request_count("list", "nodes") == 1


async def test_strategic_patch_directives_from_client_go_are_understood(fake_api: FakeKubeApi) -> None:
    fake_api.create_node("n")
    patch = {"status": {"$setElementOrder/conditions": [{"type": "Ready"}, {"type": "PIDPressure"}],
                        "conditions": [{"type": "MemoryPressure", "$patch": "delete"},
                                       {"type": "DiskPressure", "$patch": "delete"}]}}
    status, _, body = await call(fake_api, "PATCH", "/api/v1/nodes/n/status", patch, SMP)
    assert status == 200
    assert [c["type"] for c in body["status"]["conditions"]] == ["PIDPressure", "Ready"]
    status, _, body = await call(fake_api, "PATCH", "/api/v1/nodes/n/status", {"status": {"$bogus": 1}}, SMP)
    assert status == 400


async def test_pod_cidrs_can_be_set_once_and_never_changed(fake_api: FakeKubeApi) -> None:
    fake_api.create_node("n", pod_cidr="")
    patch = {"spec": {"podCIDRs": ["10.244.0.0/24", "fd00:10:244::/64"]}}
    _, _, body = await call(fake_api, "PATCH", "/api/v1/nodes/n", patch, SMP)
    assert body["spec"]["podCIDRs"] == ["10.244.0.0/24", "fd00:10:244::/64"]
    # kube-apiserver's ValidateNodeUpdate: only a deleted and re-created node gets other pod CIDRs.
    status, _, body = await call(fake_api, "PATCH", "/api/v1/nodes/n", {"spec": {"podCIDRs": ["10.9.0.0/24"]}},
                                 "application/merge-patch+json")
    assert status == 422
    assert_status(body, 422, "Invalid")
    assert body["message"] == ('Node "n" is invalid: spec.podCIDRs: Forbidden: node updates may not change podCIDR '
                               'except from "" to valid')
    assert fake_api.store.nodes["n"]["spec"]["podCIDRs"] == ["10.244.0.0/24", "fd00:10:244::/64"]
