"""The tencent-vpc backend (spec §10.10): this node's subnet routed to this CVM in the VPC's route table.

Upstream's steps, kept: acquire the lease (``PublicIP``, no ``BackendType``); read the region, the MAC and the
VPC id from the CVM metadata service; take the **first** route table of ``DescribeRouteTables`` filtered by
``vpc-id``; a route to the own subnet with gateway ``ExtAddr``, gateway type ``NORMAL_CVM`` and route type
``USER`` is kept when enabled, deleted and created again when disabled; otherwise it is created. Each node
programs only its own route.

Beyond upstream (docs/backends.md): a route to the own subnet that points elsewhere (a previous owner of the
subnet) is logged naming its gateway and replaced, where upstream's create would fail on it; the route is
checked every ``RouteCheckInterval`` seconds and repaired; throttling and 5xx are retried with back-off; a
refused key is a clear error naming where the key came from; the table's 50-entry limit is reported early.

The SDK's ``CommonClient`` (``tencentcloud-sdk-python-common``, extra ``flannel[tencent]``: its TC3 signing,
transport and error model) sends the three actions as JSON: 29 MiB of import RSS, where the generated VPC
client and its 70,000-line models module cost 42 MiB. It is imported here only, and this module only when the
backend is configured.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tencentcloud.common import credential
from tencentcloud.common.common_client import CommonClient
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile

from flannel.backend import cloud_metadata
from flannel.backend.backend_config import read_section
from flannel.backend.base import BackendContext, require_ipv4_only
from flannel.backend.cloud_route import (
    AccessKey,
    CloudAnswerError,
    CloudAuthError,
    CloudError,
    CloudLimitError,
    CloudNotFoundError,
    CloudRouteNetwork,
    CloudWeatherError,
    RouteStatus,
    access_key,
    check_interval,
    ensure_at_start,
)
from flannel.backoff import RepeatLimiter
from flannel.config import NetworkConfig
from flannel.lease import LeaseAttrs

log = logging.getLogger(__name__)

NAME = "tencent-vpc"
SERVICE, VERSION = "vpc", "2017-03-12"
METADATA_URL = "http://metadata.tencentyun.com/latest/meta-data"
METADATA_ENV = "FLANNEL_TENCENT_METADATA_URL"
"""Replaces ``METADATA_URL`` (tests; a proxy-less mirror of the metadata service)."""
ENDPOINT_ENV = "FLANNEL_TENCENT_VPC_ENDPOINT"
"""The VPC API endpoint, ``https://host[:port]`` or ``http://…``; default the SDK's ``vpc.tencentcloudapi.com``."""
GATEWAY_TYPE = "NORMAL_CVM"
ROUTE_TYPE = "USER"
ROUTE_LIMIT = 50
"""Routes per route table (spec §10.10)."""
_WEATHER = ("RequestLimitExceeded", "InternalError", "ServerNetworkError", "ClientNetworkError",
            "ResourceUnavailable", "FailedOperation.Busy")
_AUTH = ("AuthFailure", "UnauthorizedOperation")
_PYTHON_ERRORS = ("JSONDecodeError", "KeyError", "TypeError", "AttributeError", "ValueError", "IndexError")


class TencentVPCBackend:
    """Parses the config (keys and credentials) at construction; the cloud is first asked at registration."""

    def __init__(self, ctx: BackendContext, config: NetworkConfig) -> None:
        raw = read_section(NAME, config.backend, ["AccessKeyID", "AccessKeySecret", "RouteCheckInterval"])
        require_ipv4_only(NAME, ctx, config)
        self.ctx = ctx
        self.key = access_key(NAME, raw)
        self.interval = check_interval(raw)

    async def register_network(self, config: NetworkConfig) -> CloudRouteNetwork:
        ext = self.ctx.ext_iface
        assert ext.ext_addr is not None  # require_ipv4_only
        lease = await self.ctx.subnet_manager.acquire_lease(LeaseAttrs(public_ip=ext.ext_addr))
        assert lease.subnet is not None
        where = await asyncio.to_thread(read_placement)
        driver = TencentRouteDriver(make_client(self.key, where.region), self.key.source, where.vpc_id,
                                    str(lease.subnet), str(ext.ext_addr))
        limiter = RepeatLimiter(600.0)
        ok = await ensure_at_start(driver, limiter)
        return CloudRouteNetwork(lease, ext.mtu, driver, self.interval, limiter, pending=not ok)


@dataclass(frozen=True)
class Placement:
    """Where this CVM runs, from the metadata service."""

    region: str
    """e.g. ``ap-guangzhou``."""
    vpc_id: str
    """The VPC of the primary interface, e.g. ``vpc-2ari9m7h``."""


def read_placement() -> Placement:
    """Region, MAC, then the VPC id of that MAC (blocking)."""
    base = cloud_metadata.base_url(METADATA_ENV, METADATA_URL)
    region = cloud_metadata.read(f"{base}/placement/region")
    mac = cloud_metadata.read(f"{base}/mac")
    vpc_id = cloud_metadata.read(f"{base}/network/interfaces/macs/{mac}/vpc-id")
    log.info("tencent-vpc: region %s, VPC %s (metadata %s)", region, vpc_id, base)
    return Placement(region, vpc_id)


def make_client(key: AccessKey, region: str) -> Any:
    """The SDK's VPC client, pointed at ``FLANNEL_TENCENT_VPC_ENDPOINT`` when that is set."""
    http = HttpProfile()
    endpoint = os.environ.get(ENDPOINT_ENV, "")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        http.endpoint = parts.netloc
        http.protocol = http.scheme = parts.scheme
    http.reqTimeout = 10
    cred = credential.Credential(key.key_id.reveal(), key.key_secret.reveal())
    return CommonClient(SERVICE, VERSION, cred, region, ClientProfile(httpProfile=http))


class TencentRouteDriver:
    """The own route in the VPC's first route table (blocking SDK calls; run through ``asyncio.to_thread``)."""

    name = NAME
    limit = ROUTE_LIMIT

    def __init__(self, client: Any, key_source: str, vpc_id: str, subnet: str, gateway: str) -> None:
        self.client = client
        self.key_source = key_source
        self.vpc_id = vpc_id
        self.subnet = subnet
        self.gateway = gateway
        self.where = f"the route table of {vpc_id}"

    def ensure(self) -> RouteStatus:
        answer = self._call("DescribeRouteTables", {"Filters": [{"Name": "vpc-id", "Values": [self.vpc_id]}]})
        tables = answer.get("RouteTableSet")
        if not isinstance(tables, list):
            raise CloudAnswerError("DescribeRouteTables: unexpected answer from the VPC API: no RouteTableSet")
        if not tables:
            raise CloudNotFoundError(f"no suitable routing table found: DescribeRouteTables lists no route table "
                                     f"for {self.vpc_id}")
        table = tables[0]
        table_id = table.get("RouteTableId")
        routes = table.get("RouteSet")
        if not isinstance(table_id, str) or not isinstance(routes, list) or not all(isinstance(r, dict)
                                                                                   for r in routes):
            raise CloudAnswerError("DescribeRouteTables: unexpected answer from the VPC API: no RouteTableId or "
                                   "RouteSet in the first table")
        self.where = f"route table {table_id} of {self.vpc_id}"
        entries = sum(1 for r in routes if r.get("RouteType") == ROUTE_TYPE)
        stale = []
        for route in routes:
            if route.get("DestinationCidrBlock") != self.subnet:
                continue
            kind = (route.get("GatewayId"), route.get("GatewayType"), route.get("RouteType"))
            if kind == (self.gateway, GATEWAY_TYPE, ROUTE_TYPE):
                if route.get("Enabled") is True:
                    return RouteStatus(changed=False, entries=entries)
                log.warning("tencent-vpc: route %s to %s in %s is disabled: deleting and creating it again",
                            route.get("RouteId"), self.subnet, table_id)
            elif route.get("RouteType") == ROUTE_TYPE:
                log.warning("tencent-vpc: route %s to this node's subnet %s in %s points at %s %s, not at this node "
                            "(%s): replacing it", route.get("RouteId"), self.subnet, table_id, route.get("GatewayType"),
                            route.get("GatewayId"), self.gateway)
            else:
                continue  # a system route (LOCAL, NETD...) is not ours to remove; the create will report a conflict
            stale.append(route)
        if stale:
            self._call("DeleteRoutes", {"RouteTableId": table_id,
                                        "Routes": [{"RouteId": r.get("RouteId")} for r in stale]})
            entries -= len(stale)
        self._call("CreateRoutes", {"RouteTableId": table_id, "Routes": [{
            "DestinationCidrBlock": self.subnet, "GatewayType": GATEWAY_TYPE, "GatewayId": self.gateway,
            "Enabled": True}]})
        log.info("tencent-vpc: route %s via %s %s created in %s", self.subnet, GATEWAY_TYPE, self.gateway, table_id)
        return RouteStatus(changed=True, entries=entries + 1)

    def _call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """One action; its failure sorted into the ``CloudError`` tree (the key never appears in a message)."""
        try:
            answer = self.client.call_json(action, params)
        except TencentCloudSDKException as exc:
            raise self._sorted(action, str(exc.get_code() or ""), str(exc.get_message() or "")) from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CloudAnswerError(f"{action}: unexpected answer from the VPC API: {exc!r}") from None
        response = answer.get("Response") if isinstance(answer, dict) else None
        if not isinstance(response, dict):
            raise CloudAnswerError(f"{action}: unexpected answer from the VPC API: no Response object")
        return response

    def _sorted(self, action: str, code: str, message: str) -> CloudError:
        text = f"{action} failed: {code}: {message[:300]}"
        if code.startswith(_AUTH):
            return CloudAuthError(f"{text} (credentials from {self.key_source}; the key needs the permissions "
                                  "listed in docs/backends.md)")
        if code.startswith(_WEATHER):
            return CloudWeatherError(text)
        if code.startswith("LimitExceeded"):
            return CloudLimitError(f"{text} (the route table holds {ROUTE_LIMIT} routes by default)")
        if code.startswith(("ResourceNotFound", "InvalidParameterValue.NotFound")):
            return CloudNotFoundError(text)
        if code in _PYTHON_ERRORS:
            return CloudAnswerError(f"{action}: unexpected answer from the VPC API: {code}: {message[:300]}")
        return CloudAnswerError(text)

