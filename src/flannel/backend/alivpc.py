"""The ali-vpc backend (removed upstream in v0.20.0; facts from its last release): an Alibaba Cloud VPC route entry
per node, next hop this ECS instance.

Upstream's behaviour, kept: ``AccessKeyID``/``AccessKeySecret`` from the config, else both from
``ACCESS_KEY_ID``/``ACCESS_KEY_SECRET``; acquire the lease (``PublicIP``, no ``BackendType``); read the region,
instance id and VPC id from the ECS metadata service (``http://100.100.100.200/latest/meta-data/``); find the
VPC's VRouter and its first route table; keep a custom entry for the own subnet with next hop this instance
when it is ``Available``; delete the other custom entries that point at this instance (one subnet per node),
except ``0.0.0.0/0`` (a DNAT route); create the entry (next hop type ``Instance``) and wait until it is
``Available``.

Beyond upstream (docs/backends.md): only entries inside the flannel ``Network`` are ever deleted (upstream
deleted any custom entry to the instance); an entry for the own subnet pointing at another instance is
logged naming it and replaced; the entry is checked every ``RouteCheckInterval`` seconds and repaired;
throttling, 5xx and "table busy" answers are retried with back-off; a refused key names where it came from;
the table's default quota of 200 custom entries is reported before it is reached.

SDK: ``aliyun-python-sdk-core`` + ``aliyun-python-sdk-vpc`` (extra ``flannel[ali]``): 36 MiB import RSS
against 70 MiB for the newer ``alibabacloud_vpc20160428`` + Tea stack, and still released.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aliyunsdkcore.acs_exception.exceptions import ClientException, ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkvpc.request.v20160428.CreateRouteEntryRequest import CreateRouteEntryRequest
from aliyunsdkvpc.request.v20160428.DeleteRouteEntryRequest import DeleteRouteEntryRequest
from aliyunsdkvpc.request.v20160428.DescribeRouteEntryListRequest import DescribeRouteEntryListRequest
from aliyunsdkvpc.request.v20160428.DescribeVpcsRequest import DescribeVpcsRequest
from aliyunsdkvpc.request.v20160428.DescribeVRoutersRequest import DescribeVRoutersRequest

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
# The SDK logs every failed call at ERROR, unthrottled; each failure is logged here once, rate-limited, with
# what it means (cloud_route), so a throttled minute does not become hundreds of lines.
logging.getLogger("aliyunsdkcore").setLevel(logging.CRITICAL)

NAME = "ali-vpc"
METADATA_URL = "http://100.100.100.200/latest/meta-data"
METADATA_ENV = "FLANNEL_ALIYUN_METADATA_URL"
ENDPOINT_ENV = "FLANNEL_ALIYUN_VPC_ENDPOINT"
"""The VPC API endpoint, ``https://host[:port]`` or ``http://…``; default the SDK's regional endpoint."""
ENTRY_QUOTA = 200
"""Custom route entries per route table by default (Alibaba Cloud's documented VPC quota)."""
AVAILABLE_TIMEOUT = 60.0
"""Seconds to wait for a new entry to become ``Available`` (upstream: 60)."""
_WEATHER = ("Throttling", "ServiceUnavailable", "InternalError", "OperationConflict", "IncorrectStatus",
            "IncorrectRouteEntryStatus", "IncorrectVpcStatus", "TaskConflict", "LastTokenProcessing",
            "UnknownError")
_AUTH = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "IncompleteSignature",
         "InvalidAccessKeySecret", "NoPermission")


class AliVPCBackend:
    """Parses the config (keys and credentials) at construction; the cloud is first asked at registration."""

    def __init__(self, ctx: BackendContext, config: NetworkConfig) -> None:
        raw = read_section(NAME, config.backend, ["AccessKeyID", "AccessKeySecret", "RouteCheckInterval"])
        require_ipv4_only(NAME, ctx, config)
        self.ctx = ctx
        self.key = access_key(NAME, raw)
        self.interval = check_interval(raw)

    async def register_network(self, config: NetworkConfig) -> CloudRouteNetwork:
        ext = self.ctx.ext_iface
        assert ext.ext_addr is not None and config.network is not None  # require_ipv4_only
        lease = await self.ctx.subnet_manager.acquire_lease(LeaseAttrs(public_ip=ext.ext_addr))
        assert lease.subnet is not None
        where = await asyncio.to_thread(read_instance)
        driver = AliRouteDriver(AliAPI(self.key, where.region), where, str(lease.subnet), str(config.network))
        limiter = RepeatLimiter(600.0)
        ok = await ensure_at_start(driver, limiter)
        return CloudRouteNetwork(lease, ext.mtu, driver, self.interval, limiter, pending=not ok)


@dataclass(frozen=True)
class EcsInstance:
    """Where this ECS instance runs, from the metadata service."""

    region: str
    instance_id: str
    vpc_id: str


def read_instance() -> EcsInstance:
    base = cloud_metadata.base_url(METADATA_ENV, METADATA_URL)
    got = EcsInstance(*(cloud_metadata.read(f"{base}/{p}") for p in ("region-id", "instance-id", "vpc-id")))
    log.info("ali-vpc: region %s, instance %s, VPC %s (metadata %s)", got.region, got.instance_id, got.vpc_id, base)
    return got


class AliAPI:
    """The SDK client and how to send one request (endpoint override, errors sorted). Blocking."""

    def __init__(self, key: AccessKey, region: str) -> None:
        self.key_source = key.source
        self.region = region
        endpoint = os.environ.get(ENDPOINT_ENV, "")
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}") if endpoint else None
        self.host = parts.hostname if parts else None
        self.protocol = parts.scheme if parts else "https"
        port = parts.port if parts and parts.port else (80 if self.protocol == "http" else 443)
        # auto_retry off: throttling and 5xx are retried by the caller, with back-off and a log line.
        self.client = AcsClient(key.key_id.reveal(), key.key_secret.reveal(), region, auto_retry=False, port=port,
                                connect_timeout=5, timeout=10)

    def send(self, request: Any, **params: Any) -> dict[str, Any]:
        action = request.get_action_name()
        request.set_accept_format("json")
        request.set_protocol_type(self.protocol)
        if self.host:
            request.set_endpoint(self.host)
        for name, value in params.items():
            request.add_query_param(name, value)
        try:
            answer = json.loads(self.client.do_action_with_exception(request))
        except ServerException as exc:
            raise self._sorted(action, str(exc.get_error_code()), str(exc.get_error_msg()),
                               exc.get_http_status()) from None
        except ClientException as exc:
            code = str(exc.get_error_code())
            if code.startswith("SDK.Http") or "Timeout" in code or "Connection" in code:
                raise CloudWeatherError(f"{action}: cannot reach the VPC API: {code}: {exc.get_error_msg()}") from None
            raise CloudAnswerError(f"{action}: {code}: {str(exc.get_error_msg())[:300]}") from None
        except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:  # the SDK choking on a reply
            raise CloudAnswerError(f"{action}: unexpected answer from the VPC API: {exc!r}") from None
        if not isinstance(answer, dict):
            raise CloudAnswerError(f"{action}: unexpected answer from the VPC API: {str(answer)[:200]!r}")
        return answer

    def _sorted(self, action: str, code: str, message: str, status: int | None) -> CloudError:
        text = f"{action} failed: {code}: {message[:300]}"
        if code.startswith(_AUTH):
            return CloudAuthError(f"{text} (credentials from {self.key_source}; the key needs the permissions "
                                  "listed in docs/backends.md)")
        if code.startswith(_WEATHER) or (status or 0) >= 500:
            return CloudWeatherError(text)
        if code.startswith("QuotaExceeded"):
            return CloudLimitError(f"{text} (a route table holds {ENTRY_QUOTA} custom entries by default)")
        if ".NotFound" in code or code.endswith("NotFound"):
            return CloudNotFoundError(text)
        return CloudAnswerError(text)


class AliRouteDriver:
    """The own entry in the VRouter's first route table (blocking SDK calls; run through ``asyncio.to_thread``)."""

    name = NAME
    limit = ENTRY_QUOTA

    def __init__(self, api: AliAPI, instance: EcsInstance, subnet: str, network: str) -> None:
        self.api = api
        self.instance = instance
        self.subnet = subnet
        self.network = ipaddress.IPv4Network(network)
        self.table_id = ""
        self.where = f"the route table of {instance.vpc_id}"
        self._stop = threading.Event()

    def cancel(self) -> None:
        """Stop waiting for an entry to become Available (the daemon is stopping)."""
        self._stop.set()

    def _table(self) -> str:
        """The first route table of the VPC's VRouter (looked up once; a VPC's VRouter never changes)."""
        if self.table_id:
            return self.table_id
        vpcs = self.api.send(DescribeVpcsRequest(), RegionId=self.instance.region, VpcId=self.instance.vpc_id)
        found = _items(vpcs, "Vpcs", "Vpc")
        if not found:
            raise CloudNotFoundError(f"DescribeVpcs lists no VPC {self.instance.vpc_id} in {self.instance.region}")
        routers = self.api.send(DescribeVRoutersRequest(), RegionId=self.instance.region,
                                VRouterId=found[0]["VRouterId"])
        router = _items(routers, "VRouters", "VRouter")
        tables = router[0].get("RouteTableIds", {}).get("RouteTableId", []) if router else []
        if not tables:
            raise CloudNotFoundError(f"VRouter {found[0]['VRouterId']} of {self.instance.vpc_id} has no route table")
        self.table_id = str(tables[0])
        self.where = f"route table {self.table_id} of {self.instance.vpc_id}"
        return self.table_id

    def _entries(self, table: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        token = ""
        while True:
            params = {"RegionId": self.instance.region, "RouteTableId": table, "RouteEntryType": "Custom",
                      "MaxResult": 100, **({"NextToken": token} if token else {})}
            page = self.api.send(DescribeRouteEntryListRequest(), **params)
            entries += _items(page, "RouteEntrys", "RouteEntry")
            token = str(page.get("NextToken") or "")
            if not token:
                return entries

    def ensure(self) -> RouteStatus:
        table = self._table()
        entries = self._entries(table)
        me = self.instance.instance_id
        keep = False
        deleted = 0
        for e in entries:
            cidr, hops, status = e.get("DestinationCidrBlock", ""), _hops(e), e.get("Status", "")
            if cidr == self.subnet and hops == [me] and status in ("Available", "Pending"):
                keep = True  # Pending: just made (by us, a moment ago); it becomes Available by itself
                continue
            ours = cidr == self.subnet or (me in hops and cidr != "0.0.0.0/0" and _inside(cidr, self.network))
            if not ours:
                continue
            if cidr == self.subnet and hops != [me]:
                log.warning("ali-vpc: entry %s for this node's subnet %s in %s points at %s, not at this instance "
                            "(%s): replacing it", e.get("RouteEntryId"), cidr, table, ",".join(hops) or "nothing", me)
            elif cidr == self.subnet:
                log.warning("ali-vpc: entry %s for %s in %s is %s: deleting and creating it again",
                            e.get("RouteEntryId"), cidr, table, status)
            else:
                log.info("ali-vpc: removing old entry %s (%s to this instance) from %s", e.get("RouteEntryId"),
                         cidr, table)
            self.api.send(DeleteRouteEntryRequest(), RegionId=self.instance.region, RouteTableId=table,
                          RouteEntryId=e["RouteEntryId"])
            deleted += 1
        count = len(entries) - deleted
        if keep:
            return RouteStatus(changed=False, entries=count)
        self.api.send(CreateRouteEntryRequest(), RegionId=self.instance.region, RouteTableId=table,
                      DestinationCidrBlock=self.subnet, NextHopType="Instance", NextHopId=me)
        log.info("ali-vpc: entry %s via instance %s created in %s", self.subnet, me, table)
        self._wait_available(table)
        return RouteStatus(changed=True, entries=count + 1)

    def _wait_available(self, table: str) -> None:
        deadline = time.monotonic() + AVAILABLE_TIMEOUT
        delay = 0.2
        while time.monotonic() < deadline:
            mine = [e for e in self._entries(table) if e.get("DestinationCidrBlock") == self.subnet]
            if any(e.get("Status") == "Available" for e in mine):
                return
            if self._stop.wait(delay):
                raise CloudWeatherError(f"stopped waiting for entry {self.subnet} in {table}")
            delay = min(delay * 2, 5.0)
        raise CloudWeatherError(f"entry {self.subnet} in {table} not Available after {AVAILABLE_TIMEOUT:.0f}s")


def _items(answer: dict[str, Any], outer: str, inner: str) -> list[dict[str, Any]]:
    """``answer[outer][inner]`` (Aliyun's JSON shape for lists), checked to be a list of objects."""
    items = (answer.get(outer) or {}).get(inner, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise CloudAnswerError(f"unexpected answer from the VPC API: {outer}.{inner} is not a list of objects")
    return items


def _hops(entry: dict[str, Any]) -> list[str]:
    hops = (entry.get("NextHops") or {}).get("NextHop", [])
    return [str(h.get("NextHopId", "")) for h in hops if isinstance(h, dict)]


def _inside(cidr: str, network: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.ip_network(cidr, strict=False).subnet_of(network)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False
