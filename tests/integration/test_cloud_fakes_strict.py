"""The cloud fakes are strict: a request that the real service would refuse is refused, in the provider's own
error shape. Raw HTTP here (no SDK), so nothing on the client side papers over a lax fake."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("cryptography", reason="the GCE fake verifies service-account JWTs with cryptography")

from tests.cloud_fakes.aliyun import AliyunVPC
from tests.cloud_fakes.gce import GCECompute, metadata_paths
from tests.cloud_fakes.metadata import Metadata
from tests.cloud_fakes.server import FakeServer, Handler
from tests.cloud_fakes.tencent import TencentVPC


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[FakeServer] = []

    def start(handler: Handler) -> str:
        servers.append(FakeServer(handler, "127.0.0.1"))
        return servers[-1].url

    yield start
    for server in servers:
        server.close()


def fetch(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
          method: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


def test_tencent_refuses_unsigned_unknown_and_wrong_version_requests(serve: Any) -> None:
    url = serve(TencentVPC({"AKID": "secret"}))
    base = {"Content-Type": "application/json", "X-TC-Version": "2017-03-12", "X-TC-Region": "ap-guangzhou"}
    cases = [({**base, "X-TC-Action": "DescribeRouteTables"}, "AuthFailure.SignatureFailure"),
             ({**base, "X-TC-Action": "RunInstances"}, "InvalidAction"),
             ({**base, "X-TC-Action": "DescribeRouteTables", "X-TC-Version": "2019-01-01"}, "NoSuchVersion")]
    for headers, code in cases:
        status, body = fetch(url + "/", b"{}", headers)
        assert status == 200 and body["Response"]["Error"]["Code"] == code, body
        assert "RequestId" in body["Response"]


def test_gce_refuses_missing_tokens_and_unknown_paths(serve: Any) -> None:
    fake = GCECompute("p1", {"ya29.good"})
    url = serve(fake)
    status, body = fetch(f"{url}/compute/v1/projects/p1/global/routes/x")
    assert status == 401 and body["error"]["errors"][0]["reason"] == "authError"
    auth = {"Authorization": "Bearer ya29.good"}
    status, body = fetch(f"{url}/compute/v1/projects/p1/global/firewalls", headers=auth)
    assert status == 400 and body["error"]["code"] == 400
    bad_route = json.dumps({"name": "Bad_Name", "destRange": "10.0.0.0/24", "network": "n", "nextHopInstance": "i"})
    status, body = fetch(f"{url}/compute/v1/projects/p1/global/routes", bad_route.encode(),
                         {"Authorization": "Bearer ya29.good", "Content-Type": "application/json"})
    assert status == 400 and "resource.name" in body["error"]["message"]


def test_gce_metadata_wants_its_header(serve: Any) -> None:
    url = serve(Metadata(metadata_paths("p1", "z1", "vm1", "default", "t"), {"Metadata-Flavor": "Google"}))
    assert fetch(f"{url}/computeMetadata/v1/project/project-id")[0] == 403
    assert fetch(f"{url}/computeMetadata/v1/project/project-id", headers={"Metadata-Flavor": "Google"}) == (200, "p1")


def test_aliyun_refuses_unsigned_and_unknown_requests(serve: Any) -> None:
    url = serve(AliyunVPC("cn-hangzhou", {"LTAI": "secret"}))
    common = ("Version=2016-04-28&Format=JSON&AccessKeyId=LTAI&SignatureMethod=HMAC-SHA1&SignatureVersion=1.0"
              "&SignatureNonce=1&Timestamp=2026-01-01T00%3A00%3A00Z&RegionId=cn-hangzhou")
    status, body = fetch(f"{url}/?Action=DescribeVpcs&{common}&Signature=AAAA")
    assert status == 400 and body["Code"] == "SignatureDoesNotMatch" and "RequestId" in body
    status, body = fetch(f"{url}/?Action=RunInstances&{common}&Signature=AAAA")
    assert status == 404 and body["Code"] == "InvalidAction.NotFound"
    status, body = fetch(f"{url}/?Action=DescribeVpcs&Version=2016-04-28&Format=JSON")
    assert status == 400 and body["Code"] == "MissingParameter"
