"""``flannelctl doctor``: read this node (``doctor_gather``), run the checks (``doctor_checks``), report.

The config (backend type, ``Network``, ``EnableNFTables``) comes from the store flanneld uses, or from
``--net-config-path`` in kube mode; when the store cannot be read, the checks that need the config fall back to
``subnet.env``'s ``FLANNEL_NETWORK`` and skip the backend-specific ones, and everything else still runs. flanneld's
readiness is asked too (when ``--healthz-port`` is given), since "flanneld is not running" is the most common
answer of all.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from flannel.config import NetworkConfig
from flannel.ctl import doctor_gather as gather
from flannel.ctl.doctor_checks import run_checks
from flannel.ctl.output import ERROR, Finding, paint, render_findings, table
from flannel.daemon.flags import Options
from flannel.secret import redact_urls
from flannel.subnetenv import read_subnet_env_values


async def read_config(opts: Options, timeout: float, findings: list[Finding]) -> NetworkConfig | None:
    """The network config from the store (or net-conf.json in kube mode); a finding when it cannot be read."""
    from flannel.ctl.datastore import StoreUnreachable, connected, read_config, read_net_conf

    if opts.kube_subnet_mgr:
        config, error = read_net_conf(opts.net_config_path)
        where = opts.net_config_path
    else:
        try:
            async with connected(opts, timeout) as store:
                kv, config, error = await read_config(store, opts, timeout)
                where = kv.key if kv else opts.etcd_prefix
        except StoreUnreachable as exc:
            findings.append(Finding(ERROR, "store_unreachable", redact_urls(opts.etcd_endpoints), str(exc)))
            return None
    if config is None:
        findings.append(Finding(ERROR, "config", where, error))
    return config


async def collect(opts: Options, timeout: float, cni_dir: str) -> tuple[dict[str, Any], list[Finding]]:
    """Read the node, run every check; the JSON report and the findings."""
    from flannel.ctl.status import probe_readyz, readyz_address

    findings: list[Finding] = []
    is_root = os.geteuid() == 0
    try:
        env = read_subnet_env_values(opts.subnet_file)
    except OSError:
        env = {}
    config = await read_config(opts, timeout, findings)
    state = await gather.read_node(opts, config, env, cni_dir, is_root, timeout)
    checks, found = run_checks(state, is_root)
    findings += found
    flanneld = None
    if opts.healthz_port:
        flanneld = await asyncio.to_thread(probe_readyz, *readyz_address(opts), min(timeout, 3.0))
        if flanneld["ready"] is not True:
            code = "flanneld_not_running" if flanneld["ready"] is None else "flanneld_not_ready"
            findings.append(Finding(ERROR, code, flanneld["url"], flanneld["reason"]))
    report = {"root": is_root, "backend_type": state.backend_type,
              "network": str(state.network) if state.network else None,
              "device": state.device, "underlay": {"name": state.underlay, "mtu": state.underlay_mtu},
              "flannel_mtu": state.flannel_mtu, "kernel_release": state.kernel_release, "cni_dir": cni_dir,
              "clock": {"source": state.clock_source, "skew_seconds": state.clock_skew}, "flanneld": flanneld,
              "checks": checks}
    return report, findings


def render(report: dict[str, Any], findings: list[Finding], colour: bool) -> str:
    """One line per check, then the findings with their fixes."""
    style = {"ok": "ok", "problem": ERROR, "skipped": "dim"}
    rows = [[c["check"], paint(str(c["status"]), style[str(c["status"])], colour), str(c["reason"] or "")]
            for c in report["checks"]]
    head = f"backend {report['backend_type'] or '?'}, underlay {report['underlay']['name'] or '?'} " \
           f"(MTU {report['underlay']['mtu'] or '?'}), FLANNEL_MTU {report['flannel_mtu'] or '?'}" \
           f"{'' if report['root'] else ', not root'}"
    return f"{head}\n\n{table(['CHECK', 'STATUS', ''], rows)}\n\n{render_findings(findings, colour)}"
