"""The network map's data: one JSON document (``/map.json``) built from what flanneld already knows.

A pure function of its inputs (the leases, the last probe results, the last drift check, the lease conflicts,
readiness), so that the page, ``/map.json`` and the tests all see the same thing and the builder can be tested
without a kernel or a store. The keys are documented in docs/map.md and never renamed.

Health of a node box, worst first: ``conflict`` (its lease collides with another or with the config: nodes
do not program it), ``drift`` (this node's kernel lacks or has extra entries for it), ``unreachable`` (the
last probe got no reply, in either family), ``not_ready`` (this node only: ``/readyz`` would answer 503),
``no_target`` (host-gw: the node is up but has no pod yet, so nothing in its subnet answers), ``unknown`` (not
probed yet), ``ok``. Everything but ``ok``, ``no_target`` and ``unknown`` is drawn red; those two are grey.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flannel.lease import UNSET_IPV4, Lease
from flannel.probe import ProbeResult

VERSION = 1
"""Bumped only if a key changes meaning; new keys may appear within a version."""
RED = frozenset({"conflict", "drift", "unreachable", "not_ready"})


@dataclass(frozen=True)
class DriftEntry:
    """One drift entry as the map shows it."""

    what: str
    """The backend's reason (``route to 10.244.3.0/24 missing``)."""
    fix: str
    """The command that repairs it."""


@dataclass(frozen=True)
class Inputs:
    """Everything the map document is built from."""

    own: Lease
    """This node's lease."""
    own_expiry: float
    """When this node's lease expires (unix time; 0 for never or unknown)."""
    peers: Sequence[Lease]
    """The remote leases this node knows of (the lease watch's view)."""
    network: str
    """The config's ``Network``."""
    backend_type: str
    """The config's backend type."""
    ready: bool
    """What ``/readyz`` says."""
    ready_reason: str
    """Its body."""
    probes: Mapping[str, ProbeResult] = field(default_factory=dict)
    """The last IPv4 probe result per peer lease key."""
    probes_v6: Mapping[str, ProbeResult] = field(default_factory=dict)
    """The last IPv6 probe result per peer lease key (dual-stack clusters)."""
    drift_checked: bool = False
    """Whether the last drift check ran."""
    drift_reason: str = ""
    """Why it did not."""
    drift: Sequence[DriftEntry] = ()
    """The entries of the last drift check."""
    conflicts: Sequence[tuple[str, str, str]] = ()
    """``(lease key, reason, message)`` per conflicting lease."""
    probe_interval: float = 0.0
    """Seconds between probe rounds."""
    refresh: float = 2.0
    """Seconds between the page's fetches of ``/map.json``."""
    peer_expiry: Mapping[str, float] | None = None
    """When each peer's lease expires (unix time, 0: not known yet) by key; None where leases do not expire
    (kube mode), which the map says as "n/a"."""


def _iso(ts: float) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts > 0 else None


def _words(text: str) -> set[str]:
    return set(re.split(r"[\s,;()]+", text.lower()))


def drift_peer(entry: DriftEntry, leases: Sequence[Lease]) -> str | None:
    """The key of the lease a drift entry is about (its subnet, first address, public IP or VtepMAC appears in
    it), or None for an entry of no lease (stale ones)."""
    words = _words(entry.what) | _words(entry.fix)
    for lease in leases:
        names = set()
        if lease.subnet is not None:
            names |= {str(lease.subnet), str(lease.subnet.network_address), str(lease.subnet.network_address + 1)}
        if lease.ipv6_subnet is not None:
            names.add(str(lease.ipv6_subnet))
        if lease.attrs.public_ip != UNSET_IPV4:
            names.add(str(lease.attrs.public_ip))
        mac = _vtep_mac(lease)
        if mac:
            names.add(mac.lower())
        if names & words and not entry.what.startswith("stale"):
            return lease.key
    return None


def _vtep_mac(lease: Lease) -> str:
    data = lease.attrs.backend_data or ""
    m = re.search(r'"VtepMAC"\s*:\s*"([0-9a-fA-F:]{17})"', data)
    return m.group(1) if m else ""


def _node(lease: Lease, expiry: float, now: float, own: bool, expires: bool = True) -> dict[str, Any]:
    a = lease.attrs
    return {
        "key": lease.key,
        "self": own,
        "subnet": str(lease.subnet) if lease.subnet else None,
        "ipv6_subnet": str(lease.ipv6_subnet) if lease.ipv6_subnet else None,
        "public_ip": str(a.public_ip) if a.public_ip != UNSET_IPV4 else None,
        "public_ipv6": str(a.public_ipv6) if a.public_ipv6 else None,
        "backend_type": a.backend_type or None,
        "reserved": lease.reserved,
        "expires_at": _iso(expiry) if not lease.reserved else None,
        "expires_in_seconds": round(expiry - now) if expiry > 0 and not lease.reserved else None,
        "lease_expires": expires and not lease.reserved,
        "health": "ok",
        "problems": [],
    }


_WORST = ("unreachable", "no_target", "ok")


def _probe_json(r: ProbeResult) -> dict[str, Any]:
    return {"state": r.state, "reachable": r.reachable, "address": r.address, "rtt_seconds": r.rtt_seconds,
            "path_mtu_bytes": r.path_mtu_bytes, "error": r.error or None, "probed_at": _iso(r.at)}


def _edge(me: str, peer: str, v4: ProbeResult | None, v6: ProbeResult | None) -> dict[str, Any]:
    """One edge: the first family's result at the top level (as before dual stack), each family's under
    ``ipv4``/``ipv6``, and the worst state of the two."""
    results = [r for r in (v4, v6) if r is not None]
    state = next((s for s in _WORST if any(r.state == s for r in results)), "unknown")
    first = results[0] if results else None
    top = _probe_json(first) if first else {"reachable": None, "address": None, "rtt_seconds": None,
                                            "path_mtu_bytes": None, "error": None, "probed_at": None}
    return {"from": me, "to": peer, **top, "state": state,
            "ipv4": _probe_json(v4) if v4 else None, "ipv6": _probe_json(v6) if v6 else None}


def build(inp: Inputs, now: float | None = None) -> dict[str, Any]:
    """The ``/map.json`` document."""
    now = time.time() if now is None else now
    me = _node(inp.own, inp.own_expiry, now, True)
    peers = sorted(inp.peers, key=lambda lease: lease.subnet_int or 0)
    expiry = inp.peer_expiry
    nodes = {me["key"]: me} | {p.key: _node(p, expiry.get(p.key, 0.0) if expiry is not None else 0.0, now, False,
                                            expiry is not None) for p in peers}
    if not inp.ready:
        me["health"] = "not_ready"
        me["problems"].append(f"not ready: {inp.ready_reason}")
    edges = []
    for p in peers:
        v4, v6 = inp.probes.get(p.key), inp.probes_v6.get(p.key)
        edge = _edge(me["key"], p.key, v4, v6)
        edges.append(edge)
        node = nodes[p.key]
        node["health"] = edge["state"]
        for r in (v4, v6):
            if r is not None and r.state == "unreachable":
                node["problems"].append(f"unreachable over the overlay ({r.address}: {r.error or 'no reply'})")
            elif r is not None and r.no_target:
                node["problems"].append(f"not probed: {r.error}")
    drift = []
    for entry in inp.drift:
        peer = drift_peer(entry, peers)
        drift.append({"what": entry.what, "fix": entry.fix, "peer": peer})
        node = nodes.get(peer or me["key"], me)
        node["problems"].append(f"drift: {entry.what}")
        if node["health"] not in ("conflict",):
            node["health"] = "drift"
    conflicts = []
    for key, reason, message in inp.conflicts:
        conflicts.append({"peer": key, "reason": reason, "message": message})
        if key in nodes:
            nodes[key]["health"] = "conflict"
            nodes[key]["problems"].append(f"{reason}: {message}")
    problems = sum(1 for n in nodes.values() if n["health"] in RED) + sum(1 for e in edges if e["state"] in RED)
    return {
        "version": VERSION,
        "generated_at": _iso(now),
        "refresh_seconds": inp.refresh,
        "probe_interval_seconds": inp.probe_interval,
        "network": inp.network,
        "backend_type": inp.backend_type,
        "self": me["key"],
        "ready": inp.ready,
        "ready_reason": inp.ready_reason,
        "healthy": problems == 0 and not drift and not conflicts,
        "nodes": list(nodes.values()),
        "edges": edges,
        "drift": {"checked": inp.drift_checked, "unchecked_reason": inp.drift_reason or None, "entries": drift},
        "conflicts": conflicts,
    }

