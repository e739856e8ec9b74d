"""A strict fake of Tencent Cloud's VPC API (version 2017-03-12): DescribeRouteTables, CreateRoutes, DeleteRoutes.

Written from the published API reference (cloud.tencent.com/document/api/215): API 3.0 requests are ``POST /``
with a JSON body, the action and version in ``X-TC-Action`` / ``X-TC-Version``, the region in ``X-TC-Region``,
a Unix time in ``X-TC-Timestamp``, and an ``Authorization: TC3-HMAC-SHA256 Credential=<SecretId>/<date>/vpc/
tc3_request, SignedHeaders=..., Signature=...`` header. The fake checks that signature the way the service
does (the documented TC3 algorithm, server side). Every answer is HTTP 200 with ``{"Response": {...,
"RequestId"}}``; errors are ``{"Response": {"Error": {"Code", "Message"}, "RequestId"}}`` with the documented
codes (``AuthFailure.SecretIdNotFound``, ``AuthFailure.SignatureFailure``, ``RequestLimitExceeded``,
``LimitExceeded``, ``ResourceNotFound``, ``InvalidParameter``, ``InternalError``...). Anything else (another
action, version, method, an unknown parameter or filter) is rejected.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.cloud_fakes.server import Request, Response

VERSION = "2017-03-12"
SERVICE = "vpc"
_AUTH_RE = re.compile(r"^TC3-HMAC-SHA256 Credential=(?P<id>[^/]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<svc>[a-z]+)"
                      r"/tc3_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<sig>[0-9a-f]{64})$")
_ACTIONS = {
    "DescribeRouteTables": {"Filters", "RouteTableIds", "Offset", "Limit"},
    "CreateRoutes": {"RouteTableId", "Routes"},
    "DeleteRoutes": {"RouteTableId", "Routes"},
}


@dataclass
class Route:
    destination: str
    gateway_type: str
    gateway_id: str
    route_id: int
    enabled: bool = True
    route_type: str = "USER"

    def wire(self, table_id: str) -> dict[str, Any]:
        return {"DestinationCidrBlock": self.destination, "GatewayType": self.gateway_type,
                "GatewayId": self.gateway_id, "RouteId": self.route_id, "RouteDescription": "",
                "Enabled": self.enabled, "RouteType": self.route_type, "RouteTableId": table_id,
                "DestinationIpv6CidrBlock": "", "RouteItemId": f"rti-{self.route_id:08x}"}


@dataclass
class Table:
    table_id: str
    vpc_id: str
    routes: list[Route] = field(default_factory=list)


class TencentVPC:
    """The fake service: tables by VPC, known keys, a route limit, and faults to inject per action."""

    def __init__(self, keys: dict[str, str], limit: int = 50) -> None:
        self.keys = dict(keys)
        self.limit = limit
        self.tables: dict[str, Table] = {}
        self.cvm_ips: set[str] = set()
        """Private IPs of the CVMs in the VPC: the only valid ``NORMAL_CVM`` gateway ids."""
        self.faults: list[tuple[str, Any]] = []
        """(action or "*", fault): an error code string, or an int HTTP status, or "garbage"."""
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self._next_id = 1000

    def add_table(self, vpc_id: str, table_id: str) -> Table:
        table = Table(table_id, vpc_id)
        # Every VPC table has its system route to the VPC itself, which no USER route may replace.
        table.routes.append(Route("172.16.0.0/16", "LOCAL", "Local", self._id(), route_type="NETD"))
        self.tables[table_id] = table
        return table

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def user_routes(self) -> list[Route]:
        return [r for t in self.tables.values() for r in t.routes if r.route_type == "USER"]

    # -- the wire --------------------------------------------------------------------------------------

    def __call__(self, req: Request) -> Response:
        with self._lock:
            request_id = str(uuid.uuid4())
            try:
                action, params = self._check(req)
                self.calls.append(action)
                fault = self._fault(action)
                if fault == "garbage":
                    return Response(200, b"<html>gateway</html>")
                if isinstance(fault, int):
                    return Response(fault, b"upstream unavailable", {"Content-Type": "text/plain"})
                if fault:
                    raise _Error(fault, f"injected {fault}")
                result = getattr(self, f"_{action}")(params)
            except _Error as exc:
                result = {"Error": {"Code": exc.code, "Message": exc.message}}
            result["RequestId"] = request_id
            return Response(200, json.dumps({"Response": result}).encode())

    def _fault(self, action: str) -> Any:
        for i, (name, fault) in enumerate(self.faults):
            if name in (action, "*"):
                del self.faults[i]
                return fault
        return None

    def _check(self, req: Request) -> tuple[str, dict[str, Any]]:
        h = req.headers
        if req.method != "POST" or req.path != "/":
            raise _Error("InvalidAction", f"{req.method} {req.path} is not an API 3.0 request")
        action = h.get("x-tc-action", "")
        if action not in _ACTIONS:
            raise _Error("InvalidAction", f"action {action!r} is not served here")
        if h.get("x-tc-version") != VERSION:
            raise _Error("NoSuchVersion", f"version {h.get('x-tc-version')!r}")
        if not h.get("x-tc-region"):
            raise _Error("MissingParameter", "X-TC-Region")
        if h.get("content-type") != "application/json":
            raise _Error("InvalidParameter", f"content type {h.get('content-type')!r}")
        self._check_signature(req)
        try:
            params = json.loads(req.body)
        except ValueError:
            raise _Error("InvalidParameter", "body is not JSON") from None
        unknown = set(params) - _ACTIONS[action]
        if unknown:
            raise _Error("UnknownParameter", f"unknown parameters {sorted(unknown)}")
        return action, params

    def _check_signature(self, req: Request) -> None:
        m = _AUTH_RE.match(req.headers.get("authorization", ""))
        if m is None:
            raise _Error("AuthFailure.SignatureFailure", "Authorization header missing or malformed")
        if m["svc"] != SERVICE:
            raise _Error("AuthFailure.SignatureFailure", f"credential scope names service {m['svc']}")
        secret = self.keys.get(m["id"])
        if secret is None:
            raise _Error("AuthFailure.SecretIdNotFound", "The SecretId is not found, please ensure that your "
                         "SecretId is correct.")
        stamp = int(req.headers.get("x-tc-timestamp", "0"))
        if abs(time.time() - stamp) > 300:
            raise _Error("AuthFailure.SignatureExpire", "Signature expired")
        date = datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d")
        if date != m["date"]:
            raise _Error("AuthFailure.SignatureFailure", "credential date differs from X-TC-Timestamp")
        signed = m["signed"].split(";")
        canonical_headers = "".join(f"{name}:{req.headers.get(name, '')}\n" for name in signed)
        canonical = "\n".join(["POST", "/", "", canonical_headers, m["signed"],
                               hashlib.sha256(req.body).hexdigest()])
        scope = f"{date}/{SERVICE}/tc3_request"
        to_sign = "\n".join(["TC3-HMAC-SHA256", str(stamp), scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = _hmac(_hmac(_hmac(f"TC3{secret}".encode(), date), SERVICE), "tc3_request")
        if not hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), m["sig"]):
            raise _Error("AuthFailure.SignatureFailure", "The provided credentials could not be validated. "
                         "Please check your signature is correct.")

    # -- the actions -------------------------------------------------------------------------------------

    def _DescribeRouteTables(self, params: dict[str, Any]) -> dict[str, Any]:
        tables = list(self.tables.values())
        for f in params.get("Filters", []):
            if set(f) != {"Name", "Values"} or not isinstance(f["Values"], list):
                raise _Error("InvalidParameter.FilterInvalidKey", f"filter {f!r}")
            if f["Name"] == "vpc-id":
                tables = [t for t in tables if t.vpc_id in f["Values"]]
            elif f["Name"] == "route-table-id":
                tables = [t for t in tables if t.table_id in f["Values"]]
            else:
                raise _Error("InvalidParameter.FilterNotDict", f"unsupported filter {f['Name']!r}")
        return {"TotalCount": len(tables), "RouteTableSet": [self._table_wire(t) for t in tables]}

    def _table_wire(self, t: Table) -> dict[str, Any]:
        return {"VpcId": t.vpc_id, "RouteTableId": t.table_id, "RouteTableName": "default", "AssociationSet": [],
                "RouteSet": [r.wire(t.table_id) for r in t.routes], "Main": True,
                "CreatedTime": "2026-01-01 00:00:00", "TagSet": [], "LocalCidrForCcn": []}

    def _table(self, params: dict[str, Any]) -> Table:
        table = self.tables.get(params.get("RouteTableId", ""))
        if table is None:
            raise _Error("ResourceNotFound", f"route table {params.get('RouteTableId')!r} does not exist")
        return table

    def _CreateRoutes(self, params: dict[str, Any]) -> dict[str, Any]:
        table = self._table(params)
        new = []
        for r in params["Routes"]:
            allowed = {"DestinationCidrBlock", "GatewayType", "GatewayId", "Enabled", "RouteDescription"}
            if set(r) - allowed or not {"DestinationCidrBlock", "GatewayType", "GatewayId"} <= set(r):
                raise _Error("InvalidParameter", f"route {r!r}")
            if r["GatewayType"] == "NORMAL_CVM" and r["GatewayId"] not in self.cvm_ips:
                raise _Error("InvalidParameterValue", f"gateway {r['GatewayId']} is no CVM of this VPC")
            if any(x.destination == r["DestinationCidrBlock"] for x in table.routes):
                raise _Error("InvalidParameterValue.Duplicate",
                             f"a route to {r['DestinationCidrBlock']} already exists")
            new.append(Route(r["DestinationCidrBlock"], r["GatewayType"], r["GatewayId"], self._id(),
                             r.get("Enabled", True)))
        if sum(1 for x in table.routes if x.route_type == "USER") + len(new) > self.limit:
            raise _Error("LimitExceeded", f"the route table holds at most {self.limit} routes")
        table.routes.extend(new)
        return {"TotalCount": 1, "RouteTableSet": [self._table_wire(table)]}

    def _DeleteRoutes(self, params: dict[str, Any]) -> dict[str, Any]:
        table = self._table(params)
        ids = {r.get("RouteId") for r in params["Routes"]}
        gone = [r for r in table.routes if r.route_id in ids and r.route_type == "USER"]
        if len(gone) != len(ids):
            raise _Error("InvalidParameterValue", f"route ids {sorted(map(str, ids))} not all in the table")
        table.routes = [r for r in table.routes if r not in gone]
        return {"RouteSet": [r.wire(table.table_id) for r in gone]}


class _Error(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(code)
        self.code = code
        self.message = message


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def metadata_paths(region: str, mac: str, vpc_id: str) -> dict[str, str]:
    """The CVM metadata paths the backend reads (under ``/latest/meta-data``)."""
    base = "/latest/meta-data"
    return {f"{base}/placement/region": region, f"{base}/mac": mac,
            f"{base}/network/interfaces/macs/{mac}/vpc-id": vpc_id}
