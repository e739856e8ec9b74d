"""The aws-vpc backend's own ``Backend`` section.

Upstream's one key, ``RouteTableID``, may be absent (the table is then found through the instance's subnet),
a string, or a list of strings; any other JSON type is refused with upstream's message. Two keys of this port
tune what upstream did not have: the route quota the table is checked against, and how often the node's own
route is verified. Go flanneld ignores keys it does not know, so a config using them stays readable by it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flannel.backend.backend_config import int_key, read_section
from flannel.errors import ConfigError

_FIELDS = ["RouteTableID", "RouteLimit", "RouteCheckInterval"]

WRONG_TYPE = "Unexpected RouteTableID type. Must be string or array of strings."
"""Upstream's error for a ``RouteTableID`` that is neither a string nor a list."""
WRONG_ITEM = "Unexpected type in RouteTableID slice. Must be strings."
"""Upstream's error for a list holding something other than strings."""

DEFAULT_ROUTE_LIMIT = 50
"""AWS's default quota of routes per route table (non-propagated); raisable to 1000 on request."""
DEFAULT_CHECK_INTERVAL = 60
"""Seconds between checks of the node's own route: one DescribeRouteTables per table per node per round,
which keeps a large cluster well inside EC2's request-rate budget for Describe calls."""


@dataclass(frozen=True)
class AWSVPCConfig:
    """Settings of the aws-vpc backend."""

    route_tables: tuple[str, ...] | None = None
    """Route table ids from ``RouteTableID``; None: find the table of the instance's subnet (or the VPC's main)."""
    route_limit: int = DEFAULT_ROUTE_LIMIT
    """The table's route quota; a warning at 90 % of it, a clear error instead of a create when it is full."""
    check_interval: int = DEFAULT_CHECK_INTERVAL
    """Seconds between checks that the own route is still there, active and pointing at this node's ENI."""


def parse_route_tables(value: Any) -> tuple[str, ...] | None:
    """``RouteTableID`` as upstream reads it: null → None, a string → one table, a list of strings → those."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value:
            raise ConfigError("Backend.RouteTableID must not be empty", "Backend.RouteTableID")
        return (value,)
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise ConfigError(WRONG_ITEM, "Backend.RouteTableID")
        if not value or not all(value):
            raise ConfigError("Backend.RouteTableID must list at least one table id, and no empty one",
                              "Backend.RouteTableID")
        return tuple(dict.fromkeys(value))  # a table listed twice is programmed once
    raise ConfigError(WRONG_TYPE, "Backend.RouteTableID")


def parse_awsvpc_config(backend: Mapping[str, Any]) -> AWSVPCConfig:
    """Read the ``Backend`` object; raise ``ConfigError`` naming ``Backend.<key>`` on a bad value."""
    raw = read_section("aws-vpc", backend, _FIELDS)
    return AWSVPCConfig(
        route_tables=parse_route_tables(raw.get("RouteTableID")),
        route_limit=int_key(raw, "RouteLimit", DEFAULT_ROUTE_LIMIT, lo=1, hi=10000),
        check_interval=int_key(raw, "RouteCheckInterval", DEFAULT_CHECK_INTERVAL, lo=1, hi=86400),
    )
