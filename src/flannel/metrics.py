"""flanneld's Prometheus metrics: every metric object in one place, and the few helpers that feed them.

Served at ``/metrics`` by the health server (``daemon/health.py``); ``docs/metrics.md`` lists them. The types
come from ``metrics_core`` (a small registry of our own: prometheus-client would import ``ssl`` and cost
about 9 MiB of a 50 MiB budget).

Usage, from anywhere in the daemon::

    from flannel import metrics
    metrics.TRAFFIC_RULE_REPAIRS.labels("nat").inc()
    DROPS = metrics.counter("flannel_udp_dropped_total", "...", ["reason"])  # same object as metrics.UDP_DROPPED

``counter``/``gauge``/``histogram`` register a metric once and return the registered object on later calls
with the same name, type and labels. On a hot path, keep the child (``c = FAMILY.labels("x")``) and call
``c.inc()``: one attribute add. This module imports nothing heavy and never ``ssl``.
"""

from __future__ import annotations

import errno
import time
from collections import Counter as _Tally
from collections.abc import Iterable, Sequence

from flannel import UPSTREAM_VERSION, __version__
from flannel.metrics_core import CONTENT_TYPE, Counter, CounterChild, Gauge, Histogram, Registry

__all__ = [
    "CONTENT_TYPE", "REGISTRY", "Counter", "CounterChild", "Gauge", "Histogram",
    "counter", "gauge", "histogram", "render",
]

REGISTRY = Registry()
counter = REGISTRY.counter
gauge = REGISTRY.gauge
histogram = REGISTRY.histogram


def render() -> bytes:
    """The whole registry in Prometheus text format (``CONTENT_TYPE``)."""
    return REGISTRY.render()


# -- the daemon --------------------------------------------------------------------------------------------

BUILD_INFO = gauge("flannel_build_info", "Always 1; the labels say which flanneld this is.",
                   ["version", "upstream_version", "backend"])
READY = gauge("flannel_ready", "1 once subnet.env has been written (what /readyz reports), else 0.")
READINESS_PROBLEM = gauge("flannel_readiness_problem",
                          "1 while a readiness condition fails (datastore: the store is unreachable; lease: the own "
                          "lease record is missing; kernel: the reconcile keeps failing), else 0.", ["condition"])


def set_build_info(backend: str) -> None:
    """Publish ``flannel_build_info`` once the backend type is known."""
    BUILD_INFO.labels(__version__, UPSTREAM_VERSION, backend).set(1)


# -- leases ------------------------------------------------------------------------------------------------

LEASE_EXPIRY = gauge("flannel_lease_expiration_timestamp_seconds",
                     "When this node's own subnet lease expires unless renewed (unix time).")
KNOWN_PEERS = gauge("flannel_known_peers", "Remote leases this node currently knows of.")
LEASE_EVENTS = counter("flannel_lease_events_total", "Lease events applied by the backend, by type.", ["type"])
LEASE_ADDED = LEASE_EVENTS.labels("added")
LEASE_REMOVED = LEASE_EVENTS.labels("removed")
LEASE_REJECTED = counter("flannel_lease_rejected_total",
                         "Remote leases skipped because they would disturb another (subnet_len, outside_network, "
                         "overlaps_own, overlaps_lease, duplicate_vtep_mac).", ["reason"])

LEASE_EVENT_TO_KERNEL = histogram(
    "flannel_lease_event_to_kernel_seconds",
    "Time from receiving a batch of lease events from the datastore watch to the kernel being programmed.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))


class _EventLatency:
    """Pairs "events received" (the datastore watch) with "kernel programmed" (the backend) for the histogram.

    The watch hands one batch to the backend, which programs it before asking for the next, so one pending
    timestamp is enough; the earliest unprogrammed batch sets it.
    """

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since: float | None = None

    def received(self) -> None:
        if self._since is None:
            self._since = time.monotonic()

    def programmed(self) -> None:
        if self._since is not None:
            LEASE_EVENT_TO_KERNEL.observe(time.monotonic() - self._since)
            self._since = None


EVENT_LATENCY = _EventLatency()

# -- the kernel --------------------------------------------------------------------------------------------

KERNEL_OPS = counter("flannel_kernel_operations_total",
                     "Netlink changes sent to the kernel, by kind (route_replace, neigh_delete, link_add...).",
                     ["kind"])
KERNEL_ERRORS = counter("flannel_kernel_operation_errors_total",
                        "Netlink changes the kernel refused, by kind.", ["kind"])
NETLINK_TIMEOUTS = counter("flannel_netlink_timeouts_total",
                           "Netlink replies the kernel never sent within the per-reply timeout, by exchange "
                           "(request, dump, get, batch); each failed its call and replaced the socket.",
                           ["exchange"])
RECONCILE_REPAIRS = counter("flannel_reconcile_repairs_total",
                            "Kernel entries found missing, wrong or stale by a reconcile and repaired, by kind.",
                            ["kind"])

_KINDS: dict[type, str] = {}


def _class_kind(cls: type) -> str:
    kind = _KINDS.get(cls)
    if kind is None:
        kind = _KINDS[cls] = "".join("_" + c.lower() if c.isupper() else c for c in cls.__name__).lstrip("_")
    return kind


def op_kind(op: object) -> str:
    """``RouteReplace`` → ``route_replace``: the kind label of a batched netlink operation (cached per class)."""
    return _class_kind(type(op))


_GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL})
"""The errnos ``netlink.errors.is_gone`` reads as "not there": a delete refused with one of them is done."""


def _count_error(kind: str, err: int) -> None:
    if not (err in _GONE and kind.endswith("_delete")):
        KERNEL_ERRORS.labels(kind).inc()


def count_kernel_batch(ops: Sequence[object], failed: Iterable[tuple[int, int]] = ()) -> None:
    """Count a batch of netlink operations, and the refused ones given as ``(index, errno)``.

    One C-level pass over the batch (``collections.Counter``), then one increment per kind. A delete of
    something already gone is not an error: flanneld wanted it gone.
    """
    for cls, n in _Tally(map(type, ops)).items():
        KERNEL_OPS.labels(_class_kind(cls)).inc(n)
    for i, err in failed:
        _count_error(op_kind(ops[i]), err)


_VERBS = {"add": "add", "del": "delete", "delete": "delete", "set": "set", "replace": "replace"}


def count_kernel_request(op: str, err: int = 0) -> None:
    """Count one single netlink request described like an ``ip`` command ("link add flannel.1 ..."), and
    whether the kernel refused it (``err``: its errno, 0 for success).

    Reads ("link show", "route get") are not changes and are not counted.
    """
    obj, _, rest = op.partition(" ")
    verb = _VERBS.get(rest.partition(" ")[0])
    if verb is None:
        return
    kind = f"{obj}_{verb}"
    KERNEL_OPS.labels(kind).inc()
    if err:
        _count_error(kind, err)


def count_repairs(ops: Iterable[object]) -> None:
    """Count the netlink operations a reconcile sends to repair drift, by kind."""
    for op in ops:
        RECONCILE_REPAIRS.labels(op_kind(op)).inc()


# -- the datastore -----------------------------------------------------------------------------------------

WATCH_RECONNECTS = counter("flannel_datastore_watch_reconnects_total",
                           "Times the lease watch was re-established after being lost.")
WATCH_ERRORS = counter("flannel_datastore_watch_errors_total",
                       "Lease watch failures, by reason (unavailable, compacted).", ["reason"])
OWN_LEASE_REPAIRS = counter("flannel_own_lease_repairs_total",
                            "Times this node restored its own lease record after someone overwrote it.")
DATASTORE_FAILOVERS = counter("flannel_datastore_endpoint_failovers_total",
                              "Times a failing datastore endpoint made flanneld switch to the next one.")

# -- traffic rules and the udp backend (incremented by their modules) --------------------------------------

TRAFFIC_RULE_REPAIRS = counter("flannel_traffic_rule_repairs_total",
                               "Traffic rules (iptables/nftables) found missing or changed and restored, by table.",
                               ["table"])
UDP_PACKETS = counter("flannel_udp_packets_total",
                      "Packets carried by the udp backend, by direction (tun_to_udp, udp_to_tun).", ["direction"])
UDP_DROPPED = counter("flannel_udp_dropped_total",
                      "Datagrams the udp backend dropped, by reason (runt, garbage, unknown_source...).", ["reason"])

# -- the overlay probe and the network map (flannel.netmap; only with --map-port or --probe-interval) --------

PROBE_REACHABLE = gauge("flannel_probe_reachable",
                        "1 when the last probe of a peer over the overlay got an echo reply, else 0; by peer lease and "
                        "family (absent for a host-gw peer with nothing to probe yet).", ["peer", "family"])
PROBE_RTT = gauge("flannel_probe_rtt_seconds", "Round trip of the last successful probe echo to a peer.",
                  ["peer", "family"])
PROBE_PATH_MTU = gauge("flannel_probe_path_mtu_bytes",
                       "Largest IP packet (headers included) that last crossed the overlay to a peer with DF set.",
                       ["peer", "family"])
PROBES = counter("flannel_probes_total", "Peer probes run, by result (reachable, unreachable, no_target).",
                 ["result"])
PROBE_LAST = gauge("flannel_probe_last_run_timestamp_seconds", "When the last round of peer probes ended (unix time).")
DRIFT_ENTRIES = gauge("flannel_drift_entries",
                      "Kernel entries that differ from the leases at the last check (missing or stale routes, "
                      "neighbours, FDB entries); vxlan and host-gw.")
LEASE_CONFLICTS = gauge("flannel_lease_conflicts",
                        "Leases in the store that collide with another or with the network config (what "
                        "flannelctl leases flags), at the last check.")
