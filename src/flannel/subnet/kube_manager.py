"""The Kubernetes subnet manager (``--kube-subnet-mgr``, spec §7): leases are nodes' ``podCIDR`` plus annotations.

The own lease is the node's ``spec.podCIDR(s)``; flanneld publishes how to reach it in the node's annotations
(patched through the ``status`` subresource, as upstream, which is why RBAC grants ``nodes/status: patch``).
Other nodes' leases come from a LIST and WATCH of all nodes, turned into the same ``WatchResult`` stream the
etcd manager produces: a snapshot after every (re)list, then events. The pure rules live in
``kube_annotations`` and ``kube_nodes``; the HTTP client in ``flannel.kube``.

Beyond upstream:

* a node whose ``podCIDR`` is not assigned yet is waited for (logged every 10 s, naming the node and the field)
  instead of exiting into a crash loop (upstream #728, #2232);
* a node with malformed annotations is skipped with a warning naming it, and its last good lease is kept;
  removals go by node name, so a deleted node's routes go even when its annotations were unusable;
* a lost watch resumes from the last resourceVersion; only a ``410 Gone`` costs a re-list;
* an API server that is down, hanging, shedding load (429 ``Retry-After``) or failing (5xx) is weather: every
  loop retries with capped, jittered back-off, ``/readyz`` says ``datastore`` meanwhile, the kernel keeps
  its state, and the watch resumes within a few seconds of the server's return;
* the own node is kept true for the whole run (``kube_own_node``): re-created or re-annotated, its annotations
  are published again; a node whose lease overlaps this node's subnet is never programmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from flannel import metrics
from flannel.backoff import Backoff
from flannel.config import NetworkConfig, parse_network_config
from flannel.errors import ConfigError, FlannelError, LeaseDecodeError
from flannel.kube.client import KubeClient
from flannel.kube.errors import GoneError, KubeApiError, KubeUnavailableError, retry_delay
from flannel.lease import Lease, LeaseAttrs
from flannel.readiness import DATASTORE, READINESS
from flannel.subnet.kube_annotations import (
    AnnotationNames,
    is_flannel_node,
    node_name,
    node_public_ips,
    own_annotation_patch,
    stored_vtep_mac,
)
from flannel.subnet.kube_nodes import (
    PodCidrNotAssignedError,
    network_unavailable_patch,
    node_to_lease,
    own_pod_cidrs,
)
from flannel.subnet.kube_own_node import RETRY_CAP, RETRY_INITIAL, OwnNodeKeeper, OwnNodeState
from flannel.subnet.manager import WatchResult

log = logging.getLogger(__name__)

LEASE_TTL = 24 * 3600.0
"""Nominal lifetime of a kube lease (never renewed: the node object is the lease)."""
PATCH_RETRY_EVERY, PATCH_RETRY_FOR = 3.0, 30.0
"""Upstream retries the annotation patch every 3 s for up to 30 s."""
LIST_PAGE = 50
"""Nodes per list page. A decoded page is held in full: measured at 5000 nodes, 500 cost ~10 MiB more peak RSS
than 100, and 100 0.6 MiB more than 50 after a re-list (25: 0.1 MiB less again, the initial sync 0.5 s slower)."""
SHORT_WATCH = 1.0
"""A watch that ends within this many seconds having delivered nothing is followed by a back-off pause."""
SYNC_DEADLINE = 600.0
"""Upstream waits up to 10 minutes for the first node list before giving up (``CONT_WHEN_CACHE_NOT_READY``)."""


@dataclass(frozen=True)
class KubeManagerOptions:
    """What the kube subnet manager needs besides the client."""

    net_conf_path: str
    """The net-conf.json file (``--net-config-path``)."""
    names: AnnotationNames
    """Annotation names from ``--kube-annotation-prefix``."""
    node_name: str = ""
    """This node's name (``NODE_NAME``); empty: looked up from ``POD_NAMESPACE``/``POD_NAME``."""
    pod_namespace: str = ""
    """``POD_NAMESPACE``, for the node-name lookup."""
    pod_name: str = ""
    """``POD_NAME``, for the node-name lookup."""
    set_node_network_unavailable: bool = True
    """Patch ``NetworkUnavailable=False`` on the node once the lease is held."""
    queue_depth: int = 5000
    """``EVENT_QUEUE_DEPTH``: watch events read ahead of the backend before the watch waits."""
    cont_when_cache_not_ready: bool = False
    """``CONT_WHEN_CACHE_NOT_READY``: keep going when the first node list takes longer than 10 minutes."""
    podcidr_log_every: float = 10.0
    """Seconds between "waiting for podCIDR" log lines (and polls of the node)."""
    watch_timeout: int = 300
    """``timeoutSeconds`` of each watch request; the watch is renewed from the last version after it."""
    own_node_check: float = 10.0
    """Seconds between reads of the own node (besides those its watch events trigger), see ``kube_own_node``."""
    check_timeout: float = 10.0
    """Time limit of each such read: a hanging API server shows as not ready within this."""

    @staticmethod
    def from_environ(net_conf_path: str, names: AnnotationNames, set_unavailable: bool,
                     environ: Mapping[str, str]) -> KubeManagerOptions:
        """Read ``NODE_NAME``, ``POD_NAME``, ``POD_NAMESPACE``, ``EVENT_QUEUE_DEPTH``, ``CONT_WHEN_CACHE_NOT_READY``."""
        depth_text, depth = environ.get("EVENT_QUEUE_DEPTH", ""), 5000
        if depth_text:
            try:
                value = int(depth_text)
            except ValueError:
                raise ConfigError(f'env EVENT_QUEUE_DEPTH={depth_text} format error: strconv.Atoi: parsing '
                                  f'"{depth_text}": invalid syntax', "EVENT_QUEUE_DEPTH") from None
            if value > 0:  # upstream ignores 0 and negative values
                depth = value
        return KubeManagerOptions(
            net_conf_path=net_conf_path, names=names, node_name=environ.get("NODE_NAME", ""),
            pod_namespace=environ.get("POD_NAMESPACE", ""), pod_name=environ.get("POD_NAME", ""),
            set_node_network_unavailable=set_unavailable, queue_depth=depth,
            cont_when_cache_not_ready=environ.get("CONT_WHEN_CACHE_NOT_READY", "") == "true")


class KubeSubnetManager:
    """``SubnetManager`` over the Kubernetes API."""

    def __init__(self, client: KubeClient, options: KubeManagerOptions) -> None:
        self.client = client
        self.opts = options
        self.names = options.names
        self.node_name = options.node_name
        self.config_key = options.net_conf_path
        self._config: NetworkConfig | None = None
        self._own_node: dict[str, Any] | None = None
        self._known: dict[str, Lease] = {}
        self._version = ""
        """The resourceVersion the node watch resumes from (the last one seen); empty: list again."""
        self._lease: Lease | None = None
        self._own = OwnNodeState(asyncio.Event(), rewatch=self.client.abort_watches)
        self._overlapping: set[str] = set()
        self._streaming = False  # the current watch was accepted: losing it says nothing of the server yet

    # -- start-up ----------------------------------------------------------------------------------------

    async def get_network_config(self) -> NetworkConfig:
        """Read net-conf.json (no validation or defaulting, as upstream) and, the first time, find this node."""
        try:
            with open(self.opts.net_conf_path, "rb") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(f"failed to read net conf: {exc}") from None
        try:
            config = parse_network_config(text)
        except ConfigError as exc:
            raise ConfigError(f"error parsing subnet config: {self.opts.net_conf_path}: {exc}", exc.field) from None
        if not self.node_name:
            self.node_name = await self._node_name_from_pod()
        if self._own_node is None:
            self._own_node = await self.client.get_node(self.node_name)
        self._config = config
        return config

    async def _node_name_from_pod(self) -> str:
        ns, pod = self.opts.pod_namespace, self.opts.pod_name
        if not ns or not pod:
            raise FlannelError("env variables POD_NAME and POD_NAMESPACE must be set")
        spec = (await self.client.get_pod(ns, pod)).get("spec") or {}
        name = spec.get("nodeName") or ""
        if not name:
            raise FlannelError(f"node name not present in pod spec '{ns}/{pod}'")
        return str(name)

    def public_ip_overrides(self) -> tuple[str, str]:
        """The ``node-public-ip``/``node-public-ipv6`` annotations, which replace ``--public-ip(v6)`` (§2 step 8)."""
        return node_public_ips(self._own_node or {}, self.names)

    def stored_vtep_macs(self) -> tuple[str | None, str | None]:
        """The VTEP MACs this node advertised before (its backend-data annotations), to keep them (§10.2)."""
        node = self._own_node or {}
        return stored_vtep_mac(node, self.names), stored_vtep_mac(node, self.names, v6=True)

    async def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        """The own node's podCIDR(s) as the lease, after publishing ``attrs`` in its annotations."""
        config = self._config
        if config is None:
            raise FlannelError("acquire_lease called before get_network_config")
        node = await self._wait_for_pod_cidr(config)
        v4, v6 = own_pod_cidrs(node, config)
        patch = own_annotation_patch(node, self.names, attrs)
        if patch is not None:
            await self._patch_status(patch, "annotations")
            log.info("published this node's lease attributes in the annotations of node %s", self.node_name)
        # Upstream marks the lease IPv4-only for backends other than vxlan, host-gw and wireguard but keeps its
        # IPv6 subnet, which subnet.env lists; nothing reads the flag on Linux, so the subnets are kept as they are.
        lease = Lease(subnet=v4, ipv6_subnet=v6, attrs=attrs, expiration=time.time() + LEASE_TTL)
        metrics.LEASE_EXPIRY.set(lease.expiration)
        self._lease = lease
        return lease

    async def _wait_for_pod_cidr(self, config: NetworkConfig) -> dict[str, Any]:
        """The own node once its podCIDR is assigned; meanwhile a log line every ``podcidr_log_every`` seconds."""
        while True:
            node = await self.client.get_node(self.node_name)
            try:
                own_pod_cidrs(node, config)
            except PodCidrNotAssignedError:
                log.warning("node %s has no spec.podCIDR yet (is the controller manager allocating node CIDRs?); "
                            "waiting for it", self.node_name)
                await asyncio.sleep(self.opts.podcidr_log_every)
                continue
            except FlannelError as exc:  # outside the Network, 3+ CIDRs: an operator must fix something
                raise ConfigError(str(exc)) from None
            self._own_node = node
            return node

    async def _patch_status(self, patch: dict[str, Any], what: str) -> None:
        deadline = time.monotonic() + PATCH_RETRY_FOR
        while True:
            try:
                await self.client.patch_node_status(self.node_name, patch)
                return
            except KubeUnavailableError as exc:
                if time.monotonic() >= deadline:
                    raise KubeUnavailableError(exc.status, exc.reason,
                                               f"timeout contacting kube-api, failed to patch node "
                                               f"{self.node_name} ({what}): {exc}") from None
                wait = min(exc.retry_after, PATCH_RETRY_FOR) if exc.retry_after else PATCH_RETRY_EVERY
                log.warning("patching node %s (%s) failed, retrying in %gs: %s", self.node_name, what, wait, exc)
                await asyncio.sleep(wait)

    async def complete_lease(self, lease: Lease) -> None:
        """Mark the node's network available (errors only logged), then keep the own node true until cancelled
        (``kube_own_node``); raises ``LeaseRevokedError`` when the node's podCIDR is no longer ``lease``'s."""
        if self.opts.set_node_network_unavailable:
            try:
                await self.client.patch_node_status(self.node_name, network_unavailable_patch(time.time()))
                log.info("set condition NetworkUnavailable=False on node %s", self.node_name)
            except KubeApiError as exc:
                log.error("failed to set NetworkUnavailable=False on node %s: %s", self.node_name, exc)
        if self._config is None:
            raise FlannelError("complete_lease called before get_network_config")
        keeper = OwnNodeKeeper(self.client, self.names, self.node_name, self._config, lease, self._own,
                               set_network_unavailable=self.opts.set_node_network_unavailable,
                               check_every=self.opts.own_node_check, request_timeout=self.opts.check_timeout)
        await keeper.run(self._own_node)

    async def close(self) -> None:
        await self.client.close()

    # -- the watch on all nodes --------------------------------------------------------------------------

    async def watch_leases(self) -> AsyncIterator[WatchResult]:
        """A snapshot after every (re)list, then one result per relevant node event, read ahead by a reader
        task into a queue of ``EVENT_QUEUE_DEPTH`` (the reader waits when it is full)."""
        queue: asyncio.Queue[WatchResult] = asyncio.Queue(self.opts.queue_depth)
        reader = asyncio.get_running_loop().create_task(self._read_nodes(queue), name="kube-node-watch")
        get: asyncio.Task[WatchResult] | None = None
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    reader.result()  # re-raises what ended the reader
                    raise FlannelError("the node watch ended")
                yield get.result()
        finally:
            if get is not None:
                get.cancel()  # still waiting when the consumer was cancelled
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read_nodes(self, queue: asyncio.Queue[WatchResult]) -> None:
        backoff = Backoff(RETRY_INITIAL, RETRY_CAP)
        started = time.monotonic()
        synced = False
        self._version = ""  # every watch_leases starts with a list (and its snapshot)
        listed = ""
        while True:
            try:
                if not self._version:
                    self._version = listed = await self._relist(queue)
                    synced = True
                    backoff.reset()
                while True:
                    began = time.monotonic()
                    if not await self._watch(queue, backoff) and time.monotonic() - began < SHORT_WATCH:
                        # A server that ends every watch at once, with nothing in it, must not make us spin
                        # (client-go's "very short watch" guard).
                        await asyncio.sleep(backoff.advance())
            except GoneError as exc:
                stuck = self._version in ("", listed)  # 410 again with nothing seen since the last list
                self._version = ""
                metrics.WATCH_ERRORS.labels("compacted").inc()
                log.info("node watch: %s; listing the nodes again", exc)
                if stuck:  # a server (or proxy) answering 410 to everything must not make us list in a loop
                    await asyncio.sleep(backoff.advance())
            except KubeApiError as exc:
                metrics.WATCH_ERRORS.labels("unavailable").inc()
                if not self._streaming:  # a watch lost mid-stream is routine; failing to open one is not
                    READINESS.problem(DATASTORE, f"cannot reach the Kubernetes API server: {exc}")
                self._streaming = False  # a list that fails after it (410, then the server away) counts
                wait = retry_delay(backoff, exc)
                log.warning("node watch failed, retrying in %.1fs: %s", wait, exc)
                if not synced and time.monotonic() - started > SYNC_DEADLINE:
                    if not self.opts.cont_when_cache_not_ready:
                        raise FlannelError(f"the node list did not complete within {SYNC_DEADLINE:.0f}s "
                                           f"(set CONT_WHEN_CACHE_NOT_READY=true to keep waiting): {exc}") from None
                    log.warning("the node list did not complete within %.0fs; continuing "
                                "(CONT_WHEN_CACHE_NOT_READY)", SYNC_DEADLINE)
                    started = float("inf")
                await asyncio.sleep(wait)
            metrics.WATCH_RECONNECTS.inc()

    async def _relist(self, queue: asyncio.Queue[WatchResult]) -> str:
        """List every node page by page (never the whole list in memory) and queue the snapshot."""
        listing = self.client.list_nodes(LIST_PAGE, without_status=True)  # a lease is metadata and spec
        known: dict[str, Lease] = {}
        async for page in listing:
            for node in page:
                name = node_name(node)
                last = self._known.get(name)
                lease = self._lease_of(node, last)
                if lease is not None:
                    # The one known when unchanged: the tracker and the backend keep that object (issue #16).
                    known[name] = last if last is not None and last == lease else lease
        self._known = known
        READINESS.resolved(DATASTORE)
        await queue.put(WatchResult(snapshot=tuple(known.values())))
        metrics.EVENT_LATENCY.received()
        log.info("node list: %d flannel nodes besides this one (resourceVersion %s)", len(known),
                 listing.resource_version)
        return listing.resource_version

    async def _watch(self, queue: asyncio.Queue[WatchResult], backoff: Backoff) -> bool:
        """One watch request from ``self._version``, which follows every event, so that the next request resumes
        where this one stopped, whether the server ended it or the connection was lost. True if it saw any."""
        seen = self._streaming = False
        stream = self.client.watch_nodes(self._version, self.opts.watch_timeout, opened=self._watch_alive)
        async with contextlib.aclosing(stream):
            async for kind, node in stream:
                seen = True
                self._watch_alive()  # an event or bookmark: the server answers (after a hang, say)
                backoff.reset()  # the watch is up: a later failure starts again from the initial delay
                self._version = str((node.get("metadata") or {}).get("resourceVersion") or self._version)
                if kind == "BOOKMARK":
                    continue
                events = self._node_event(kind, node)
                if events:
                    await queue.put(WatchResult(events=tuple(events)))
                    metrics.EVENT_LATENCY.received()
        return seen

    def _watch_alive(self) -> None:
        self._streaming = True
        self._own.watch_heard_at = time.monotonic()
        READINESS.resolved(DATASTORE)

    def _node_event(self, kind: str, node: dict[str, Any]) -> list[tuple[bool, Lease]]:
        """The lease events one node event means: nothing for an unchanged lease (a status heartbeat)."""
        name = node_name(node)
        if name == self.node_name:
            self._own.changed.set()  # deleted, re-created, re-annotated: the keeper looks at once
        old = self._known.get(name)
        new = None if kind == "DELETED" else self._lease_of(node, old)
        if new == old:
            return []
        events: list[tuple[bool, Lease]] = []
        if old is not None and (new is None or not new.same_subnets(old)):
            events.append((False, old))
            del self._known[name]
        if new is not None:
            self._known[name] = new
            events.append((True, new))
        return events

    def _lease_of(self, node: dict[str, Any], last: Lease | None) -> Lease | None:
        """The lease a node stands for; None for this node and for nodes flannel does not manage. A node whose
        annotations cannot be used keeps its last good lease (``last``), with a warning naming it."""
        name = node_name(node)
        if name == self.node_name or not is_flannel_node(node, self.names) or self._config is None:
            return None
        try:
            lease = node_to_lease(node, self.names, self._config)
        except LeaseDecodeError as exc:
            log.warning("skipping node %s: %s%s", name, exc, " (its last good lease is kept)" if last else "")
            return last
        own = self._lease
        if own is not None and _overlaps(lease, own):
            # Its podCIDR was this node's once (this node re-created with another CIDR, a stale object, an IPAM
            # mistake): routing it away from here would take this node's own pods off the air.
            if name not in self._overlapping:
                log.error("node %s claims %s, which overlaps this node's own subnet %s: not programming it "
                          "(two nodes must never share a subnet)", name, lease.key, own.key)
                self._overlapping.add(name)
            return None
        self._overlapping.discard(name)
        return lease


def _overlaps(a: Lease, b: Lease) -> bool:
    # On the numbers the leases hold: ``IPv4Network.overlaps`` caches a broadcast address (and materialises an
    # instance dict) on every node's subnet it checks, +1.3 MiB at 5000 nodes, and ``Lease.subnet`` builds a
    # network object on each read (issue #16).
    for v6, bits in ((False, 32), (True, 128)):
        x, y = a.net_ints(v6), b.net_ints(v6)
        if x is not None and y is not None:
            shift = bits - min(x[1], y[1])  # the shorter prefix decides
            if x[0] >> shift == y[0] >> shift:
                return True
    return False
