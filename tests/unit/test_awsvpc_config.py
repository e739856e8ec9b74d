"""aws-vpc's ``Backend`` section, read through the registry as the daemon reads it (boto3 is loaded, no call made)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from flannel.backend.awsvpc_config import (
    DEFAULT_CHECK_INTERVAL,
    DEFAULT_ROUTE_LIMIT,
    WRONG_ITEM,
    WRONG_TYPE,
    parse_awsvpc_config,
)
from flannel.backend.base import BackendContext, ExternalInterface
from flannel.backend.registry import create_backend
from flannel.config import parse_network_config
from flannel.errors import ConfigError
from flannel.lease import Lease
from tests.backend_harness import FakeSubnetManager

pytest.importorskip("boto3", reason="the aws extra is not installed (pip install 'flannel[aws]')")

EXT = ExternalInterface(name="eth0", index=2, mtu=9001, iface_addr=IPv4Address("198.18.0.11"), iface_v6_addr=None,
                        ext_addr=IPv4Address("198.18.0.11"), ext_v6_addr=None)


def build(backend: dict[str, Any], **top: Any) -> Any:
    config = parse_network_config(json.dumps({"Network": "10.244.0.0/16", **top, "Backend": backend}))
    sm = FakeSubnetManager(Lease(subnet=IPv4Network("10.244.7.0/24")))
    return create_backend(BackendContext(subnet_manager=sm, ext_iface=EXT), config)  # type: ignore[arg-type]


def test_absent_route_table_means_detect_and_the_defaults_apply() -> None:
    cfg = build({"Type": "aws-vpc"}).cfg
    assert (cfg.route_tables, cfg.route_limit, cfg.check_interval) == (None, DEFAULT_ROUTE_LIMIT,
                                                                       DEFAULT_CHECK_INTERVAL)


def test_a_string_is_one_table_and_a_list_is_several_once_each() -> None:
    assert build({"Type": "aws-vpc", "RouteTableID": "rtb-1"}).cfg.route_tables == ("rtb-1",)
    assert build({"Type": "AWS-VPC", "routetableid": ["rtb-1", "rtb-2", "rtb-1"]}).cfg.route_tables == (
        "rtb-1", "rtb-2")
    assert build({"Type": "aws-vpc", "RouteTableID": None}).cfg.route_tables is None


@pytest.mark.parametrize(("value", "message"), [
    (42, WRONG_TYPE), (True, WRONG_TYPE), ({"id": "rtb-1"}, WRONG_TYPE),
    (["rtb-1", 2], WRONG_ITEM), ([None], WRONG_ITEM),
])
def test_a_route_table_id_of_another_type_gets_upstreams_message_naming_the_key(value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build({"Type": "aws-vpc", "RouteTableID": value})
    assert str(err.value) == message and err.value.field == "Backend.RouteTableID"


@pytest.mark.parametrize("value", ["", [], ["rtb-1", ""]])
def test_an_empty_table_id_or_list_is_refused(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"Backend\.RouteTableID"):
        parse_awsvpc_config({"Type": "aws-vpc", "RouteTableID": value})


@pytest.mark.parametrize(("key", "value"), [("RouteLimit", 0), ("RouteLimit", "50"), ("RouteCheckInterval", 0.5),
                                            ("RouteCheckInterval", -1)])
def test_route_limit_and_check_interval_are_checked(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        parse_awsvpc_config({"Type": "aws-vpc", key: value})
    assert err.value.field == f"Backend.{key}"


def test_ipv6_is_refused_as_upstream_has_no_ipv6_route_for_aws() -> None:
    with pytest.raises(ConfigError) as err:
        build({"Type": "aws-vpc"}, EnableIPv6=True, IPv6Network="fd00:10::/56")
    assert err.value.field == "EnableIPv6"
