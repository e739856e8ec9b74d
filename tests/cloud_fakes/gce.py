"""A strict fake of the Compute Engine API v1 calls of the gce backend, and of the metadata server's token.

Written from the published reference (cloud.google.com/compute/docs/reference/rest/v1): ``networks.get``,
``instances.get``, ``projects.get`` (for the ``ROUTES`` quota), ``routes.get|insert|delete`` and
``globalOperations.get`` under ``/compute/v1/projects/...``, JSON, ``alt=json``, an ``Authorization: Bearer``
token. Inserts and deletes answer an ``Operation`` (``compute#operation``) that is ``PENDING``, then
``RUNNING``, then ``DONE`` on successive polls, and only then takes effect, as the real service does; a quota
failure surfaces as the finished operation's ``error.errors[0].code = QUOTA_EXCEEDED``. Errors have the
documented shape ``{"error": {"code", "message", "errors": [{"domain", "reason", "message"}]}}``.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from tests.cloud_fakes.server import Request, Response

PREFIX = "/compute/v1/"
ROOT = "https://www.googleapis.com/compute/v1/"
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_ROUTE_FIELDS = {"name", "destRange", "network", "nextHopInstance", "priority", "tags", "description"}
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}


class GCECompute:
    """One project: networks, instances (name → zone, IP), routes by name, pending operations, faults."""

    def __init__(self, project: str, tokens: set[str], route_quota: int = 250) -> None:
        self.project = project
        self.tokens = set(tokens)
        self.route_quota = route_quota
        self.networks: set[str] = set()
        self.instances: dict[str, tuple[str, str]] = {}
        self.routes: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, tuple[int, Callable[[], dict[str, Any] | None]]] = {}
        self.faults: list[tuple[str, Any]] = []
        """(method "GET routes", or "*", fault): an HTTP status (int), or (status, reason), or "garbage"."""
        self.calls: list[str] = []
        self.polls_until_done = 2
        """Polls of an operation until it is DONE (the ones before answer RUNNING)."""
        self.service_accounts: dict[str, Any] = {}
        """Service account e-mail → its public key, for the token endpoint."""
        self._lock = threading.Lock()

    def link(self, *parts: str) -> str:
        return ROOT + "/".join(["projects", self.project, *parts])

    def instance_ip(self, link: str) -> str:
        return self.instances[link.rsplit("/", 1)[-1]][1]

    def __call__(self, req: Request) -> Response:
        with self._lock:
            try:
                return self._serve(req)
            except _Error as exc:
                body = {"error": {"code": exc.status, "message": exc.message, "status": _STATUS.get(exc.status, ""),
                                  "errors": [{"message": exc.message, "domain": "global", "reason": exc.reason}]}}
                return Response(exc.status, json.dumps(body).encode())

    def _serve(self, req: Request) -> Response:
        if req.path == "/token":
            return self._token(req)
        if not req.path.startswith(PREFIX):
            raise _Error(404, "notFound", f"no such path {req.path}")
        if req.query.get("alt", "json") != "json":
            raise _Error(400, "invalid", "only alt=json is served")
        if set(req.query) - {"alt"}:
            raise _Error(400, "invalidParameter", f"unexpected query parameters {sorted(req.query)}")
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            raise _Error(401, "authError", "Request had invalid authentication credentials. Expected OAuth 2 "
                         "access token, login cookie or other valid authentication credential.")
        parts = req.path[len(PREFIX):].split("/")
        if parts[:2] != ["projects", self.project]:
            raise _Error(404, "notFound", f"The resource 'projects/{parts[1] if len(parts) > 1 else ''}' was not found")
        rest = parts[2:]
        kind = f"{req.method} {rest[1] if len(rest) > 1 and rest[0] == 'global' else (rest[2] if rest else 'project')}"
        self.calls.append(kind)
        fault = self._fault(kind)
        if fault == "garbage":
            return Response(200, b"<html>not json</html>", {"Content-Type": "text/html"})
        if isinstance(fault, tuple):
            raise _Error(fault[0], fault[1], f"injected {fault[1]}")
        if isinstance(fault, int):
            raise _Error(fault, "backendError", "injected failure")
        return Response(200, json.dumps(self._route(req, rest)).encode())

    def _token(self, req: Request) -> Response:
        """Google's OAuth 2.0 token endpoint for a service account key (RFC 7523 JWT bearer grant): the
        assertion must be an RS256 JWT signed by a key registered in ``service_accounts``, issued by that
        account, for this endpoint's URL, asking for a scope. A credentials file's ``token_uri`` names it."""
        form = dict(parse_qsl(req.body.decode()))
        if req.method != "POST" or form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return _oauth_error("unsupported_grant_type", "Invalid grant_type")
        try:
            head, payload, signature = (base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))
                                        for p in form.get("assertion", "").split("."))
            header, claims = json.loads(head), json.loads(payload)
        except ValueError:
            return _oauth_error("invalid_request", "malformed assertion")
        key = self.service_accounts.get(claims.get("iss", ""))
        if header.get("alg") != "RS256" or key is None:
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        signed = form["assertion"].rsplit(".", 1)[0].encode()
        try:
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        if not claims.get("aud", "").endswith("/token") or not claims.get("scope"):
            return _oauth_error("invalid_grant", "Invalid JWT: aud or scope")
        token = f"ya29.{uuid.uuid4().hex}"
        self.tokens.add(token)
        return Response(200, json.dumps({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}).encode())

    def _fault(self, kind: str) -> Any:
        for i, (name, fault) in enumerate(self.faults):
            if name in (kind, "*"):
                del self.faults[i]
                return fault
        return None

    def _route(self, req: Request, rest: list[str]) -> dict[str, Any]:
        m = req.method
        if not rest and m == "GET":
            return {"kind": "compute#project", "name": self.project, "selfLink": self.link(),
                    "quotas": [{"metric": "ROUTES", "limit": float(self.route_quota),
                                "usage": float(len(self.routes))}]}
        if rest[:2] == ["global", "networks"] and len(rest) == 3 and m == "GET":
            if rest[2] not in self.networks:
                raise _Error(404, "notFound", f"The resource '{self.link('global', 'networks', rest[2])}' was not "
                             "found")
            return {"kind": "compute#network", "name": rest[2], "selfLink": self.link("global", "networks", rest[2])}
        if rest[:1] == ["zones"] and len(rest) == 4 and rest[2] == "instances" and m == "GET":
            zone, name = rest[1], rest[3]
            if self.instances.get(name, ("", ""))[0] != zone:
                raise _Error(404, "notFound", f"The resource 'projects/{self.project}/zones/{zone}/instances/{name}' "
                             "was not found")
            return {"kind": "compute#instance", "name": name, "status": "RUNNING",
                    "selfLink": self.link("zones", zone, "instances", name),
                    "networkInterfaces": [{"networkIP": self.instances[name][1]}]}
        if rest[:2] == ["global", "routes"]:
            return self._routes(req, rest[2:])
        if rest[:2] == ["global", "operations"] and len(rest) == 3 and m == "GET":
            return self._poll(rest[2])
        raise _Error(400, "invalid", f"{m} {req.path} is not served by this fake")

    def _routes(self, req: Request, rest: list[str]) -> dict[str, Any]:
        if req.method == "GET" and len(rest) == 1:
            if rest[0] not in self.routes:
                raise _Error(404, "notFound", f"The resource '{self.link('global', 'routes', rest[0])}' was not found")
            return self.routes[rest[0]]
        if req.method == "DELETE" and len(rest) == 1:
            name = rest[0]
            if name not in self.routes:
                raise _Error(404, "notFound", f"The resource '{self.link('global', 'routes', name)}' was not found")
            return self._operation("delete", name, lambda: self.routes.pop(name) and None)
        if req.method == "POST" and not rest:
            body = json.loads(req.body)
            unknown = set(body) - _ROUTE_FIELDS
            missing = {"name", "destRange", "network", "nextHopInstance"} - set(body)
            if unknown or missing:
                raise _Error(400, "invalid", f"Invalid value for field 'resource': unknown {sorted(unknown)}, "
                             f"missing {sorted(missing)}")
            if not _NAME.match(body["name"]):
                raise _Error(400, "invalid", f"Invalid value for field 'resource.name': '{body['name']}'")
            if body["network"].rsplit("/", 1)[-1] not in self.networks:
                raise _Error(400, "invalid", f"Invalid value for field 'resource.network': '{body['network']}'")
            if body["name"] in self.routes:
                raise _Error(409, "alreadyExists", f"The resource '{self.link('global', 'routes', body['name'])}' "
                             "already exists")
            route = {"kind": "compute#route", "id": str(uuid.uuid4().int % 10**18), "priority": 1000, **body,
                     "selfLink": self.link("global", "routes", body["name"])}
            return self._operation("insert", body["name"], lambda: self._insert(route))
        raise _Error(400, "invalid", f"{req.method} routes/{'/'.join(rest)} is not served by this fake")

    def _insert(self, route: dict[str, Any]) -> dict[str, Any] | None:
        if len(self.routes) >= self.route_quota:
            return {"errors": [{"code": "QUOTA_EXCEEDED", "message": f"Quota 'ROUTES' exceeded.  Limit: "
                                f"{self.route_quota:.1f} globally."}]}
        self.routes[route["name"]] = route
        return None

    def _operation(self, kind: str, target: str, effect: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        name = f"operation-{uuid.uuid4().hex[:12]}"
        op = {"kind": "compute#operation", "id": str(uuid.uuid4().int % 10**18), "name": name,
              "operationType": kind, "targetLink": self.link("global", "routes", target), "status": "PENDING",
              "progress": 0, "selfLink": self.link("global", "operations", name)}
        self.operations[name] = op
        self._pending[name] = (self.polls_until_done, effect)
        return dict(op)

    def _poll(self, name: str) -> dict[str, Any]:
        op = self.operations.get(name)
        if op is None:
            raise _Error(404, "notFound", f"The resource '{self.link('global', 'operations', name)}' was not found")
        if name in self._pending:
            polls, effect = self._pending[name]
            if polls > 1:
                self._pending[name] = (polls - 1, effect)
                op["status"] = "RUNNING"
            else:
                del self._pending[name]
                error = effect()
                op.update(status="DONE", progress=100, **({"error": error} if error else {}))
        return dict(op)


def _oauth_error(code: str, description: str) -> Response:
    return Response(400, json.dumps({"error": code, "error_description": description}).encode())


class _Error(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def metadata_paths(project: str, zone: str, instance: str, network: str, token: str) -> dict[str, Any]:
    """The metadata server's paths the backend and google-auth read (under ``/computeMetadata/v1``)."""
    from tests.cloud_fakes.server import Response as R

    base = "/computeMetadata/v1"

    def token_answer(req: Request) -> Response:
        body = {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
        return R(200, json.dumps(body).encode(), {"Content-Type": "application/json", "Metadata-Flavor": "Google"})

    def account(req: Request) -> Response:
        body = {"aliases": ["default"], "email": f"{instance}@{project}.iam.gserviceaccount.com",
                "scopes": ["https://www.googleapis.com/auth/compute"]}
        return R(200, json.dumps(body).encode(), {"Content-Type": "application/json", "Metadata-Flavor": "Google"})

    def ping(req: Request) -> Response:
        return R(200, b"", {"Metadata-Flavor": "Google", "Content-Type": "text/plain"})

    return {f"{base}/project/project-id": project, f"{base}/instance/zone": f"projects/123456/zones/{zone}",
            f"{base}/instance/hostname": f"{instance}.{zone}.c.{project}.internal",
            f"{base}/instance/network-interfaces/0/network": f"projects/123456/networks/{network}",
            f"{base}/instance/service-accounts/default/token": token_answer,
            f"{base}/instance/service-accounts/default/": account, "/": ping}
