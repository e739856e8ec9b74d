"""``flannelctl leases``: every lease in the cluster, and the conflicts between them.

The conflict rules are flanneld's own (``lease_guard.find_collisions``: outside the network, overlapping an
earlier lease, wrong prefix length, a VtepMAC claimed from another public IP), applied to the whole listing in
creation order, so a lease flagged here is exactly one a node would refuse to program. Two rules exist only
here, because only a cluster-wide view can see them: two leases with one public IP (one of them is stale, or
two nodes share an address), and a lease of another backend than the config's (its node cannot talk to the
others). A record that cannot be decoded is a finding too, never a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from flannel.config import NetworkConfig
from flannel.ctl.datastore import Record
from flannel.ctl.output import ERROR, WARNING, Finding, duration, paint, render_findings, table
from flannel.errors import LeaseDecodeError
from flannel.gojson import fold
from flannel.lease import UNSET_IPV4, Lease
from flannel.subnet.lease_guard import Family, find_collisions

NO_BACKEND_TYPE = frozenset({"udp", "alloc", "tencent-vpc", "gce", "ali-vpc", "aws-vpc"})
"""Backends whose leases carry no ``BackendType`` (spec §5.1; the cloud route backends, as upstream's)."""


def expected_backend_type(config: NetworkConfig) -> str:
    """The ``BackendType`` the config's backend writes into a lease."""
    kind = config.backend_type.lower()
    return "" if kind in NO_BACKEND_TYPE else kind


def families(config: NetworkConfig) -> list[Family]:
    """The guard's families for a cluster-wide check: no own subnet, the checked ``SubnetLen`` enforced (etcd)."""
    out = []
    if config.enable_ipv4 and config.network is not None:
        out.append(Family(v6=False, network=config.network, own=None, subnet_len=config.subnet_len or None))
    if config.enable_ipv6 and config.ipv6_network is not None:
        out.append(Family(v6=True, network=config.ipv6_network, own=None, subnet_len=config.ipv6_subnet_len or None))
    return out


def vtep_mac(lease: Lease, v6: bool = False) -> str:
    """The lease's VtepMAC (vxlan), or empty."""
    try:
        data = lease.attrs.backend_json(v6)
    except LeaseDecodeError:
        return ""
    mac = fold(data, ["VtepMAC"]).get("VtepMAC")
    return mac if isinstance(mac, str) else ""


def check(records: Sequence[Record], config: NetworkConfig | None) -> list[Finding]:
    """Every problem in the listing; ``config`` None skips the checks that need it."""
    findings: list[Finding] = []
    for r in records:
        if r.pending:
            findings.append(Finding(WARNING, "not_annotated", r.kv.key, f"{r.error}: flanneld has not run there yet"))
        elif r.error and r.source == "kube":
            findings.append(Finding(ERROR, "undecodable", r.kv.key, f"cannot be read ({r.error}); flanneld skips it"))
        elif r.error:
            findings.append(Finding(ERROR, "undecodable", r.kv.key, f"cannot be read ({r.error}); flanneld skips it, "
                                    "but no node can be given its subnet while it exists",
                                    f"etcdctl del {r.kv.key}"))
    leases = [r for r in records if r.lease is not None]
    findings += _duplicate_public_ips(leases)
    if config is None:
        return findings
    by_key = {r.lease.key: r for r in leases if r.lease is not None}
    for lease, reason, why in find_collisions(families(config), [r.lease for r in leases if r.lease], vtep_macs=True):
        findings.append(Finding(ERROR, reason, by_key[lease.key].kv.key,
                                f"{why}; nodes do not program this lease"))
    want = expected_backend_type(config)
    for r in leases:
        assert r.lease is not None
        if r.lease.attrs.backend_type != want:
            have = r.lease.attrs.backend_type or "(none: udp or alloc)"
            findings.append(Finding(WARNING, "other_backend", r.kv.key,
                                    f"written by backend {have}, the config says {config.backend_type}: nodes of the "
                                    "configured backend ignore it"))
    return findings


def _duplicate_public_ips(records: Sequence[Record]) -> list[Finding]:
    findings = []
    for v6 in (False, True):
        first: dict[str, str] = {}
        for r in records:
            assert r.lease is not None
            ip = r.lease.attrs.public_ipv6 if v6 else r.lease.attrs.public_ip
            if ip is None or ip == UNSET_IPV4:
                continue
            other = first.setdefault(str(ip), r.kv.key)
            if other != r.kv.key:
                findings.append(Finding(ERROR, "duplicate_public_ip", r.kv.key,
                                        f"public IP {ip} is also lease {other.rsplit('/', 1)[-1]}'s: one of them is "
                                        "stale, or two nodes share an address (their traffic goes to one of them)"))
    return findings


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lease_json(r: Record, problems: Sequence[str], now: float) -> dict[str, Any]:
    """One lease's JSON object (keys documented in docs/flannelctl.md)."""
    lease = r.lease
    a = lease.attrs if lease is not None else None
    v4, v6 = r.subnets if r.subnets is not None else (None, None)
    return {
        "key": r.name,
        "subnet": str(v4) if v4 else None,
        "ipv6_subnet": str(v6) if v6 else None,
        "public_ip": str(a.public_ip) if a is not None and a.public_ip != UNSET_IPV4 else None,
        "public_ipv6": str(a.public_ipv6) if a is not None and a.public_ipv6 else None,
        "backend_type": a.backend_type if a is not None else None,
        "vtep_mac": (vtep_mac(lease) or None) if lease is not None else None,
        "reserved": r.reserved,
        "ttl_seconds": r.ttl,
        "expires_at": _iso(now + r.ttl) if r.ttl is not None else None,
        "renewed_seconds_ago": (r.granted - r.ttl) if r.granted is not None and r.ttl is not None else None,
        "create_revision": r.kv.create_revision,
        "mod_revision": r.kv.mod_revision,
        "error": r.error or None,
        "problems": list(problems),
    }


def build(records: Sequence[Record], config: NetworkConfig | None, config_error: str, config_key: str,
          colour: bool) -> tuple[dict[str, Any], list[Finding], str]:
    """The report's JSON, its findings and its table."""
    findings = [Finding(ERROR, "config", config_key, config_error)] if config_error else []
    findings += check(records, config)
    now = time.time()
    problems: dict[str, list[str]] = {}
    for f in findings:
        problems.setdefault(f.subject, []).append(f.code)
    rows_json = [lease_json(r, problems.get(r.kv.key, []), now) for r in records]
    report = {
        "network": str(config.network) if config and config.network else None,
        "ipv6_network": str(config.ipv6_network) if config and config.ipv6_network else None,
        "backend_type": config.backend_type if config else None,
        "leases": rows_json,
    }
    rows = []
    for r, j in zip(records, rows_json, strict=True):
        expires = "reserved" if j["reserved"] else duration(j["ttl_seconds"])
        flagged = ",".join(j["problems"])
        label = f"{j['key']} {j['subnet'] or ''}".rstrip() if r.source == "kube" else j["key"]  # node and subnet
        rows.append([label, j["public_ip"] or j["public_ipv6"] or "", j["backend_type"] or "",
                     j["vtep_mac"] or "", expires, duration(j["renewed_seconds_ago"]),
                     paint(flagged, ERROR, colour) if flagged else ""])
    head = f"network {report['network'] or '?'}  backend {report['backend_type'] or '?'}  {len(records)} lease(s)"
    text = "\n\n".join([head, table(["LEASE", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES IN", "RENEWED AGO",
                                     "PROBLEMS"], rows), render_findings(findings, colour)])
    return report, findings, text
