"""The loop shared by the cloud route backends: one route in the VPC's table, for this node's subnet, kept.

A cloud backend (tencent-vpc, gce, ali-vpc, aws-vpc) programs no kernel: each node asks the cloud to route its
own lease subnet to itself, and the VPC's router carries the packets. What differs per cloud is the SDK and
the shape of its table; that part is a ``RouteDriver`` with one blocking method, ``ensure()``, which compares
the table with what this node needs and repairs it (never deleting and re-creating a route that is already
right). What is the same is written here once:

* SDK calls block, so ``ensure()`` runs in a worker thread (``asyncio.to_thread``), never on the loop;
* the cloud's errors are sorted into a small tree: *weather* (throttling, 5xx, a connection that failed) is
  retried with capped back-off and never ends the daemon; *fatal* ones (credentials refused, the VPC or table
  does not exist, an answer the SDK cannot use) end the start-up with a message that names what and where;
  a *full table* is retried slowly, because someone may free an entry;
* after start-up the own route is checked every ``interval`` seconds and repaired when it went missing or
  inactive, and readiness condition ``cloud-route`` says why the node is not ready meanwhile;
* the table's size is compared with its limit on every pass, so an operator hears of a table that is nearly
  full before a node fails to add its route.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from flannel.backend.backend_config import int_key, str_key
from flannel.backend.base import LeasedNetwork
from flannel.backoff import Backoff, RepeatLimiter, repeats
from flannel.errors import ConfigError, FlannelError
from flannel.lease import Lease
from flannel.readiness import CLOUD_ROUTE, READINESS
from flannel.secret import Secret
from flannel.subnet.manager import WatchResult

log = logging.getLogger(__name__)

CHECK_INTERVAL_KEY = "RouteCheckInterval"
DEFAULT_CHECK_INTERVAL = 60
"""Seconds between checks of the own route after start-up (``Backend.RouteCheckInterval``). One read per
node per minute stays far below every cloud's API rate limits even for large clusters."""
RETRY_START = 1.0
"""First delay after weather (throttling, 5xx); doubled up to ``RETRY_CAP``."""
RETRY_CAP = 30.0
NEAR_FULL = 0.8
"""A table at or above this fraction of its limit is reported (warning) on every check, rate-limited."""


class CloudError(FlannelError):
    """A cloud API call failed; the subclass says what the caller can do about it."""


class CloudWeatherError(CloudError):
    """Throttled, a 5xx answer, or the endpoint could not be reached: retry later with back-off."""


class CloudAuthError(CloudError):
    """The credentials were refused or are not allowed to make a call. The message names their source."""


class CloudNotFoundError(CloudError):
    """The VPC, route table, network or instance named by the metadata or config does not exist."""


class CloudAnswerError(CloudError):
    """The API answered with something this backend cannot use (not what its published reference says)."""


class CloudLimitError(CloudError):
    """The route table is full: this node's route cannot be added until an entry is freed."""


class MetadataError(CloudError):
    """The instance metadata service could not be read after bounded retries; the message names the URL."""


@dataclass(frozen=True)
class RouteStatus:
    """The outcome of one ``RouteDriver.ensure()``."""

    changed: bool
    """True if the call created or replaced the route (False: it was already right)."""
    entries: int
    """Entries counted against ``RouteDriver.limit`` (the table's routes, or the project's routes on GCE)."""


class RouteDriver(Protocol):
    """One cloud's half: describe the table, fix this node's route. Methods block (SDK calls)."""

    @property
    def name(self) -> str:
        """The backend name, for log lines (``tencent-vpc``)."""
        ...

    @property
    def where(self) -> str:
        """The table in words, for log lines and errors (``route table rtb-1 of vpc-1``)."""
        ...

    @property
    def limit(self) -> int:
        """How many entries the table holds by default (the cloud's documented quota)."""
        ...

    def ensure(self) -> RouteStatus:
        """Make this node's route present and active; raise a ``CloudError`` subclass on failure."""
        ...


def report_size(driver: RouteDriver, entries: int, limiter: RepeatLimiter) -> None:
    """Warn (once per limiter interval) when the table is nearly full, and say how many entries are left."""
    if entries < driver.limit * NEAR_FULL:
        return
    left = max(driver.limit - entries, 0)
    message = (f"{driver.name}: {driver.where} holds {entries} of its {driver.limit} entries ({left} left); "
               "raise the quota or use fewer, larger node subnets before nodes fail to add their routes")
    held = limiter.check(message)
    if held is not None:
        log.warning("%s%s", message, repeats(held))


async def ensure_once(driver: RouteDriver, limiter: RepeatLimiter) -> RouteStatus:
    """One ``ensure()`` in a worker thread, with the table size reported.

    A cancelled await cannot stop the thread, and ``asyncio.run`` waits for it at exit; so cancellation (a
    SIGTERM) also tells a driver that polls (a GCE operation, an Aliyun entry becoming Available) to stop
    polling, through its optional ``cancel()``.
    """
    try:
        status = await asyncio.to_thread(driver.ensure)
    except asyncio.CancelledError:
        cancel = getattr(driver, "cancel", None)
        if cancel is not None:
            cancel()
        raise
    report_size(driver, status.entries, limiter)
    return status


async def ensure_at_start(driver: RouteDriver, limiter: RepeatLimiter, attempts: int = 4) -> bool:
    """The start-up pass: fatal errors are raised; weather is retried ``attempts`` times with back-off, then
    left to the periodic check (the node starts unready rather than not at all). True if the route is right."""
    backoff = Backoff(RETRY_START, RETRY_CAP)
    for attempt in range(1, attempts + 1):
        try:
            await ensure_once(driver, limiter)
        except (CloudWeatherError, CloudLimitError) as exc:
            if attempt == attempts or isinstance(exc, CloudLimitError):
                READINESS.problem(CLOUD_ROUTE, f"{driver.name}: {exc}")
                log.error("%s: cannot program this node's route in %s yet: %s (the check every interval "
                          "keeps trying)", driver.name, driver.where, exc)
                return False
            delay = backoff.advance_jittered()
            log.warning("%s: %s (attempt %d of %d, retrying in %.1fs)", driver.name, exc, attempt, attempts, delay)
            await asyncio.sleep(delay)
        else:
            return True
    return False


class CloudRouteNetwork(LeasedNetwork):
    """The lease, the MTU (the external interface's), and the periodic check of the own route.

    Other nodes' leases concern nothing here (each node programs only its own route, as upstream), so the
    lease watch is drained and ignored.
    """

    def __init__(self, lease: Lease, mtu: int, driver: RouteDriver, interval: float,
                 limiter: RepeatLimiter | None = None, pending: bool = False) -> None:
        super().__init__(lease, mtu)
        self.driver = driver
        self.interval = interval
        self.pending = pending
        """True when the start-up pass could not program the route: the first check comes soon, not after
        a whole interval."""
        self._limiter = limiter or RepeatLimiter(600.0)
        self._quiet = RepeatLimiter(60.0)

    async def run(self, results: AsyncIterator[WatchResult]) -> None:
        await self.keep_route()

    async def keep_route(self) -> None:
        """Check every ``interval`` seconds; after a failure, retry sooner (capped back-off) until it works."""
        backoff = Backoff(RETRY_START, min(RETRY_CAP, self.interval))
        delay = RETRY_START if self.pending else self.interval
        while True:
            await asyncio.sleep(delay)
            try:
                status = await ensure_once(self.driver, self._limiter)
            except CloudError as exc:
                self._failed(exc)
                delay = backoff.advance_jittered() if isinstance(exc, CloudWeatherError) else self.interval
                continue
            if status.changed:
                log.warning("%s: this node's route in %s was missing or wrong, repaired", self.driver.name,
                            self.driver.where)
            READINESS.resolved(CLOUD_ROUTE)
            self._quiet.reset()
            backoff.reset()
            delay = self.interval

    def _failed(self, exc: CloudError) -> None:
        """Unready with the reason, and one log line per distinct failure a minute; the daemon keeps running
        (a revoked key or a full table is for the operator to fix; restarting would not fix it)."""
        READINESS.problem(CLOUD_ROUTE, f"{self.driver.name}: {exc}")
        message = f"{self.driver.name}: checking this node's route in {self.driver.where} failed: {exc}"
        held = self._quiet.check(message)
        if held is not None:
            log.error("%s%s", message, repeats(held))


@dataclass(frozen=True)
class AccessKey:
    """An access key pair (Aliyun, Tencent) and where it was found, for error messages."""

    key_id: Secret[str]
    """The key id (``AccessKeyID``); held as a secret too, since it names the account."""
    key_secret: Secret[str]
    """The key secret (``AccessKeySecret``)."""
    source: str
    """Where the pair came from, in words (never the values)."""


def access_key(backend: str, raw: Mapping[str, Any]) -> AccessKey:
    """``Backend.AccessKeyID``/``AccessKeySecret``; if either is empty, both from ``ACCESS_KEY_ID``/
    ``ACCESS_KEY_SECRET`` in the environment (upstream's rule); a ``ConfigError`` if there is no pair."""
    key_id, key_secret = str_key(raw, "AccessKeyID"), str_key(raw, "AccessKeySecret")
    source = "Backend.AccessKeyID/Backend.AccessKeySecret of the network config"
    if not key_id or not key_secret:
        key_id, key_secret = os.environ.get("ACCESS_KEY_ID", ""), os.environ.get("ACCESS_KEY_SECRET", "")
        source = "the environment variables ACCESS_KEY_ID/ACCESS_KEY_SECRET"
        if not key_id or not key_secret:
            raise ConfigError(f"{backend} backend: ACCESS_KEY_ID and ACCESS_KEY_SECRET must be provided (set "
                              "Backend.AccessKeyID and Backend.AccessKeySecret, or both environment variables)",
                              "Backend.AccessKeyID")
    return AccessKey(Secret(key_id), Secret(key_secret), source)


def check_interval(raw: Mapping[str, Any]) -> int:
    """``Backend.RouteCheckInterval`` (seconds, beyond upstream): how often the own route is checked."""
    return int_key(raw, CHECK_INTERVAL_KEY, DEFAULT_CHECK_INTERVAL, lo=1, hi=86400)
