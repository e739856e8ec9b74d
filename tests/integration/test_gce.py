"""The gce backend, with the real SDK (google-api-python-client, google-auth) against the strict fake of the
Compute API (tests/cloud_fakes/gce.py) and a stand-in metadata server, both on the loopback.

Credentials here are a service account key file (GOOGLE_APPLICATION_CREDENTIALS, a key made by the test) whose
``token_uri`` names the fake's token endpoint: google-auth signs the JWT and fetches a real token over HTTP,
and the fake checks the signature. The end-to-end test uses the metadata server's token instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

pytest.importorskip("googleapiclient.discovery", reason="the gce extra is not installed (pip install 'flannel[gce]')")

from flannel.backend import cloud_metadata, cloud_route, gce
from flannel.backend.cloud_route import CloudAnswerError, CloudAuthError, CloudNotFoundError, MetadataError
from flannel.backoff import RepeatLimiter
from flannel.readiness import READINESS
from tests.cloud_fakes.gce import GCECompute, metadata_paths
from tests.cloud_fakes.harness import SUBNET, close_all, register, running, until
from tests.cloud_fakes.metadata import Metadata
from tests.cloud_fakes.server import FakeServer

PROJECT, ZONE, NET = "flannel-test", "europe-west1-b", "default"
ROUTE = "flannel-10-244-3-0-24"
ACCOUNT = f"flanneld@{PROJECT}.iam.gserviceaccount.com"
BACKEND = {"Type": "gce", "RouteCheckInterval": 1}


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: rsa.RSAPrivateKey) -> Iterator[GCECompute]:
    compute = GCECompute(PROJECT, set())
    compute.networks.add(NET)
    compute.instances.update({"node-1": (ZONE, "10.128.0.11"), "node-2": (ZONE, "10.128.0.12")})
    compute.service_accounts[ACCOUNT] = key.public_key()
    api = FakeServer(compute, "127.0.0.1")
    meta = Metadata(metadata_paths(PROJECT, ZONE, "node-1", NET, "unused"), {"Metadata-Flavor": "Google"})
    meta_server = FakeServer(meta, "127.0.0.1")
    creds = tmp_path / "adc.json"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    creds.write_text(json.dumps({"type": "service_account", "project_id": PROJECT, "private_key_id": "k1",
                                 "private_key": pem, "client_email": ACCOUNT, "client_id": "1",
                                 "token_uri": f"{api.url}/token"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{meta_server.port}")
    monkeypatch.setenv("FLANNEL_GCE_API_ENDPOINT", f"{api.url}/compute/v1/")
    monkeypatch.setattr(cloud_route, "RETRY_START", 0.05)
    monkeypatch.setattr(cloud_metadata, "ATTEMPTS", 2)
    READINESS.reset()
    READINESS.mark_started()
    try:
        yield compute
    finally:
        close_all()
        api.close()
        meta_server.close()
        READINESS.reset()


def test_route_names_are_upstreams() -> None:
    assert gce.route_name("10.244.3.0/24") == ROUTE


async def test_route_to_this_instance_is_inserted_through_an_operation(fake: GCECompute) -> None:
    network, sm = await register(BACKEND, "10.128.0.11")
    route = fake.routes[ROUTE]
    assert (route["destRange"], route["priority"], route["tags"]) == (SUBNET, 1000, [])
    assert route["nextHopInstance"] == fake.link("zones", ZONE, "instances", "node-1")
    assert route["network"] == fake.link("global", "networks", NET)
    assert fake.calls.count("GET operations") >= 2  # polled until DONE
    assert sm.attrs[0].to_json() == '{"PublicIP":"10.128.0.11","PublicIPv6":null}'
    assert network.mtu == 1500


async def test_a_right_route_is_kept_not_recreated(fake: GCECompute) -> None:
    await register(BACKEND, "10.128.0.11")
    route_id = fake.routes[ROUTE]["id"]
    fake.calls.clear()
    await register(BACKEND, "10.128.0.11")
    assert "POST routes" not in fake.calls and "DELETE routes" not in fake.calls
    assert fake.routes[ROUTE]["id"] == route_id


async def test_a_route_to_another_instance_is_named_in_the_log_and_replaced(
        fake: GCECompute, caplog: pytest.LogCaptureFixture) -> None:
    other = fake.link("zones", ZONE, "instances", "node-2")
    fake.routes[ROUTE] = {"name": ROUTE, "destRange": SUBNET, "nextHopInstance": other, "priority": 1000}
    with caplog.at_level(logging.WARNING):
        await register(BACKEND, "10.128.0.11")
    assert fake.routes[ROUTE]["nextHopInstance"].endswith("/instances/node-1")
    assert f"points at nextHopInstance {other}, not at this instance" in caplog.text


async def test_a_refused_key_names_the_credentials_file(fake: GCECompute) -> None:
    fake.service_accounts.clear()  # the account's key was deleted
    with pytest.raises(CloudAuthError, match=r"credentials file .*adc\.json \(GOOGLE_APPLICATION_CREDENTIALS\)"):
        await register(BACKEND, "10.128.0.11")


async def test_a_403_is_an_auth_error(fake: GCECompute) -> None:
    fake.faults.append(("GET networks", (403, "forbidden")))
    with pytest.raises(CloudAuthError, match=r"networks.get failed: HTTP 403.*GOOGLE_APPLICATION_CREDENTIALS"):
        await register(BACKEND, "10.128.0.11")


async def test_a_network_that_does_not_exist_is_a_clear_error(fake: GCECompute) -> None:
    fake.networks.clear()
    with pytest.raises(CloudNotFoundError, match=r"networks\.get failed: HTTP 404.*networks/default"):
        await register(BACKEND, "10.128.0.11")


async def test_unreachable_metadata_fails_after_bounded_retries_naming_the_url(
        fake: GCECompute, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    with pytest.raises(MetadataError, match=r"http://127.0.0.1:9/computeMetadata/v1/project/project-id"):
        await register(BACKEND, "10.128.0.11")


async def test_an_answer_that_is_not_the_apis_is_a_clear_error(fake: GCECompute) -> None:
    fake.faults.append(("GET routes", "garbage"))
    with pytest.raises(CloudAnswerError, match=r"routes\.get"):
        await register(BACKEND, "10.128.0.11")


async def test_rate_limits_and_5xx_are_retried(fake: GCECompute) -> None:
    # three failures: the start-up pass tries four times before leaving the route to the periodic check
    fake.faults += [("GET networks", 503), ("POST routes", (403, "rateLimitExceeded")), ("GET routes", 429)]
    network, _ = await register(BACKEND, "10.128.0.11")
    assert ROUTE in fake.routes and not network.pending


async def test_an_exceeded_quota_is_reported_and_the_route_added_once_there_is_room(fake: GCECompute) -> None:
    fake.route_quota = 2
    for n in (1, 2):
        fake.routes[f"other-{n}"] = {"name": f"other-{n}"}
    network, _ = await register(BACKEND, "10.128.0.11")
    assert network.pending and ROUTE not in fake.routes
    assert "QUOTA_EXCEEDED" in READINESS.explain()
    async with running(network):
        del fake.routes["other-1"]
        assert await until(lambda: ROUTE in fake.routes)
        assert await until(lambda: READINESS.ready)


async def test_a_nearly_exhausted_quota_is_reported(fake: GCECompute, caplog: pytest.LogCaptureFixture) -> None:
    fake.route_quota = 10
    for n in range(8):
        fake.routes[f"other-{n}"] = {"name": f"other-{n}"}
    with caplog.at_level(logging.WARNING):
        await register(BACKEND, "10.128.0.11")
    assert "holds 9 of its 10 entries (1 left)" in caplog.text


async def test_a_deleted_route_is_restored_by_the_periodic_check(fake: GCECompute,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    network, _ = await register(BACKEND, "10.128.0.11")
    async with running(network):
        del fake.routes[ROUTE]
        assert await until(lambda: ROUTE in fake.routes)
        assert await until(lambda: "was missing or wrong, repaired" in caplog.text)


async def test_stopping_the_daemon_stops_polling_an_operation(fake: GCECompute) -> None:
    network, _ = await register(BACKEND, "10.128.0.11")
    del fake.routes[ROUTE]
    fake.polls_until_done = 10**6  # an insert that never finishes
    finished = threading.Event()
    ensure = network.driver.ensure

    def tracked() -> Any:
        try:
            return ensure()
        finally:
            finished.set()

    network.driver.ensure = tracked
    fake.calls.clear()
    task = asyncio.create_task(cloud_route.ensure_once(network.driver, RepeatLimiter(60)))
    assert await until(lambda: "GET operations" in fake.calls)  # polling the insert
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await until(finished.is_set, timeout=5)  # the worker thread ended; asyncio.run would not wait on it
