"""The ali-vpc backend, with the real SDK (aliyun-python-sdk-core/-vpc) against the strict fake of the VPC API
(tests/cloud_fakes/aliyun.py) and a stand-in ECS metadata service, both on the loopback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

pytest.importorskip("aliyunsdkvpc", reason="the ali extra is not installed (pip install 'flannel[ali]')")

from flannel.backend import cloud_metadata, cloud_route
from flannel.backend.cloud_route import CloudAnswerError, CloudAuthError, CloudNotFoundError, MetadataError
from flannel.errors import ConfigError
from flannel.readiness import READINESS
from tests.cloud_fakes.aliyun import AliyunVPC, Entry, metadata_paths
from tests.cloud_fakes.harness import SUBNET, close_all, register, running, until
from tests.cloud_fakes.metadata import Metadata
from tests.cloud_fakes.server import FakeServer

KEY_ID, KEY_SECRET = "LTAIflanneltest", "ali-s3cr3t"
ME, OTHER = "i-flannel01", "i-flannel02"
TABLE = "vtb-flannel1"
BACKEND = {"Type": "ali-vpc", "RouteCheckInterval": 1}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[AliyunVPC]:
    vpc = AliyunVPC("cn-hangzhou", {KEY_ID: KEY_SECRET})
    vpc.add_vpc("vpc-flannel1", "vrt-flannel1", TABLE)
    vpc.instances.update({ME: "172.16.0.11", OTHER: "172.16.0.12"})
    api = FakeServer(vpc, "127.0.0.1")
    meta = FakeServer(Metadata(metadata_paths("cn-hangzhou", ME, "vpc-flannel1")), "127.0.0.1")
    monkeypatch.setenv("FLANNEL_ALIYUN_VPC_ENDPOINT", api.url)
    monkeypatch.setenv("FLANNEL_ALIYUN_METADATA_URL", f"{meta.url}/latest/meta-data")
    monkeypatch.setenv("ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("ACCESS_KEY_SECRET", KEY_SECRET)
    monkeypatch.setattr(cloud_route, "RETRY_START", 0.05)
    monkeypatch.setattr(cloud_metadata, "ATTEMPTS", 2)
    READINESS.reset()
    READINESS.mark_started()
    try:
        yield vpc
    finally:
        close_all()
        api.close()
        meta.close()
        READINESS.reset()


def own(vpc: AliyunVPC) -> list[tuple[str, str]]:
    return [(e.next_hop, e.status) for e in vpc.entries(TABLE) if e.cidr == SUBNET]


async def test_entry_to_this_instance_is_created_and_waited_for(fake: AliyunVPC) -> None:
    network, sm = await register(BACKEND, "172.16.0.11")
    assert own(fake) == [(ME, "Available")]
    after = fake.calls[fake.calls.index("CreateRouteEntry") + 1:]
    assert after == ["DescribeRouteEntryList"] * 2  # Pending, then Available: waited for it
    assert sm.attrs[0].to_json() == '{"PublicIP":"172.16.0.11","PublicIPv6":null}'
    assert network.mtu == 1500


async def test_a_right_entry_is_kept_not_recreated(fake: AliyunVPC) -> None:
    await register(BACKEND, "172.16.0.11")
    entry_id = fake.entries(TABLE)[0].entry_id
    fake.calls.clear()
    await register(BACKEND, "172.16.0.11")
    assert "CreateRouteEntry" not in fake.calls and "DeleteRouteEntry" not in fake.calls
    assert fake.entries(TABLE)[0].entry_id == entry_id


async def test_old_entries_to_this_instance_inside_the_network_go_others_stay(fake: AliyunVPC) -> None:
    fake.entries(TABLE).extend([Entry("rte-old", "10.244.9.0/24", ME), Entry("rte-dnat", "0.0.0.0/0", ME),
                                Entry("rte-ops", "192.168.5.0/24", ME), Entry("rte-peer", "10.244.8.0/24", OTHER)])
    await register(BACKEND, "172.16.0.11")
    assert sorted(e.entry_id for e in fake.entries(TABLE) if e.cidr != SUBNET) == ["rte-dnat", "rte-ops", "rte-peer"]


async def test_an_entry_to_another_instance_is_named_in_the_log_and_replaced(
        fake: AliyunVPC, caplog: pytest.LogCaptureFixture) -> None:
    fake.entries(TABLE).append(Entry("rte-stale", SUBNET, OTHER))
    with caplog.at_level(logging.WARNING):
        await register(BACKEND, "172.16.0.11")
    assert own(fake) == [(ME, "Available")]
    assert f"points at {OTHER}, not at this instance ({ME})" in caplog.text


async def test_a_wrong_secret_is_an_auth_error_naming_its_source(fake: AliyunVPC) -> None:
    with pytest.raises(CloudAuthError) as err:
        await register({**BACKEND, "AccessKeyID": KEY_ID, "AccessKeySecret": "nope"}, "172.16.0.11")
    text = str(err.value)
    assert "InvalidAccessKeySecret" in text and "Backend.AccessKeyID/Backend.AccessKeySecret" in text
    assert "nope" not in str(err.value)


async def test_an_unknown_key_id_is_an_auth_error(fake: AliyunVPC, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCESS_KEY_ID", "LTAInobody")
    with pytest.raises(CloudAuthError, match=r"InvalidAccessKeyId\.NotFound.*ACCESS_KEY_ID/ACCESS_KEY_SECRET"):
        await register(BACKEND, "172.16.0.11")


async def test_missing_credentials_are_a_config_error(fake: AliyunVPC, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACCESS_KEY_ID")
    with pytest.raises(ConfigError, match="ACCESS_KEY_ID and ACCESS_KEY_SECRET must be provided"):
        await register(BACKEND, "172.16.0.11")


async def test_a_route_table_that_does_not_exist_is_a_clear_error(fake: AliyunVPC) -> None:
    fake.vrouters["vrt-flannel1"] = ["vtb-gone"]
    with pytest.raises(CloudNotFoundError, match=r"InvalidRouteTableId\.NotFound.*vtb-gone"):
        await register(BACKEND, "172.16.0.11")


async def test_unreachable_metadata_fails_after_bounded_retries_naming_the_url(
        fake: AliyunVPC, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLANNEL_ALIYUN_METADATA_URL", "http://127.0.0.1:9/latest/meta-data")
    with pytest.raises(MetadataError, match=r"http://127\.0\.0\.1:9/latest/meta-data/region-id"):
        await register(BACKEND, "172.16.0.11")


async def test_an_answer_that_is_not_the_apis_is_a_clear_error(fake: AliyunVPC) -> None:
    fake.faults.append(("DescribeVpcs", "garbage"))
    with pytest.raises(CloudAnswerError, match="DescribeVpcs"):
        await register(BACKEND, "172.16.0.11")


async def test_throttling_and_5xx_are_retried(fake: AliyunVPC) -> None:
    fake.faults += [("DescribeVpcs", (400, "Throttling.User")), ("DescribeRouteEntryList", (503, "ServiceUnavailable")),
                    ("CreateRouteEntry", (400, "OperationConflict"))]
    network, _ = await register(BACKEND, "172.16.0.11")
    assert own(fake) == [(ME, "Available")] and not network.pending


async def test_a_full_table_is_reported_and_the_entry_added_once_there_is_room(fake: AliyunVPC) -> None:
    fake.quota = 2
    fake.entries(TABLE).extend([Entry("rte-a", "10.9.1.0/24", OTHER), Entry("rte-b", "10.9.2.0/24", OTHER)])
    network, _ = await register(BACKEND, "172.16.0.11")
    assert network.pending and not own(fake)
    assert "QuotaExceeded" in READINESS.explain()
    async with running(network):
        fake.entries(TABLE).pop()
        assert await until(lambda: own(fake) == [(ME, "Available")])
        assert await until(lambda: READINESS.ready)


async def test_a_deleted_entry_is_restored_by_the_periodic_check(fake: AliyunVPC,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    network, _ = await register(BACKEND, "172.16.0.11")
    async with running(network):
        fake.tables[TABLE] = []
        assert await until(lambda: own(fake) == [(ME, "Available")])
        assert await until(lambda: "was missing or wrong, repaired" in caplog.text)
