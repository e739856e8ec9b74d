"""The tencent-vpc backend, with the real SDK (tencentcloud-sdk-python-common's CommonClient) against the strict
fake of the VPC API (tests/cloud_fakes/tencent.py) and a stand-in metadata service, both on the loopback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

pytest.importorskip("tencentcloud.common.common_client", reason="the tencent extra is not installed (pip install "
                    "'flannel[tencent]')")

from flannel.backend import cloud_metadata, cloud_route
from flannel.backend.cloud_route import (
    CloudAnswerError,
    CloudAuthError,
    CloudNotFoundError,
    MetadataError,
)
from flannel.errors import ConfigError
from flannel.readiness import READINESS
from tests.cloud_fakes.harness import SUBNET, register, running, until
from tests.cloud_fakes.metadata import Metadata
from tests.cloud_fakes.server import FakeServer
from tests.cloud_fakes.tencent import Route, TencentVPC, metadata_paths

KEY_ID, KEY_SECRET = "AKIDflannel0test", "s3cr3t-tencent-key"
ME, OTHER = "172.16.0.11", "172.16.0.12"
BACKEND = {"Type": "tencent-vpc", "RouteCheckInterval": 1}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[TencentVPC]:
    vpc = TencentVPC({KEY_ID: KEY_SECRET})
    vpc.add_table("vpc-flannel1", "rtb-flannel1")
    vpc.cvm_ips.update({ME, OTHER})
    api = FakeServer(vpc, "127.0.0.1")
    meta = FakeServer(Metadata(metadata_paths("ap-guangzhou", "52:54:00:aa:bb:01", "vpc-flannel1")), "127.0.0.1")
    monkeypatch.setenv("FLANNEL_TENCENT_VPC_ENDPOINT", api.url)
    monkeypatch.setenv("FLANNEL_TENCENT_METADATA_URL", f"{meta.url}/latest/meta-data")
    monkeypatch.setenv("ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("ACCESS_KEY_SECRET", KEY_SECRET)
    monkeypatch.setattr(cloud_route, "RETRY_START", 0.05)
    monkeypatch.setattr(cloud_metadata, "ATTEMPTS", 2)
    READINESS.reset()
    READINESS.mark_started()
    try:
        yield vpc
    finally:
        api.close()
        meta.close()
        READINESS.reset()


def own(vpc: TencentVPC) -> list[Route]:
    return [r for r in vpc.user_routes() if r.destination == SUBNET]


async def test_route_to_this_cvm_is_created_and_lease_has_public_ip_only(fake: TencentVPC) -> None:
    network, sm = await register(BACKEND, ME)
    assert [(r.gateway_type, r.gateway_id, r.enabled) for r in own(fake)] == [("NORMAL_CVM", ME, True)]
    assert sm.attrs[0].to_json() == '{"PublicIP":"172.16.0.11","PublicIPv6":null}'
    assert network.mtu == 1500


async def test_a_right_route_is_kept_not_recreated(fake: TencentVPC) -> None:
    await register(BACKEND, ME)
    before = own(fake)[0].route_id
    fake.calls.clear()
    await register(BACKEND, ME)
    assert fake.calls == ["DescribeRouteTables"]
    assert own(fake)[0].route_id == before


async def test_a_disabled_route_is_deleted_and_created_again(fake: TencentVPC) -> None:
    await register(BACKEND, ME)
    own(fake)[0].enabled = False
    fake.calls.clear()
    await register(BACKEND, ME)
    assert fake.calls == ["DescribeRouteTables", "DeleteRoutes", "CreateRoutes"]
    assert [r.enabled for r in own(fake)] == [True]


async def test_a_route_to_another_cvm_is_named_in_the_log_and_replaced(fake: TencentVPC,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    await register(BACKEND, OTHER)
    with caplog.at_level(logging.WARNING):
        await register(BACKEND, ME)
    assert [r.gateway_id for r in own(fake)] == [ME]
    assert f"points at NORMAL_CVM {OTHER}, not at this node ({ME})" in caplog.text


async def test_config_keys_win_over_the_environment_and_a_wrong_secret_names_its_source(fake: TencentVPC) -> None:
    with pytest.raises(CloudAuthError) as err:
        await register({**BACKEND, "AccessKeyID": KEY_ID, "AccessKeySecret": "wrong"}, ME)
    text = str(err.value)
    assert "AuthFailure.SignatureFailure" in text and "Backend.AccessKeyID/Backend.AccessKeySecret" in text
    assert "wrong" not in text and KEY_SECRET not in text


async def test_an_unknown_key_id_from_the_environment_is_an_auth_error(fake: TencentVPC,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCESS_KEY_ID", "AKIDnobody")
    with pytest.raises(CloudAuthError, match=r"AuthFailure\.SecretIdNotFound.*environment variables ACCESS_KEY_ID"):
        await register(BACKEND, ME)


async def test_missing_credentials_are_a_config_error(fake: TencentVPC, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACCESS_KEY_SECRET")
    with pytest.raises(ConfigError, match="ACCESS_KEY_ID and ACCESS_KEY_SECRET must be provided") as err:
        await register(BACKEND, ME)
    assert err.value.field == "Backend.AccessKeyID"


async def test_a_vpc_without_route_table_is_a_clear_error(fake: TencentVPC) -> None:
    fake.tables.clear()
    with pytest.raises(CloudNotFoundError, match="no route table for vpc-flannel1"):
        await register(BACKEND, ME)


async def test_unreachable_metadata_fails_after_bounded_retries_naming_the_url(
        fake: TencentVPC, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLANNEL_TENCENT_METADATA_URL", "http://127.0.0.1:9/latest/meta-data")
    with pytest.raises(MetadataError, match=r"http://127.0.0.1:9/latest/meta-data/placement/region .*2 attempt"):
        await register(BACKEND, ME)


async def test_an_answer_that_is_not_the_apis_is_a_clear_error(fake: TencentVPC) -> None:
    fake.faults.append(("DescribeRouteTables", "garbage"))
    with pytest.raises(CloudAnswerError, match="DescribeRouteTables"):
        await register(BACKEND, ME)


async def test_throttling_and_5xx_are_retried(fake: TencentVPC) -> None:
    fake.faults += [("DescribeRouteTables", "RequestLimitExceeded"), ("DescribeRouteTables", 503),
                    ("CreateRoutes", "InternalError")]
    network, _ = await register(BACKEND, ME)
    assert [r.gateway_id for r in own(fake)] == [ME]
    assert not network.pending


async def test_a_full_table_is_reported_and_the_route_added_once_an_entry_is_freed(
        fake: TencentVPC, caplog: pytest.LogCaptureFixture) -> None:
    fake.limit = 3
    table = fake.tables["rtb-flannel1"]
    table.routes += [Route(f"10.9.{i}.0/24", "NORMAL_CVM", OTHER, 9000 + i) for i in range(3)]
    with caplog.at_level(logging.WARNING):
        network, _ = await register(BACKEND, ME)
    assert network.pending and not own(fake)
    assert "LimitExceeded" in READINESS.explain()
    assert "holds 3 of its 50 entries" not in caplog.text  # 3 of 50 is far from full
    async with running(network):
        table.routes.pop()
        assert await until(lambda: bool(own(fake)))
        assert await until(lambda: READINESS.ready)


async def test_a_nearly_full_table_is_reported_before_it_is_full(fake: TencentVPC,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    table = fake.tables["rtb-flannel1"]
    table.routes += [Route(f"10.9.{i}.0/24", "NORMAL_CVM", OTHER, 9000 + i) for i in range(40)]
    with caplog.at_level(logging.WARNING):
        await register(BACKEND, ME)
    assert "holds 41 of its 50 entries (9 left)" in caplog.text


async def test_a_deleted_route_is_restored_by_the_periodic_check(fake: TencentVPC,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    network, _ = await register(BACKEND, ME)
    table = fake.tables["rtb-flannel1"]
    async with running(network):
        table.routes = [r for r in table.routes if r.destination != SUBNET]
        assert await until(lambda: bool(own(fake)))
        assert await until(lambda: "was missing or wrong, repaired" in caplog.text)
