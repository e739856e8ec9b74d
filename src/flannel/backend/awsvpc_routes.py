"""What one VPC route table needs, decided from one ``DescribeRouteTables`` answer: pure, no SDK.

The backend reads a table once and this module says what to do with it: which blackhole routes inside the
flannel network to delete (routes left by nodes whose ENI or instance is gone, as upstream cleaned them), and
whether the node's own route is right (kept untouched), missing (created) or wrong (replaced in place: another
target, or not ``active``). It also counts the routes against the table's quota, so the operator hears about
a table filling up before a create fails. Filters are applied here on the client side: an emulator, or an
older endpoint, may not implement ``route.state`` and friends.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

NEAR_FULL = 0.9
"""The share of the route quota from which every check warns."""


class OwnRoute(enum.Enum):
    """The state of the node's own route in one table."""

    OK = "ok"
    """Present, ``active``, to this node's ENI: nothing is done."""
    MISSING = "missing"
    """No route for the subnet: created."""
    WRONG = "wrong"
    """A route for the subnet that points elsewhere or is not active: replaced (never deleted first)."""


@dataclass(frozen=True)
class TablePlan:
    """The actions one table needs, and its route count."""

    table_id: str
    """The route table."""
    blackholes: tuple[str, ...]
    """Destinations of blackhole routes inside the flannel network, to delete."""
    own: OwnRoute
    """What the node's own route needs."""
    found: str
    """Where a wrong own route pointed and its state, for the log ("" unless ``own`` is WRONG)."""
    counted: int
    """Routes counting against the quota once the plan is carried out (propagated and local ones do not)."""
    limit: int
    """The quota."""

    @property
    def full(self) -> bool:
        """The own route is missing and the table has no room for it."""
        return self.own is OwnRoute.MISSING and self.counted > self.limit

    @property
    def near_full(self) -> bool:
        """At or above ``NEAR_FULL`` of the quota (after the plan)."""
        return self.counted >= NEAR_FULL * self.limit


def counts_against_quota(route: Mapping[str, Any]) -> bool:
    """A route made by ``CreateRoute``: the VPC's local routes and propagated routes have quotas of their own."""
    origin = route.get("Origin")
    if origin is not None:
        return bool(origin == "CreateRoute")
    return route.get("GatewayId") != "local"


def describe_target(route: Mapping[str, Any]) -> str:
    """Where a route points, for a log line: ``instance i-…, ENI eni-…, state blackhole``."""
    parts = [f"{label} {route[key]}" for key, label in (
        ("InstanceId", "instance"), ("NetworkInterfaceId", "ENI"), ("GatewayId", "gateway"),
        ("NatGatewayId", "NAT gateway"), ("TransitGatewayId", "transit gateway"),
        ("VpcPeeringConnectionId", "peering connection")) if route.get(key)]
    parts.append(f"state {route.get('State', 'unknown')}")
    return ", ".join(parts)


def _cidr(route: Mapping[str, Any]) -> IPv4Network | None:
    text = route.get("DestinationCidrBlock")
    if not isinstance(text, str):
        return None
    try:
        return ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        return None


def plan_table(table: Mapping[str, Any], own_subnet: IPv4Network, eni_id: str, network: IPv4Network | None,
               limit: int) -> TablePlan:
    """The plan for ``table`` (one element of ``RouteTables``)."""
    routes: Sequence[Mapping[str, Any]] = table.get("Routes") or []
    blackholes: list[str] = []
    own, found = OwnRoute.MISSING, ""
    counted = 0
    for route in routes:
        dst = _cidr(route)
        if dst == own_subnet:
            counted += counts_against_quota(route)
            if route.get("NetworkInterfaceId") == eni_id and route.get("State") == "active":
                own = OwnRoute.OK
            else:
                own, found = OwnRoute.WRONG, describe_target(route)
            continue
        # Upstream's test: the route's network address lies inside the flannel network.
        if (route.get("State") == "blackhole" and dst is not None and network is not None
                and dst.network_address in network):
            blackholes.append(str(route["DestinationCidrBlock"]))
            continue
        counted += counts_against_quota(route)
    if own is OwnRoute.MISSING:
        counted += 1
    return TablePlan(table_id=str(table.get("RouteTableId", "")), blackholes=tuple(blackholes), own=own,
                     found=found, counted=counted, limit=limit)
