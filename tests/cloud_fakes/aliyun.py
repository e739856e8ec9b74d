"""A strict fake of Alibaba Cloud's VPC API (2016-04-28): DescribeVpcs, DescribeVRouters, DescribeRouteEntryList,
CreateRouteEntry, DeleteRouteEntry.

Written from the published reference (help.aliyun.com, VPC API and "RPC-style request signature"): requests
carry the common parameters ``Action``, ``Version=2016-04-28``, ``Format``, ``AccessKeyId``,
``SignatureMethod=HMAC-SHA1``, ``SignatureVersion=1.0``, ``SignatureNonce``, ``Timestamp`` and ``Signature``,
which the fake verifies the way the service does (HMAC-SHA1 over the percent-encoded, sorted query, keyed with
``secret + "&"``). Lists are ``{"Vpcs": {"Vpc": [...]}}``-shaped; errors are an HTTP 4xx/5xx with
``{"RequestId", "HostId", "Code", "Message", "Recommend"}`` and the documented codes
(``InvalidAccessKeyId.NotFound``, ``SignatureDoesNotMatch``, ``Throttling``, ``QuotaExceeded``,
``InvalidRouteTableId.NotFound``, ``InvalidCIDRBlock.Duplicate``, ``ServiceUnavailable``). A new entry is
``Pending`` on the first describe after its creation, then ``Available``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

from tests.cloud_fakes.server import Request, Response

VERSION = "2016-04-28"
_COMMON = {"Action", "Version", "Format", "AccessKeyId", "SignatureMethod", "SignatureVersion", "SignatureNonce",
           "Timestamp", "Signature", "RegionId"}
_ACTIONS = {
    "DescribeVpcs": {"VpcId"},
    "DescribeVRouters": {"VRouterId"},
    "DescribeRouteEntryList": {"RouteTableId", "RouteEntryType", "MaxResult", "NextToken", "DestinationCidrBlock"},
    "CreateRouteEntry": {"RouteTableId", "DestinationCidrBlock", "NextHopType", "NextHopId", "ClientToken"},
    "DeleteRouteEntry": {"RouteTableId", "RouteEntryId", "DestinationCidrBlock", "NextHopId"},
}


@dataclass
class Entry:
    entry_id: str
    cidr: str
    next_hop: str
    status: str = "Available"
    kind: str = "Custom"

    def wire(self, table: str) -> dict[str, Any]:
        return {"RouteEntryId": self.entry_id, "RouteTableId": table, "DestinationCidrBlock": self.cidr,
                "Type": self.kind, "Status": self.status, "IpVersion": "IPv4", "RouteEntryName": "",
                "NextHops": {"NextHop": [{"NextHopType": "Instance", "NextHopId": self.next_hop, "Weight": 0,
                                          "Enabled": 1}]}}


class AliyunVPC:
    """One region: VPC → VRouter → route tables → entries; known keys; ECS instances; faults per action."""

    def __init__(self, region: str, keys: dict[str, str], quota: int = 200) -> None:
        self.region = region
        self.keys = dict(keys)
        self.quota = quota
        self.vpcs: dict[str, str] = {}
        self.vrouters: dict[str, list[str]] = {}
        self.tables: dict[str, list[Entry]] = {}
        self.instances: dict[str, str] = {}
        """Instance id → private IP (the only valid ``Instance`` next hops)."""
        self.faults: list[tuple[str, Any]] = []
        """(action or "*", fault): (HTTP status, code), or "garbage"."""
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def add_vpc(self, vpc: str, vrouter: str, table: str) -> None:
        self.vpcs[vpc] = vrouter
        self.vrouters[vrouter] = [table]
        self.tables[table] = []

    def entries(self, table: str) -> list[Entry]:
        return self.tables[table]

    def __call__(self, req: Request) -> Response:
        with self._lock:
            request_id = str(uuid.uuid4()).upper()
            try:
                action, params = self._check(req)
                self.calls.append(action)
                fault = self._fault(action)
                if fault == "garbage":
                    return Response(200, b"<html>maintenance</html>", {"Content-Type": "text/html"})
                if fault:
                    raise _Error(fault[0], fault[1], f"injected {fault[1]}")
                body = getattr(self, f"_{action}")(params)
                body["RequestId"] = request_id
                return Response(200, json.dumps(body).encode())
            except _Error as exc:
                body = {"RequestId": request_id, "HostId": "vpc.aliyuncs.com", "Code": exc.code,
                        "Message": exc.message, "Recommend": "https://api.aliyun.com/troubleshoot"}
                return Response(exc.status, json.dumps(body).encode())

    def _fault(self, action: str) -> Any:
        for i, (name, fault) in enumerate(self.faults):
            if name in (action, "*"):
                del self.faults[i]
                return fault
        return None

    def _check(self, req: Request) -> tuple[str, dict[str, str]]:
        params = dict(req.query)
        if req.method == "POST":  # RPC parameters in the query string, or in a form body
            if req.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                params.update(parse_qsl(req.body.decode(), keep_blank_values=True))
        elif req.method != "GET":
            raise _Error(400, "UnsupportedHTTPMethod", f"{req.method} is not supported")
        action = params.get("Action", "")
        if action not in _ACTIONS:
            raise _Error(404, "InvalidAction.NotFound", f"Specified api {action!r} is not found")
        if params.get("Version") != VERSION:
            raise _Error(400, "InvalidVersion", f"Specified parameter Version {params.get('Version')!r} is not valid")
        for name in ("AccessKeyId", "SignatureNonce", "Timestamp", "Signature", "RegionId"):
            if not params.get(name):
                raise _Error(400, "MissingParameter", f"The input parameter {name!r} that is mandatory is missing")
        if (params.get("SignatureMethod"), params.get("SignatureVersion")) != ("HMAC-SHA1", "1.0"):
            raise _Error(400, "InvalidParameter", "SignatureMethod/SignatureVersion")
        if params.get("Format", "XML").upper() != "JSON":
            raise _Error(400, "InvalidParameter", "this fake answers Format=JSON only")
        secret = self.keys.get(params["AccessKeyId"])
        if secret is None:
            raise _Error(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        signed = "&".join(f"{_enc(k)}={_enc(v)}" for k, v in sorted(params.items()) if k != "Signature")
        to_sign = f"{req.method}&%2F&{_enc(signed)}"
        want = base64.b64encode(hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()).decode()
        if not hmac.compare_digest(want, params["Signature"]):
            raise _Error(400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation. "
                         f"server string to sign is:{to_sign}")
        if params["RegionId"] != self.region:
            raise _Error(400, "InvalidRegionId.NotFound", f"region {params['RegionId']!r} does not exist")
        unknown = set(params) - _COMMON - _ACTIONS[action] - {"SignatureType", "OwnerId"}
        if unknown:
            raise _Error(400, "InvalidParameter", f"unexpected parameters {sorted(unknown)}")
        return action, params

    def _DescribeVpcs(self, p: dict[str, str]) -> dict[str, Any]:
        found = [{"VpcId": v, "VRouterId": r, "RegionId": self.region, "Status": "Available", "CidrBlock":
                  "172.16.0.0/12"} for v, r in self.vpcs.items() if p.get("VpcId") in (None, v)]
        return {"Vpcs": {"Vpc": found}, "TotalCount": len(found), "PageNumber": 1, "PageSize": 10}

    def _DescribeVRouters(self, p: dict[str, str]) -> dict[str, Any]:
        found = [{"VRouterId": r, "RegionId": self.region, "VpcId": next(v for v, x in self.vpcs.items() if x == r),
                  "RouteTableIds": {"RouteTableId": list(t)}} for r, t in self.vrouters.items()
                 if p.get("VRouterId") in (None, r)]
        return {"VRouters": {"VRouter": found}, "TotalCount": len(found), "PageNumber": 1, "PageSize": 10}

    def _table(self, p: dict[str, str]) -> list[Entry]:
        if p.get("RouteTableId") not in self.tables:
            raise _Error(404, "InvalidRouteTableId.NotFound", f"The route table {p.get('RouteTableId')!r} is not "
                         "found")
        return self.tables[p["RouteTableId"]]

    def _DescribeRouteEntryList(self, p: dict[str, str]) -> dict[str, Any]:
        entries = [e for e in self._table(p) if p.get("RouteEntryType") in (None, e.kind)]
        start = int(p.get("NextToken") or 0)
        size = int(p.get("MaxResult", 10))
        page = entries[start:start + size]
        out = [e.wire(p["RouteTableId"]) for e in page]
        for e in page:
            if e.status == "Pending":  # shown Pending once, then the router has it
                e.status = "Available"
        token = str(start + size) if start + size < len(entries) else ""
        return {"RouteEntrys": {"RouteEntry": out}, "NextToken": token}

    def _CreateRouteEntry(self, p: dict[str, str]) -> dict[str, Any]:
        table = self._table(p)
        if p.get("NextHopType") != "Instance" or p.get("NextHopId") not in self.instances:
            raise _Error(400, "InvalidNextHopId.NotFound", f"next hop {p.get('NextHopId')!r} is not an instance of "
                         "this VPC")
        if any(e.cidr == p.get("DestinationCidrBlock") for e in table):
            raise _Error(400, "InvalidCIDRBlock.Duplicate", "Specified CIDR block is already exists.")
        if sum(1 for e in table if e.kind == "Custom") >= self.quota:
            raise _Error(400, "QuotaExceeded", "Route entry quota exceeded in this route table")
        entry = Entry(f"rte-{uuid.uuid4().hex[:20]}", p["DestinationCidrBlock"], p["NextHopId"], status="Pending")
        table.append(entry)
        return {"RouteEntryId": entry.entry_id}

    def _DeleteRouteEntry(self, p: dict[str, str]) -> dict[str, Any]:
        table = self._table(p)
        match = [e for e in table if e.entry_id == p.get("RouteEntryId")]
        if not match:
            raise _Error(404, "InvalidRouteEntryId.NotFound", f"route entry {p.get('RouteEntryId')!r} not found")
        table.remove(match[0])
        return {}


class _Error(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code)
        self.status, self.code, self.message = status, code, message


def _enc(s: str) -> str:
    """The signature's percent-encoding (RFC 3986 unreserved characters kept)."""
    return quote(str(s), safe="~")


def metadata_paths(region: str, instance: str, vpc: str) -> dict[str, str]:
    base = "/latest/meta-data"
    return {f"{base}/region-id": region, f"{base}/instance-id": instance, f"{base}/vpc-id": vpc}
