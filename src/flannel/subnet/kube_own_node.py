"""Keeping this node's kube lease true while flanneld runs: kube mode's counterpart of the etcd lease renewal.

Upstream patches the own node once at start-up and never looks at it again (spec §7.6). So when the Node
object is deleted and re-created (an operator, a cloud controller, a kubelet re-registering), the new object
has no flannel annotations, every other node removes its routes to this one, and nothing puts them back until
flanneld restarts. When someone overwrites the annotations (another public IP), other nodes send this node's
traffic elsewhere, silently.

``OwnNodeKeeper`` re-reads the own node whenever the node watch reports a change to it, and every
``check_every`` seconds otherwise (which also notices an API server that stopped answering while the watch
sits silent on its connection):

* deleted: logged loudly, not ready (``lease``), kernel state kept; waits for the node to come back;
* re-created or annotations changed: the annotations are published again (and NetworkUnavailable cleared);
* a different podCIDR (a re-created node's IPAM may hand out another one; the API server forbids changing it
  in place): the subnet this flanneld serves may now be another node's. Like the etcd manager when its lease
  is held by another node, this ends the daemon (``LeaseRevokedError``) so that the restart takes the new
  podCIDR; sharing a subnet between two nodes is never right.

A failure to reach the API server marks the ``datastore`` condition not ready; the first success after a
failure clears it and asks the node watch to reconnect if it has heard nothing since (its connection may
have died silently behind the outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flannel.backoff import Backoff
from flannel.config import NetworkConfig
from flannel.errors import FlannelError, LeaseRevokedError
from flannel.kube.client import KubeClient
from flannel.kube.errors import KubeApiError, NotFoundError, retry_delay
from flannel.lease import Lease
from flannel.readiness import DATASTORE, LEASE, READINESS
from flannel.subnet.kube_annotations import AnnotationNames, node_annotations, own_annotation_patch
from flannel.subnet.kube_nodes import PodCidrNotAssignedError, network_unavailable_patch, own_pod_cidrs

log = logging.getLogger(__name__)

RETRY_INITIAL, RETRY_CAP = 0.5, 4.0
"""Back-off of every kube retry loop: capped low so that flanneld is back within a few seconds of the API
server (the jitter of ``retry_delay`` spreads the nodes out; a loaded server paces them with 429 Retry-After)."""


@dataclass
class OwnNodeState:
    """What the keeper and the node watch share."""

    changed: asyncio.Event
    """Set by the node watch when an event concerns this node: re-read it now."""
    watch_heard_at: float = 0.0
    """``time.monotonic()`` of the last thing the node watch received (an event or a bookmark)."""
    rewatch: Callable[[], object] = lambda: None
    """Reconnect the node watch (set by the manager to cut the client's watch connections)."""


class OwnNodeKeeper:
    """Runs ``KubeSubnetManager.complete_lease`` for one lease."""

    def __init__(self, client: KubeClient, names: AnnotationNames, node_name: str, config: NetworkConfig,
                 lease: Lease, state: OwnNodeState, *, set_network_unavailable: bool, check_every: float,
                 request_timeout: float) -> None:
        self.client = client
        self.names = names
        self.node_name = node_name
        self.config = config
        self.lease = lease
        self.state = state
        self.set_network_unavailable = set_network_unavailable
        self.check_every = check_every
        self.request_timeout = request_timeout
        self._uid = ""
        self._deleted = False
        self._failing_since: float | None = None

    async def run(self, first: dict[str, Any] | None = None) -> None:
        """Check the own node until cancelled; ``first`` is the node as acquire_lease last saw it."""
        if first is not None:
            self._uid = str((first.get("metadata") or {}).get("uid") or "")
        backoff = Backoff(RETRY_INITIAL, RETRY_CAP)
        while True:
            self.state.changed.clear()
            try:
                await self.check()
            except NotFoundError:
                self._reached()
                backoff.reset()
                if not self._deleted:
                    log.error("node %s was deleted from the API server; keeping this node's routes and devices "
                              "and waiting for it to be re-created, then publishing its annotations again",
                              self.node_name)
                    self._deleted = True
                READINESS.problem(LEASE, f"node {self.node_name} does not exist in the API server (deleted)")
                await self._pause(self.check_every)
                continue
            except KubeApiError as exc:
                wait = retry_delay(backoff, exc)
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                READINESS.problem(DATASTORE, f"cannot reach the Kubernetes API server: {exc}")
                log.warning("checking node %s failed, retrying in %.1fs: %s", self.node_name, wait, exc)
                await self._pause(wait)
                continue
            backoff.reset()
            await self._pause(self.check_every)

    async def check(self) -> None:
        """Read the own node once and repair what differs from this flanneld's lease."""
        # resourceVersion=0: answered from the API server's watch cache, so a check costs it no etcd read (at 5000
        # nodes, one check each per 10 s is about as many requests as the kubelets' own node-lease renewals).
        node = await self.client.get_node(self.node_name, "0", timeout=self.request_timeout)
        self._reached()
        uid = str((node.get("metadata") or {}).get("uid") or "")
        try:
            v4, v6 = own_pod_cidrs(node, self.config)
        except PodCidrNotAssignedError:
            READINESS.problem(LEASE, f"node {self.node_name} was re-created and has no podCIDR yet")
            log.warning("node %s has no spec.podCIDR (re-created?); waiting for it", self.node_name)
            return
        except FlannelError as exc:
            v4, v6 = None, None
            why = str(exc)
        else:
            why = f"its podCIDR is now {_cidrs(v4, v6)}"
        if (v4, v6) != (self.lease.subnet, self.lease.ipv6_subnet):
            log.error("node %s: this flanneld serves %s but %s; that subnet may now be another node's. Exiting so "
                      "that the restart takes the node's current podCIDR (never share a subnet)", self.node_name,
                      _cidrs(self.lease.subnet, self.lease.ipv6_subnet), why)
            raise LeaseRevokedError(f"node {self.node_name}: the podCIDR this flanneld serves "
                                    f"({_cidrs(self.lease.subnet, self.lease.ipv6_subnet)}) is no longer the "
                                    f"node's: {why}")
        recreated = bool(self._uid) and uid != self._uid
        patch = own_annotation_patch(node, self.names, self.lease.attrs)
        if patch is not None:
            log.warning("node %s: flannel annotations %s (found %s); publishing them again", self.node_name,
                        "missing on the re-created node" if recreated else "changed by someone else",
                        _flannel_view(node, patch) or "none")
            await self.client.patch_node_status(self.node_name, patch)
        if recreated and self.set_network_unavailable:
            await self.client.patch_node_status(self.node_name, network_unavailable_patch(time.time()))
            log.info("set condition NetworkUnavailable=False on re-created node %s", self.node_name)
        if self._deleted:
            log.info("node %s is back, with this flanneld's podCIDR and annotations", self.node_name)
            self._deleted = False
        self._uid = uid
        READINESS.resolved(LEASE)

    def _reached(self) -> None:
        """The API server answered: clear ``datastore``, and after an outage reconnect a watch that has
        heard nothing since it began."""
        READINESS.resolved(DATASTORE)
        since, self._failing_since = self._failing_since, None
        if since is not None and self.state.watch_heard_at < since and self.state.rewatch():
            log.info("the API server answers again; reconnected the node watch, silent since the outage began")

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the node watch reports a change to this node."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.state.changed.wait(), seconds)


def _cidrs(v4: object, v6: object) -> str:
    return " and ".join(str(c) for c in (v4, v6) if c is not None) or "no podCIDR"


def _flannel_view(node: dict[str, Any], patch: dict[str, Any]) -> str:
    """The node's current values of the annotations the patch sets, for the log line."""
    keys = (patch.get("metadata") or {}).get("annotations") or {}
    current = node_annotations(node)
    return ", ".join(f"{k}={current[k]!r}" for k in keys if k in current)
