"""The gce backend (removed upstream in v0.20.0; facts from its last release): a Compute Engine route per node.

Upstream's behaviour, kept: acquire the lease (``PublicIP``, no ``BackendType``); read the project, zone,
instance (the first label of the hostname) and network from the metadata server
(``http://169.254.169.254/computeMetadata/v1``, header ``Metadata-Flavor: Google``); look the network and the
instance up in the Compute API; keep the route named ``flannel-<subnet with . and / as ->`` when its next hop
is this instance, else delete it and insert a new one (destination the own subnet, next hop this instance,
priority 1000, no tags), waiting on each global operation until it is ``DONE``.

Beyond upstream (docs/backends.md): a route that points at another instance is logged naming it before it is
replaced; the route is checked every ``RouteCheckInterval`` seconds and repaired; 429, 5xx and rate-limit
answers are retried with back-off; a refused credential is a clear error naming the credential source; the
project's ``ROUTES`` quota (read from the project) is reported before it is reached.

SDK: ``google-api-python-client`` with its bundled discovery document (``static_discovery=True``, no
download at start-up) and Application Default Credentials from ``google-auth`` (extra ``flannel[gce]``). It
was chosen over ``google-cloud-compute`` for its import cost: 42 MiB RSS against 152 MiB (docs/backends.md).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import google.auth
import google.auth.exceptions
import httplib2
from googleapiclient import discovery, discovery_cache
from googleapiclient.errors import HttpError

from flannel.backend import cloud_metadata
from flannel.backend.backend_config import read_section
from flannel.backend.base import BackendContext, require_ipv4_only
from flannel.backend.cloud_route import (
    CloudAnswerError,
    CloudAuthError,
    CloudError,
    CloudLimitError,
    CloudNotFoundError,
    CloudRouteNetwork,
    CloudWeatherError,
    RouteStatus,
    check_interval,
    ensure_at_start,
)
from flannel.backoff import RepeatLimiter
from flannel.config import NetworkConfig
from flannel.lease import LeaseAttrs

log = logging.getLogger(__name__)
# google-auth warns on every token refresh that httplib2 has no per-request timeout (the Http object has one).
logging.getLogger("google_auth_httplib2").setLevel(logging.ERROR)
T = TypeVar("T")

NAME = "gce"
METADATA_HOST = "169.254.169.254"
METADATA_HOST_ENV = "GCE_METADATA_HOST"
"""google-auth's own variable for the metadata server's host[:port]; our metadata reads honour it too."""
ENDPOINT_ENV = "FLANNEL_GCE_API_ENDPOINT"
"""The Compute API base URL including ``compute/v1/`` (``client_options.api_endpoint``)."""
SCOPE = "https://www.googleapis.com/auth/compute"
PRIORITY = 1000
ROUTE_QUOTA = 250
"""The ``ROUTES`` quota of a project by default, used when the project's own quota cannot be read."""
OPERATION_TIMEOUT = 120.0
"""Seconds to wait for a route insert or delete to be ``DONE`` (upstream: 100 polls, one a second)."""
_RATE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "backendError"}


def route_name(subnet: str) -> str:
    """``10.244.3.0/24`` → ``flannel-10-244-3-0-24`` (upstream's name)."""
    return "flannel-" + subnet.replace(".", "-").replace("/", "-")


class GCEBackend:
    """The config has no keys of its own upstream; ``RouteCheckInterval`` is ours."""

    def __init__(self, ctx: BackendContext, config: NetworkConfig) -> None:
        raw = read_section(NAME, config.backend, ["RouteCheckInterval"])
        require_ipv4_only(NAME, ctx, config)
        self.ctx = ctx
        self.interval = check_interval(raw)

    async def register_network(self, config: NetworkConfig) -> CloudRouteNetwork:
        ext = self.ctx.ext_iface
        assert ext.ext_addr is not None  # require_ipv4_only
        lease = await self.ctx.subnet_manager.acquire_lease(LeaseAttrs(public_ip=ext.ext_addr))
        assert lease.subnet is not None
        driver = await asyncio.to_thread(GCERouteDriver.connect, str(lease.subnet))
        limiter = RepeatLimiter(600.0)
        try:
            ok = await ensure_at_start(driver, limiter)
        except BaseException:
            driver.close()
            raise
        return CloudRouteNetwork(lease, ext.mtu, driver, self.interval, limiter, pending=not ok)


@dataclass(frozen=True)
class Instance:
    """Where this VM runs, from the metadata server."""

    project: str
    zone: str
    name: str
    network: str


def read_instance() -> Instance:
    """Project, zone, instance name and network name (blocking)."""
    base = f"http://{os.environ.get(METADATA_HOST_ENV) or METADATA_HOST}/computeMetadata/v1"
    headers = {"Metadata-Flavor": "Google"}

    def get(path: str) -> str:
        return cloud_metadata.read(f"{base}/{path}", headers)

    project = get("project/project-id").rsplit("/", 1)[-1]
    zone = get("instance/zone").rsplit("/", 1)[-1]
    name = get("instance/hostname").split(".", 1)[0]  # an instance name holds no dot
    network = get("instance/network-interfaces/0/network").rsplit("/", 1)[-1]
    log.info("gce: project %s, zone %s, instance %s, network %s (metadata %s)", project, zone, name, network, base)
    return Instance(project, zone, name, network)


@functools.cache
def compute_document() -> dict[str, Any]:
    """The Compute v1 discovery document bundled with the SDK (what ``static_discovery=True`` reads), parsed once
    per process: no network at start-up, and a client made again (a test, a restart of the check) costs
    nothing."""
    text = discovery_cache.get_static_doc("compute", "v1")
    if text is None:
        raise CloudAnswerError("google-api-python-client carries no Compute v1 discovery document")
    document: dict[str, Any] = json.loads(text)
    return document


def credential_source() -> str:
    """Where Application Default Credentials come from, in words (for auth errors; never the secret)."""
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if path:
        return f"the credentials file {path} (GOOGLE_APPLICATION_CREDENTIALS)"
    host = os.environ.get(METADATA_HOST_ENV) or "metadata.google.internal"
    return f"Application Default Credentials (gcloud's file, else the instance's service account from {host})"


class GCERouteDriver:
    """The own route in the project's routes (blocking SDK calls; run through ``asyncio.to_thread``)."""

    name = NAME

    def __init__(self, compute: Any, instance: Instance, subnet: str) -> None:
        self.compute = compute
        self.instance = instance
        self.subnet = subnet
        self.route = route_name(subnet)
        self.where = f"the routes of project {instance.project}"
        self.limit = ROUTE_QUOTA
        self.network_link = ""
        self.instance_link = ""
        self._stop = threading.Event()

    @classmethod
    def connect(cls, subnet: str) -> GCERouteDriver:
        """Metadata, credentials and the API client; the self links come with the first ``ensure``."""
        instance = read_instance()
        try:
            credentials, _ = google.auth.default(scopes=[SCOPE])
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise CloudAuthError(f"no Google credentials found ({credential_source()}): {exc}") from None
        options = {"api_endpoint": os.environ[ENDPOINT_ENV]} if os.environ.get(ENDPOINT_ENV) else None
        compute = discovery.build_from_document(compute_document(), credentials=credentials, client_options=options)
        return cls(compute, instance, subnet)

    def _links(self) -> None:
        """The network's and the instance's self links, looked up once (inside ``ensure``, so that weather at
        start-up is retried like any other call)."""
        if self.network_link and self.instance_link:
            return
        p, compute = self.instance.project, self.compute
        self.network_link = self._link("networks.get", compute.networks().get(project=p, network=self.instance.network))
        self.instance_link = self._link("instances.get", compute.instances().get(
            project=p, zone=self.instance.zone, instance=self.instance.name))

    def cancel(self) -> None:
        """Stop polling an operation (the daemon is stopping)."""
        self._stop.set()

    def close(self) -> None:
        """Close the client's HTTP connections."""
        self.compute.close()

    def ensure(self) -> RouteStatus:
        self._links()
        p = self.instance.project
        entries = self._quota()
        try:
            route = self._call("routes.get", self.compute.routes().get(project=p, route=self.route))
        except CloudNotFoundError:
            route = None
        if route is not None:
            if route.get("nextHopInstance") == self.instance_link:
                return RouteStatus(changed=False, entries=entries)
            hop = next((f"{k} {v}" for k, v in route.items() if k.startswith("nextHop")), "no next hop")
            log.warning("gce: route %s to this node's subnet %s points at %s, not at this instance (%s): "
                        "replacing it", self.route, route.get("destRange"), hop, self.instance_link)
            self._wait(self._call("routes.delete", self.compute.routes().delete(project=p, route=self.route)))
            entries -= 1
        body = {"name": self.route, "destRange": self.subnet, "network": self.network_link,
                "nextHopInstance": self.instance_link, "priority": PRIORITY, "tags": []}
        self._wait(self._call("routes.insert", self.compute.routes().insert(project=p, body=body)))
        log.info("gce: route %s (%s via instance %s, priority %d) inserted", self.route, self.subnet,
                 self.instance.name, PRIORITY)
        return RouteStatus(changed=True, entries=entries + 1)

    def _quota(self) -> int:
        """The project's ``ROUTES`` usage, and its limit into ``self.limit`` (kept at the default when absent)."""
        project = self._call("projects.get", self.compute.projects().get(project=self.instance.project))
        for quota in project.get("quotas", []):
            if quota.get("metric") == "ROUTES":
                self.limit = int(quota.get("limit", ROUTE_QUOTA))
                return int(quota.get("usage", 0))
        return 0

    def _wait(self, operation: dict[str, Any]) -> None:
        """Poll the global operation until ``DONE``; its error, if any, is raised sorted."""
        deadline = time.monotonic() + OPERATION_TIMEOUT
        delay = 0.1
        while operation.get("status") != "DONE":
            if time.monotonic() > deadline:
                raise CloudWeatherError(f"operation {operation.get('name')} not done after {OPERATION_TIMEOUT:.0f}s")
            if self._stop.wait(delay):
                raise CloudWeatherError(f"stopped waiting for operation {operation.get('name')}")
            delay = min(delay * 2, 2.0)
            operation = self._call("globalOperations.get", self.compute.globalOperations().get(
                project=self.instance.project, operation=operation["name"]))
        errors = (operation.get("error") or {}).get("errors") or []
        if errors:
            first = errors[0]
            text = f"{operation.get('operationType')} {self.route} failed: {first.get('code')}: {first.get('message')}"
            if first.get("code") == "QUOTA_EXCEEDED":
                raise CloudLimitError(f"{text} (the project's ROUTES quota is {self.limit})")
            raise CloudAnswerError(text)

    def _call(self, what: str, request: Any) -> dict[str, Any]:
        """One request; an answer that is not a JSON object (an HTML error page from a proxy) is refused."""
        answer = call(what, request.execute)
        if not isinstance(answer, dict):
            raise CloudAnswerError(f"{what}: unexpected answer from the Compute API: {str(answer)[:200]!r}")
        return answer

    def _link(self, what: str, request: Any) -> str:
        link = self._call(what, request).get("selfLink")
        if not isinstance(link, str) or not link:
            raise CloudAnswerError(f"{what}: the answer has no selfLink")
        return link


def call(what: str, fn: Callable[[], T]) -> T:
    """One API call, its failure sorted into the ``CloudError`` tree."""
    try:
        return fn()
    except HttpError as exc:
        raise sort_http_error(what, exc) from None
    except google.auth.exceptions.TransportError as exc:
        raise CloudWeatherError(f"{what}: cannot reach the token endpoint: {exc}") from None
    except google.auth.exceptions.RefreshError as exc:
        raise CloudAuthError(f"{what}: the credentials were refused ({credential_source()}): {exc}") from None
    except (httplib2.HttpLib2Error, OSError) as exc:
        raise CloudWeatherError(f"{what}: cannot reach the Compute API: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CloudAnswerError(f"{what}: unexpected answer from the Compute API: {exc!r}") from None


def sort_http_error(what: str, exc: HttpError) -> CloudError:
    status = int(exc.resp.status)
    reasons = {d.get("reason") for d in exc.error_details or [] if isinstance(d, dict)}
    text = f"{what} failed: HTTP {status}: {exc.reason}"
    if status == 429 or status >= 500 or reasons & _RATE_REASONS:
        return CloudWeatherError(text)
    if status in (401, 403) and "quotaExceeded" in reasons:
        return CloudLimitError(text)
    if status in (401, 403):
        return CloudAuthError(f"{text} (credentials: {credential_source()}; they need the permissions listed "
                              "in docs/backends.md)")
    if status == 404:
        return CloudNotFoundError(text)
    return CloudAnswerError(text)

