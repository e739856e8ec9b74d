"""What one route table needs (``backend/awsvpc_routes.py``), from DescribeRouteTables answers as EC2 shapes them."""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Any

from flannel.backend.awsvpc_routes import OwnRoute, plan_table

OWN = IPv4Network("10.244.7.0/24")
NET = IPv4Network("10.244.0.0/16")
ENI = "eni-0own"
LOCAL = {"DestinationCidrBlock": "172.31.0.0/16", "GatewayId": "local", "Origin": "CreateRouteTable",
         "State": "active"}


def route(dst: str, eni: str = "eni-0other", state: str = "active", **extra: str) -> dict[str, str]:
    return {"DestinationCidrBlock": dst, "NetworkInterfaceId": eni, "Origin": "CreateRoute", "State": state,
            **extra}


def table(*routes: dict[str, Any]) -> dict[str, Any]:
    return {"RouteTableId": "rtb-1", "Routes": [LOCAL, *routes]}


def test_an_active_route_to_our_eni_is_left_alone() -> None:
    plan = plan_table(table(route(str(OWN), ENI)), OWN, ENI, NET, 50)
    assert plan.own is OwnRoute.OK and plan.blackholes == () and plan.counted == 1


def test_a_missing_route_is_created_and_counted() -> None:
    plan = plan_table(table(route("10.244.8.0/24")), OWN, ENI, NET, 50)
    assert plan.own is OwnRoute.MISSING and plan.counted == 2


def test_a_route_to_another_instance_is_wrong_and_names_where_it_pointed() -> None:
    plan = plan_table(table(route(str(OWN), "eni-0theirs", InstanceId="i-0theirs")), OWN, ENI, NET, 50)
    assert plan.own is OwnRoute.WRONG
    assert plan.found == "instance i-0theirs, ENI eni-0theirs, state active"


def test_our_own_route_in_blackhole_state_is_wrong_not_deleted() -> None:
    plan = plan_table(table(route(str(OWN), ENI, state="blackhole")), OWN, ENI, NET, 50)
    assert plan.own is OwnRoute.WRONG and plan.blackholes == ()


def test_only_blackholes_inside_the_network_are_cleaned() -> None:
    plan = plan_table(table(route("10.244.9.0/24", state="blackhole"), route("10.99.0.0/24", state="blackhole"),
                            route("10.244.10.0/24")), OWN, ENI, NET, 50)
    assert plan.blackholes == ("10.244.9.0/24",)
    assert plan.counted == 3  # 10.99 blackhole, 10.244.10 and our new route; the local route does not count


def test_propagated_and_local_routes_do_not_count_against_the_quota() -> None:
    propagated = {"DestinationCidrBlock": "192.168.0.0/16", "GatewayId": "vgw-1", "Origin": "EnableVgwRoutePropagation",
                  "State": "active"}
    assert plan_table(table(propagated), OWN, ENI, NET, 50).counted == 1


def test_near_full_from_ninety_percent_and_full_when_there_is_no_room_for_ours() -> None:
    routes = [route(f"172.16.{i}.0/24") for i in range(44)]
    near = plan_table(table(*routes), OWN, ENI, NET, 50)
    assert near.counted == 45 and near.near_full and not near.full
    full = plan_table(table(*[route(f"172.16.{i}.0/24") for i in range(50)]), OWN, ENI, NET, 50)
    assert full.full
    present = plan_table(table(*[route(f"172.16.{i}.0/24") for i in range(49)], route(str(OWN), ENI)), OWN, ENI,
                         NET, 50)
    assert present.own is OwnRoute.OK and not present.full


def test_routes_without_a_cidr_or_with_garbage_are_skipped_not_fatal() -> None:
    odd = [{"DestinationPrefixListId": "pl-1", "GatewayId": "vpce-1", "Origin": "CreateRoute", "State": "active"},
           {"DestinationCidrBlock": "not-a-cidr", "State": "blackhole"}]
    plan = plan_table(table(*odd), OWN, ENI, NET, 50)
    assert plan.own is OwnRoute.MISSING and plan.blackholes == ()
