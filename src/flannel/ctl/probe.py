"""``flannelctl probe``: from this node, is every peer reachable over the overlay, how fast, and how large a
packet crosses with DF set (``flannel.probe``; the same engine flanneld runs for its map and metrics).

The peers are the leases flanneld on this node programs: the store's listing passed through flanneld's own
tracker and guard (``drift.admitted``), so a lease this node refuses (a conflict) is not probed as if it should
work (``flannelctl leases`` names it). This node's subnet comes from ``subnet.env``.

Each peer is probed in every family the cluster has (IPv4, and IPv6 on a dual-stack cluster): one row each.
Findings: an unreachable peer is an error (exit 1); so is a path MTU below ``FLANNEL_MTU``, since pods send
packets of that size and the overlay drops them (vxlan over an underlay with a smaller MTU, a blocked
"fragmentation needed"); for IPv6 the bar is the route's own MTU (``assess``). A host-gw peer with no pod yet
has nothing in its subnet to answer (``no_target``, ``flannel.probe``): a warning, not an error, when its public
IP answers. Raw ICMP needs root, or a group in ``net.ipv4.ping_group_range``: without either the
command says so and exits 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flannel import probe
from flannel.config import NetworkConfig
from flannel.ctl import drift
from flannel.ctl.datastore import Record, StoreUnreachable, connected, read_config, read_nodes, read_records
from flannel.ctl.output import ERROR, WARNING, Finding, paint, render_findings, table
from flannel.ctl.status import own_subnets
from flannel.daemon.flags import Options
from flannel.lease import UNSET_IPV4, Lease, make_subnet_key
from flannel.secret import redact_urls


async def collect(opts: Options, timeout: float) -> tuple[dict[str, Any], list[Finding]]:
    """Probe every peer; the report's JSON and findings."""
    report: dict[str, Any] = {"self": None, "backend_type": None, "mtu": None, "peers": []}
    v4, v6, env, env_error = own_subnets(opts.subnet_file)
    if v4 is None:
        return report, [Finding(ERROR, "no_subnet_env", opts.subnet_file, env_error or "no IPv4 subnet")]
    key = make_subnet_key(v4, v6)
    report["self"] = key
    mtu = int(env["FLANNEL_MTU"]) if env.get("FLANNEL_MTU", "").isdigit() else None
    report["mtu"] = mtu
    try:
        config, config_error, records = await _read(opts, timeout)
    except StoreUnreachable as exc:
        where = opts.kube_api_url or "the API server" if opts.kube_subnet_mgr else redact_urls(opts.etcd_endpoints)
        return report, [Finding(ERROR, "store_unreachable", where, str(exc))]
    if config is None:
        return report, [Finding(ERROR, "config", opts.net_config_path if opts.kube_subnet_mgr else opts.etcd_prefix,
                                config_error)]
    report["backend_type"] = config.backend_type
    leases = [r.lease for r in records if r.lease is not None]
    own = next((lease for lease in leases if lease.subnet == v4), Lease(v4, v6))
    peers = [p for p in drift.admitted(config, own, leases, config.backend_type.lower())
             if p.subnet is not None or p.ipv6_subnet is not None]
    targets = [t for p in peers for t in probe.lease_targets(config, p)]
    try:
        results = await probe.probe_all(targets, timeout=min(timeout, probe.DEFAULT_TIMEOUT))
    except probe.ProbeUnavailable as exc:
        return report, [Finding(ERROR, "probe_unavailable", "icmp", str(exc))]
    report["peers"], findings = assess(results, peers, mtu)
    return report, findings


def assess(results: Sequence[probe.ProbeResult], peers: Sequence[Lease], mtu: int | None
           ) -> tuple[list[dict[str, Any]], list[Finding]]:
    """The peers' JSON rows and the findings: unreachable peers, and paths narrower than ``mtu``."""
    rows: list[dict[str, Any]] = []
    findings: list[Finding] = []
    by_key = {p.key: p for p in peers}
    for r in results:
        lease = by_key[r.peer]
        public = lease.attrs.public_ip
        subnet = lease.ipv6_subnet if r.family == 6 else lease.subnet
        rows.append({**r.as_json(), "subnet": str(subnet),
                     "public_ip": str(public) if public != UNSET_IPV4 else None})
        if r.no_target:
            findings.append(Finding(WARNING, "no_target", r.peer, f"{r.error}: reachability over the overlay is "
                                    "unknown until the node runs a pod"))
        elif not r.reachable:
            findings.append(Finding(ERROR, "unreachable", r.peer, f"{r.address} does not answer over the overlay "
                                    f"({r.error or 'no reply'}): pods on {subnet} cannot be reached from here",
                                    "flannelctl status (drift), then check the underlay between the public IPs"))
        elif (limit := mtu if r.family == 4 else r.route_mtu_bytes) is not None and r.path_mtu_bytes is not None \
                and r.path_mtu_bytes < limit:
            # IPv6: FLANNEL_MTU is the IPv4 device's; the IPv6 device is smaller by design (vxlan: 20 bytes of
            # outer header more) and pods learn that by Packet Too Big. What is lost is a path narrower than it.
            uses = f"pods use MTU {limit}" if r.family == 4 else f"the IPv6 overlay device sends {limit}"
            findings.append(Finding(ERROR, "path_mtu_below_mtu", r.peer, f"the largest IPv{r.family} packet that "
                                    f"crosses with DF set is {r.path_mtu_bytes} bytes, but {uses}: large packets "
                                    "are dropped", "lower the MTU in the network config, or raise the underlay's"))
    return rows, findings


async def _read(opts: Options, timeout: float) -> tuple[NetworkConfig | None, str, list[Record]]:
    if opts.kube_subnet_mgr:
        return await read_nodes(opts, timeout)
    async with connected(opts, timeout) as store:
        _, config, config_error = await read_config(store, opts, timeout)
        return config, config_error, await read_records(store, opts, timeout, ttls=False)


def render(report: dict[str, Any], findings: list[Finding], colour: bool) -> str:
    """The human table: one row per peer."""
    rows = []
    for p in report["peers"]:
        state = paint("ok", "ok", colour) if p["reachable"] else paint("no target", WARNING, colour) \
            if p.get("state") == "no_target" else paint("UNREACHABLE", ERROR, colour)
        rtt = f"{p['rtt_seconds'] * 1000:.2f} ms" if p["rtt_seconds"] is not None else ""
        rows.append([p["peer"], p["public_ip"] or "", p["address"], state, rtt,
                     str(p["path_mtu_bytes"] or ""), p["error"] or ""])
    head = (f"from {report['self'] or '?'}  backend {report['backend_type'] or '?'}  MTU {report['mtu'] or '?'}  "
            f"{len(rows)} peer(s)")
    parts = [head]
    if rows:
        parts.append(table(["PEER", "PUBLIC IP", "TARGET", "STATE", "RTT", "PATH MTU", "ERROR"], rows))
    parts.append(render_findings(findings, colour))
    return "\n\n".join(parts)
