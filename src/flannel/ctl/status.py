"""``flannelctl status``: this node's lease, whether its flanneld is ready and why not, and kernel drift.

Each part is answered from the source an operator would otherwise consult by hand: ``subnet.env`` (what
flanneld told the CNI plugin), the lease record in etcd (what the other nodes see), flanneld's ``/readyz``
(whose body carries the reason, ``flannel.readiness``), and the kernel (``drift``). A part that cannot be
answered (no flanneld, no store) is a finding, and the other parts still run.
"""

from __future__ import annotations

import http.client
import time
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from flannel.config import NetworkConfig
from flannel.ctl import drift
from flannel.ctl.datastore import Record, StoreUnreachable, bounded, connected, read_config, read_nodes, read_records
from flannel.ctl.output import ERROR, WARNING, Finding, duration, paint, render_findings, table
from flannel.daemon.flags import Options
from flannel.daemon.health import join_host_port
from flannel.lease import Lease, make_subnet_key
from flannel.secret import redact_urls
from flannel.subnetenv import read_single_cidr, read_subnet_env_values

READYZ_TIMEOUT = 3.0


def readyz_address(opts: Options) -> tuple[str, int]:
    """Where flanneld's health server answers: ``--healthz-ip``, with a wildcard replaced by loopback."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(opts.healthz_ip, opts.healthz_ip)
    return host, opts.healthz_port


def probe_readyz(host: str, port: int, timeout: float = READYZ_TIMEOUT) -> dict[str, Any]:
    """``GET /readyz``: ``{"url", "ready", "status", "reason"}``; ``ready`` None when nothing answered."""
    url = f"http://{join_host_port(host, port)}/readyz"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/readyz")
        resp = conn.getresponse()
        body = resp.read(64 << 10).decode("utf-8", "replace").strip()
        return {"url": url, "ready": resp.status == 200, "status": resp.status, "reason": body}
    except (OSError, http.client.HTTPException) as exc:
        why = "nothing listens there: flanneld is not running, or has another --healthz-port" if isinstance(
            exc, ConnectionRefusedError) else f"no answer: {exc}"
        return {"url": url, "ready": None, "status": None, "reason": why}
    finally:
        conn.close()


def own_subnets(path: str) -> tuple[IPv4Network | None, IPv6Network | None, dict[str, str], str]:
    """This node's subnets from subnet.env, its values, and why they are unusable (empty when fine)."""
    try:
        values = read_subnet_env_values(path)
    except PermissionError as exc:
        return None, None, {}, f"cannot read {path}: {exc.strerror} (run as root, or as a user who may read it)"
    except OSError as exc:
        return None, None, {}, f"cannot read {path}: {exc.strerror or exc}"
    if not values:
        return None, None, {}, f"{path} does not exist: flanneld has not acquired a lease on this node (or runs " \
                               "with another --subnet-file)"
    v4 = read_single_cidr(values, "FLANNEL_SUBNET", 4)
    v6 = read_single_cidr(values, "FLANNEL_IPV6_SUBNET", 6) if "FLANNEL_IPV6_SUBNET" in values else None
    if not isinstance(v4, IPv4Network):
        return None, None, values, f"{path} has no usable FLANNEL_SUBNET"
    return v4, v6 if isinstance(v6, IPv6Network) else None, values, ""


async def collect(opts: Options, timeout: float) -> tuple[dict[str, Any], list[Finding]]:
    """Every part of the status, as JSON and findings."""
    findings: list[Finding] = []
    v4, v6, env, env_error = own_subnets(opts.subnet_file)
    drift_doc: dict[str, Any] = {"checked": False, "backend_type": None, "entries": [], "unchecked_reason": None}
    report: dict[str, Any] = {"subnet_file": opts.subnet_file, "mtu": None, "lease": None, "flanneld": None,
                              "drift": drift_doc}
    if env_error:
        findings.append(Finding(ERROR, "no_subnet_env", opts.subnet_file, env_error))
    elif env.get("FLANNEL_MTU", "").isdigit():
        report["mtu"] = int(env["FLANNEL_MTU"])
    if opts.healthz_port:
        ready = probe_readyz(*readyz_address(opts))
        report["flanneld"] = ready
        if ready["ready"] is not True:
            code = "flanneld_not_running" if ready["ready"] is None else "flanneld_not_ready"
            findings.append(Finding(ERROR, code, ready["url"], ready["reason"]))
    else:
        findings.append(Finding(WARNING, "readiness_unchecked", "--healthz-port",
                                "flanneld's health port is not given (0): readiness was not checked"))
    if v4 is None:
        drift_doc["unchecked_reason"] = "this node has no lease in subnet.env"
        return report, findings
    key = make_subnet_key(v4, v6)
    try:
        config, config_error, where, records, mine = await _read_store(opts, timeout, key, v4)
    except StoreUnreachable as exc:
        subject = "kube API server" if opts.kube_subnet_mgr else redact_urls(opts.etcd_endpoints)
        findings.append(Finding(ERROR, "store_unreachable", subject, str(exc)))
        drift_doc["unchecked_reason"] = "the store could not be read"
        return report, findings
    report["lease"] = _lease_json(mine.kv.key if opts.kube_subnet_mgr and mine else key, mine)
    if mine is None or mine.lease is None:
        why = "is missing" if mine is None else f"cannot be read ({mine.error})"
        store = "the node list" if opts.kube_subnet_mgr else "etcd"
        findings.append(Finding(ERROR, "own_lease_missing", key, f"this node's lease {why} in {store}: other "
                                "nodes cannot reach its pods"))
    if config is None:
        findings.append(Finding(ERROR, "config", where, config_error))
        drift_doc["unchecked_reason"] = "no valid network config"
        return report, findings
    own = mine.lease if mine is not None and mine.lease is not None else Lease(v4, v6)
    _drift(config, own, [r.lease for r in records if r.lease is not None], drift_doc, findings)
    return report, findings


async def _read_store(opts: Options, timeout: float, key: str, v4: IPv4Network
                      ) -> tuple[NetworkConfig | None, str, str, list[Record], Record | None]:
    """The config, its error and where it lives, every record, and this node's own (by key, or in kube mode by
    the node whose pod CIDR is subnet.env's subnet)."""
    if opts.kube_subnet_mgr:
        config, config_error, records = await read_nodes(opts, timeout)
        mine = next((r for r in records if r.subnets is not None and r.subnets[0] == v4), None)
        return config, config_error, opts.net_config_path, records, mine
    async with connected(opts, timeout) as store:
        kv, config, config_error = await read_config(store, opts, timeout)
        records = await read_records(store, opts, timeout, ttls=False)
        mine = next((r for r in records if r.name == key), None)
        if mine is not None and mine.kv.lease_id:
            ttl, granted = await bounded(store.lease_times(mine.kv.lease_id), timeout, f"look up lease {key}")
            mine = Record(mine.kv, mine.subnets, mine.lease, mine.error, max(ttl, 0), granted)
    return config, config_error, kv.key if kv else opts.etcd_prefix, records, mine


def _drift(config: NetworkConfig, own: Lease, leases: list[Lease], doc: dict[str, Any],
           findings: list[Finding]) -> None:
    from flannel.netlink import Netlink

    doc["backend_type"] = config.backend_type
    try:
        with Netlink() as nl:
            entries = drift.check(nl, config, own, leases)
    except (drift.DriftUnchecked, OSError) as exc:
        doc["unchecked_reason"] = str(exc)
        findings.append(Finding(WARNING, "drift_unchecked", config.backend_type, str(exc)))
        return
    doc["checked"] = True
    doc["entries"] = [{"what": d.what, "fix": d.fix} for d in entries]
    findings += [Finding(ERROR, "drift", d.what, "the kernel differs from the leases (flanneld's reconcile repairs "
                         "this within --reconcile-interval; if it persists, flanneld is stuck or something else "
                         "edits these entries)", d.fix) for d in entries]


def _lease_json(key: str, r: Record | None) -> dict[str, Any]:
    lease = r.lease if r is not None else None
    a = lease.attrs if lease is not None else None
    return {
        "key": key,
        "in_store": r is not None,
        "subnet": str(lease.subnet) if lease and lease.subnet else None,
        "ipv6_subnet": str(lease.ipv6_subnet) if lease and lease.ipv6_subnet else None,
        "public_ip": str(a.public_ip) if a and int(a.public_ip) else None,
        "public_ipv6": str(a.public_ipv6) if a and a.public_ipv6 else None,
        "backend_type": a.backend_type if a else None,
        "reserved": r.reserved if r is not None else None,
        "ttl_seconds": r.ttl if r is not None else None,
        "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + r.ttl))
        if r is not None and r.ttl is not None else None,
    }


def render(report: dict[str, Any], findings: list[Finding], colour: bool) -> str:
    """The human form of a status report."""
    lease = report["lease"] or {}
    expires = "never (reservation)" if lease.get("reserved") else duration(lease.get("ttl_seconds"))
    rows = [["lease", lease.get("key") or "-"], ["public IP", lease.get("public_ip") or lease.get("public_ipv6") or ""],
            ["backend", lease.get("backend_type") or ""], ["expires in", expires],
            ["MTU", str(report["mtu"] or "")]]
    ready = report["flanneld"]
    if ready is None:
        rows.append(["flanneld", "not checked (no --healthz-port)"])
    else:
        state = {True: paint("ready", "ok", colour), False: paint("NOT READY", ERROR, colour),
                 None: paint("NOT RUNNING", ERROR, colour)}[ready["ready"]]
        rows.append(["flanneld", f"{state}: {ready['reason']}"])
    d = report["drift"]
    if d["checked"]:
        n = len(d["entries"])
        rows.append(["drift", paint(f"{n} {'entry' if n == 1 else 'entries'} ({d['backend_type']})", ERROR, colour)
                     if n else paint(f"none ({d['backend_type']})", "ok", colour)])
    else:
        rows.append(["drift", f"not checked: {d['unchecked_reason']}"])
    return table(["NODE", ""], rows) + "\n\n" + render_findings(findings, colour)
