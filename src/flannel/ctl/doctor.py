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
import platform
from ipaddress import IPv4Network, ip_network
from typing import Any

from flannel.config import NetworkConfig
from flannel.ctl import doctor_gather as gather
from flannel.ctl.doctor_checks import NodeState, run_checks
from flannel.ctl.output import ERROR, Finding, paint, render_findings, table
from flannel.daemon.flags import Options
from flannel.secret import redact_urls
from flannel.subnetenv import read_subnet_env_values

DEFAULT_CNI_DIR = "/etc/cni/net.d"


def device_name(config: NetworkConfig) -> str | None:
    """The backend's own device, named as the backend names it."""
    kind = config.backend_type.lower()
    if kind == "vxlan":
        from flannel.backend.vxlan_config import parse_vxlan_config
        from flannel.errors import ConfigError

        try:
            return parse_vxlan_config(config.backend).device_name
        except ConfigError:
            return "flannel.1"
    return {"ipip": "flannel.ipip", "udp": "flannel0", "wireguard": "flannel-wg"}.get(kind)


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


def _network(config: NetworkConfig | None, env: dict[str, str]) -> IPv4Network | None:
    if config is not None and config.network is not None:
        return config.network
    try:
        net = ip_network(env.get("FLANNEL_NETWORK", ""), strict=False)
    except ValueError:
        return None
    return net if isinstance(net, IPv4Network) else None


async def collect(opts: Options, timeout: float, cni_dir: str) -> tuple[dict[str, Any], list[Finding]]:
    """Read the node, run every check; the JSON report and the findings."""
    from flannel.ctl.status import probe_readyz, readyz_address
    from flannel.netlink import Netlink

    findings: list[Finding] = []
    is_root = os.geteuid() == 0
    try:
        env = read_subnet_env_values(opts.subnet_file)
    except OSError:
        env = {}
    config = await read_config(opts, timeout, findings)
    kind = config.backend_type.lower() if config is not None else None
    device = device_name(config) if config is not None else None
    iface = opts.iface[0] if opts.iface else None
    with Netlink() as nl:
        underlay, underlay_mtu = gather.underlay(nl, device, iface)
        have_device = gather.device_exists(nl, device)
    release = platform.release()
    bridges = gather.bridges()
    ifaces = [i for i in (underlay, device, *bridges) if i]
    names = [*gather.SYSCTLS, *(f"net.ipv4.conf.{i.replace('.', '/')}.rp_filter" for i in ifaces)]
    unreadable: dict[str, str] = {}
    files, why = gather.cni_files(cni_dir)
    if why:
        unreadable["cni_config"] = why
    if kind is None:
        unreadable["kernel_module"] = unreadable["vxlan_checksum_offload"] = "the backend is unknown (no config)"
    enable_nft = bool(config is not None and config.enable_nftables)
    legacy = nft = None
    if is_root:
        legacy, nft = await asyncio.gather(asyncio.to_thread(gather.run, ["iptables-legacy-save"]),
                                           asyncio.to_thread(gather.run, ["iptables-nft-save"]))
        if legacy is None and nft is None:
            unreadable["forward_policy"] = unreadable["iptables_mixed"] = unreadable["frag_needed"] = \
                "neither iptables-legacy-save nor iptables-nft-save could be run"
    modules = {}
    module = {"vxlan": "vxlan", "ipip": "ipip", "wireguard": "wireguard", "udp": "tun"}.get(kind or "")
    if module is not None:
        modules[module] = "loaded" if have_device else gather.module_state(module, release)
    if opts.kube_subnet_mgr:
        skew, source = await gather.kube_clock_skew(opts.kube_api_url, opts.kubeconfig_file, timeout)
    else:
        source = opts.etcd_endpoints.split(",")[0]
        skew = await asyncio.to_thread(gather.etcd_clock_skew, source, opts.etcd_cafile, opts.etcd_certfile,
                                       opts.etcd_keyfile, timeout)
    state = NodeState(
        backend_type=kind, network=_network(config, env), device=device if have_device else None,
        flannel_mtu=int(env["FLANNEL_MTU"]) if env.get("FLANNEL_MTU", "").isdigit() else None,
        underlay=underlay, underlay_mtu=underlay_mtu, sysctls=gather.read_sysctls(names),
        bridge_nf_present=os.path.isdir("/proc/sys/net/bridge"), bridges=bridges,
        kube_mode=opts.kube_subnet_mgr, iptables_legacy=legacy, iptables_nft=nft,
        enable_nftables=enable_nft, forward_rules=opts.iptables_forward_rules, cni_dir=cni_dir, cni_files=files,
        module_state=modules, kernel_release=release,
        tx_checksum=gather.tx_checksum(device) if have_device and device else None,
        clock_skew=skew, clock_source=redact_urls(source), unreadable=unreadable)
    checks, found = run_checks(state, is_root)
    findings += found
    flanneld = None
    if opts.healthz_port:
        flanneld = await asyncio.to_thread(probe_readyz, *readyz_address(opts), min(timeout, 3.0))
        if flanneld["ready"] is not True:
            code = "flanneld_not_running" if flanneld["ready"] is None else "flanneld_not_ready"
            findings.append(Finding(ERROR, code, flanneld["url"], flanneld["reason"]))
    report = {"root": is_root, "backend_type": kind, "network": str(state.network) if state.network else None,
              "device": state.device, "underlay": {"name": underlay, "mtu": underlay_mtu},
              "flannel_mtu": state.flannel_mtu, "kernel_release": release, "cni_dir": cni_dir,
              "clock": {"source": state.clock_source, "skew_seconds": skew}, "flanneld": flanneld,
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
