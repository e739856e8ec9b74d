"""Pod-to-pod TCP throughput (issue #3): flannel's data paths against the underlay and against hand-built twins.

Every path is measured in the same run, with iperf3 from a pod on host 1 to a pod on host 2, single stream and
``-P 4``, each test bounded in time:

* underlay: iperf3 between the two host namespaces' ``eth0`` addresses (no pods, no flannel);
* flannel, per mode (host-gw, vxlan, udp): a two-host cluster of the end-to-end harness
  (``tests/e2e/cluster.py``), flanneld on both hosts, one pod per host attached by the flannel CNI plugin;
* hand-built, per kernel mode (host-gw, vxlan): the same topology (two hosts on an underlay bridge, a pod on
  each behind a ``cni0`` bridge as the bridge plugin builds it) configured with plain ``ip`` commands the way a
  user would, so that "flannel ÷ hand-built" isolates what flannel's configuration (MTU included) costs.
  flanneld runs with ``--ip-masq`` as it is deployed, and the twins get the rules a user adds for the same
  purpose (one outbound MASQUERADE, FORWARD accepts), so both sides have the same netfilter state (conntrack). udp has
  no kernel equivalent, hence no hand-built twin; it is compared with flannel's vxlan instead.

All setups exist at once and the paths take turns within each round (the order reversed every other round), so
a drift in the load of this shared machine hits a flannel path and its hand-built twin alike. Everything lives in
network namespaces with per-run unique names (``fle<pid>x<random>``, which the harness's stale-namespace cleanup
also recognises); the root namespace is never touched. Every setup is torn down in ``finally`` (processes stopped
by PID, namespaces deleted), SIGTERM included; every iperf3 server serves one test (``-s -1``) and is stopped by
PID; every subprocess has a timeout.

``--netfilter-diagnosis`` adds, per kernel mode, the flannel path with its netfilter rules taken away (flanneld's
FORWARD rules off, the bridge plugin's masquerade flushed), to tell what of a flannel ÷ hand-built gap is netfilter
(conntrack, NAT, rule evaluation) and what is the rest of flannel's configuration.

A mode that is not available (flanneld exits, e.g. udp while it is being built) becomes a row saying why
instead of failing the run; the exit status is then 1 unless the mode is one still being built (udp).

Usage: .venv/bin/python bench/bench_throughput.py [--seconds 5] [--repeat 3] [--modes host-gw,vxlan,udp]
                                                 [--netfilter-diagnosis]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.cluster import NS_FAMILY, Cluster, Host, eventually, in_ns, sh  # noqa: E402

IPERF3 = "iperf3"
PORT = 5201
STREAMS = (1, 4)
MODES = ("host-gw", "vxlan", "udp")
BACKENDS = {"host-gw": '{"Type":"host-gw"}', "vxlan": '{"Type":"vxlan"}', "udp": '{"Type":"udp"}'}
HAND_BUILT = ("host-gw", "vxlan")
"""Modes with a kernel-only equivalent that can be built by hand (udp's forwarding is flanneld itself)."""
STILL_BUILDING = ("udp",)
"""Modes whose absence is expected for now: reported as a row, without failing the run's exit status."""
NETWORK = "10.244.0.0/16"
UNDERLAY_GW = "198.18.0.1"
VXLAN_OVERHEAD = 50
"""Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers: what a vxlan pod MTU gives up."""
VXLAN_VNI, VXLAN_PORT = 1, 8472
FLUSHED = "flannel, netfilter flushed"
TARGET_VS_HAND = 0.95
TARGET_UDP_VS_VXLAN = 0.25
TEST_OVERHEAD_S = 0.3
"""Rough per-test cost beyond ``-t`` (server start, connect, JSON), for the up-front run-time estimate."""


def log(msg: str) -> None:
    """Progress goes to stderr so that stdout holds only the report."""
    print(f"# {msg}", file=sys.stderr, flush=True)


@dataclass
class Ends:
    """Where one path's iperf3 runs: the server's namespace and address, the client's namespace."""

    server_ns: str
    server_ip: str
    client_ns: str
    mtu: int | None
    """The MTU of the client's interface (the pod's eth0, or the host's for the underlay)."""


@dataclass
class DataPath:
    """One measured path and its samples; ``reason`` set when it could not be built or measured."""

    mode: str
    kind: str
    """``underlay``, ``flannel``, ``hand-built`` or ``flannel, netfilter flushed`` (the diagnostic variant)."""
    ends: Ends | None = None
    reason: str | None = None
    check: Callable[[], str] | None = None
    """Run after the measurements; a non-empty answer means the path was not what it claims (then the reason)."""
    samples: dict[int, list[float]] = field(default_factory=lambda: {p: [] for p in STREAMS})

    @property
    def label(self) -> str:
        return "underlay" if self.kind == "underlay" else f"{self.mode} ({self.kind})"

    def median(self, streams: int) -> float | None:
        got = self.samples[streams]
        return statistics.median(got) if got and self.reason is None else None


# -- measuring -----------------------------------------------------------------------------------------


def listening(ns: str, port: int) -> bool:
    r = in_ns(ns, "ss", "-Hltn", f"sport = :{port}", check=False, timeout=10)
    return r.returncode == 0 and bool(r.stdout.strip())


def iperf(ends: Ends, streams: int, seconds: int) -> float:
    """One iperf3 test from ``ends.client_ns`` to ``ends.server_ip``; the receiver's Gbit/s."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", ends.server_ns, IPERF3, "-s", "-1", "-B", ends.server_ip, "-p", str(PORT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not eventually(lambda: listening(ends.server_ns, PORT), timeout=10, every=0.05):
            raise RuntimeError(f"iperf3 server in {ends.server_ns} did not listen")
        r = in_ns(ends.client_ns, IPERF3, "-c", ends.server_ip, "-p", str(PORT), "-t", str(seconds),
                  "-P", str(streams), "--connect-timeout", "5000", "-J", check=False, timeout=seconds + 20)
        result = json.loads(r.stdout) if r.stdout.strip() else {}
        if r.returncode != 0 or "error" in result:
            raise RuntimeError(f"iperf3 client failed ({r.returncode}): {result.get('error', r.stderr.strip())}")
        return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        if server.poll() is None:
            server.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(5)


def measure(paths: list[DataPath], seconds: int, repeat: int) -> None:
    """Fill every available path's samples: ``repeat`` rounds, in each every stream count on every path in turn.

    The order is reversed every other round, so that neither of two neighbours (a flannel path and its
    hand-built twin are neighbours) is always the one measured right after the other. A path whose test
    fails is marked with the reason and left out from then on; the others go on.
    """
    for r in range(repeat):
        order = paths if r % 2 == 0 else paths[::-1]
        for p in STREAMS:
            for path in order:
                if path.ends is None or path.reason is not None:
                    continue
                try:
                    gbps = iperf(path.ends, p, seconds)
                except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError) as exc:
                    path.reason = f"iperf3 failed: {exc}"
                    log(f"round {r + 1}/{repeat}, -P {p}, {path.label}: {path.reason}")
                    continue
                path.samples[p].append(gbps)
                log(f"round {r + 1}/{repeat}, -P {p}, {path.label}: {gbps:.2f} Gbit/s")
    for path in paths:
        left = path.check() if path.check is not None and path.reason is None else ""
        if left.strip():
            path.reason = "netfilter rules came back during the run: " + " ".join(left.split())[:200]
            log(f"{path.label}: {path.reason}")


# -- building ------------------------------------------------------------------------------------------


def link_mtu(ns: str, dev: str) -> int:
    return int(json.loads(in_ns(ns, "ip", "-j", "link", "show", dev).stdout)[0]["mtu"])


class HandBuilt:
    """Two hosts on an underlay bridge, each with a pod behind ``cni0``, configured by hand for ``mode``.

    The layout copies the harness's (``<p>ul`` with ``br0`` 198.18.0.1/24, host N's ``eth0`` 198.18.0.(10+N)/24
    with a default route via ``br0``, forwarding on) and the bridge plugin's (``cni0`` holding the subnet's first
    address, the pod's veth in it with hairpin on, the pod's default route via ``cni0``), without etcd: only
    the data path matters. Host N's pod subnet is 10.244.N.0/24. ``mode`` None builds the hosts only (the
    underlay path).
    """

    def __init__(self, mode: str | None) -> None:
        self.mode = mode
        self.prefix = f"{NS_FAMILY}{os.getpid()}x{os.urandom(2).hex()}"
        self.namespaces: list[str] = []

    def _ns(self, suffix: str) -> str:
        name = f"{self.prefix}{suffix}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)  # recorded before anything else can fail, so close() deletes it
        in_ns(name, "ip", "link", "set", "lo", "up")
        return name

    @staticmethod
    def host_ip(n: int) -> str:
        return f"198.18.0.{10 + n}"

    @staticmethod
    def vtep_mac(n: int) -> str:
        return f"0e:00:00:00:00:{n:02x}"  # locally administered unicast, fixed so the peer can be programmed

    def build(self) -> Ends:
        ul = self._ns("ul")
        in_ns(ul, "ip", "link", "add", "br0", "type", "bridge")
        in_ns(ul, "ip", "addr", "add", f"{UNDERLAY_GW}/24", "dev", "br0")
        in_ns(ul, "ip", "link", "set", "br0", "up")
        hosts = {n: self._host(ul, n) for n in (1, 2)}
        if self.mode is None:
            return Ends(hosts[2], self.host_ip(2), hosts[1], link_mtu(hosts[1], "eth0"))
        underlay_mtu = link_mtu(hosts[1], "eth0")
        pod_mtu = underlay_mtu - VXLAN_OVERHEAD if self.mode == "vxlan" else underlay_mtu
        pods = {n: self._pod(hosts[n], n, pod_mtu) for n in (1, 2)}
        for n, peer in ((1, 2), (2, 1)):
            # What a user adds so that pods reach the outside world and the host forwards pod traffic: the same
            # netfilter state (conntrack on) as flanneld --ip-masq leaves, so the comparison is the data path.
            in_ns(hosts[n], "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.244.0.0/16", "!", "-d",
                  "10.244.0.0/16", "-j", "MASQUERADE")
            for flag in ("-s", "-d"):
                in_ns(hosts[n], "iptables", "-A", "FORWARD", flag, "10.244.0.0/16", "-j", "ACCEPT")
            if self.mode == "host-gw":
                in_ns(hosts[n], "ip", "route", "add", f"10.244.{peer}.0/24", "via", self.host_ip(peer), "dev", "eth0")
            else:
                self._vxlan(hosts[n], n, peer, underlay_mtu - VXLAN_OVERHEAD)
        return Ends(pods[2], "10.244.2.2", pods[1], pod_mtu)

    def _host(self, ul: str, n: int) -> str:
        ns = self._ns(f"h{n}")
        peer = f"v{n}{os.urandom(2).hex()}"
        in_ns(ul, "ip", "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", ns)
        in_ns(ul, "ip", "link", "set", peer, "master", "br0", "up")
        in_ns(ns, "ip", "addr", "add", f"{self.host_ip(n)}/24", "dev", "eth0")
        in_ns(ns, "ip", "link", "set", "eth0", "up")
        in_ns(ns, "ip", "route", "add", "default", "via", UNDERLAY_GW)
        in_ns(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        return ns

    def _pod(self, host: str, n: int, mtu: int) -> str:
        """What the bridge plugin (isGateway, isDefaultGateway, hairpinMode) and host-local would build."""
        ns = self._ns(f"h{n}p1")
        in_ns(host, "ip", "link", "add", "cni0", "mtu", str(mtu), "type", "bridge")
        in_ns(host, "ip", "addr", "add", f"10.244.{n}.1/24", "dev", "cni0")
        in_ns(host, "ip", "link", "set", "cni0", "up")
        veth = f"veth{os.urandom(4).hex()}"
        in_ns(host, "ip", "link", "add", veth, "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
              "mtu", str(mtu), "netns", ns)
        in_ns(host, "ip", "link", "set", veth, "master", "cni0")
        in_ns(host, "ip", "link", "set", veth, "type", "bridge_slave", "hairpin", "on")
        in_ns(host, "ip", "link", "set", veth, "up")
        in_ns(ns, "ip", "addr", "add", f"10.244.{n}.2/24", "dev", "eth0")
        in_ns(ns, "ip", "link", "set", "eth0", "up")
        in_ns(ns, "ip", "route", "add", "default", "via", f"10.244.{n}.1")
        return ns

    def _vxlan(self, host: str, n: int, peer: int, mtu: int) -> None:
        """The kernel's standard VXLAN setup, as flannel's design describes it, one peer."""
        dev = "flannel.1"
        in_ns(host, "ip", "link", "add", dev, "address", self.vtep_mac(n), "mtu", str(mtu), "type", "vxlan",
              "id", str(VXLAN_VNI), "local", self.host_ip(n), "dev", "eth0", "dstport", str(VXLAN_PORT),
              "nolearning")
        in_ns(host, "ip", "addr", "add", f"10.244.{n}.0/32", "dev", dev)
        in_ns(host, "ip", "link", "set", dev, "up")
        vtep = f"10.244.{peer}.0"
        in_ns(host, "ip", "route", "add", f"{vtep}/24", "via", vtep, "dev", dev, "onlink")
        in_ns(host, "ip", "neigh", "replace", vtep, "lladdr", self.vtep_mac(peer), "dev", dev, "nud", "permanent")
        in_ns(host, "bridge", "fdb", "append", self.vtep_mac(peer), "dev", dev, "dst", self.host_ip(peer))

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()


def flanneld_failure(host: Host) -> str:
    """Why flanneld on ``host`` is not ready: its exit status and the last error it logged."""
    status = host.proc.poll() if host.proc is not None else None
    lines = host.log_file.read_text(errors="replace").splitlines() if host.log_file.exists() else []
    errors = [ln for ln in lines if ln.startswith(("E", "F"))] or lines
    last = re.sub(r"^[EFWI]\d{4} [\d:.]+\s+\d+ [^\]]*\] ", "", errors[-1]) if errors else "no log"
    state = f"flanneld exited {status}" if status is not None else "flanneld not ready"
    return f"{state}: {last.strip()}"


def build_flannel(cluster: Cluster, mode: str, flush_netfilter: bool = False) -> Ends:
    """Two hosts running flanneld with ``mode``'s backend and a pod each through the flannel CNI plugin.

    ``flush_netfilter``: the diagnostic variant, whose only difference from the hand-built twin should be
    who configured it: flanneld runs without its FORWARD rules and, once the pods are attached, the hosts'
    nftables rulesets (the bridge plugin's masquerade, as iptables-nft writes it) are flushed, which also
    unregisters the netfilter hooks and so takes conntrack off the path.
    Raises ``RuntimeError`` with a one-line reason when the mode cannot be brought up.
    """
    cluster.start()
    h1, h2 = cluster.add_host(1), cluster.add_host(2)
    # --ip-masq as deployed (kube-flannel.yml): without it the bridge plugin NATs even pod-to-pod traffic.
    extra = ("--iptables-forward-rules=false",) if flush_netfilter else ("--ip-masq",)
    for h in (h1, h2):
        cluster.start_flanneld(h, *extra)  # each cluster has its own etcd, so the default prefix is never shared
    for h in (h1, h2):
        try:
            cluster.wait_ready(h)
        except RuntimeError:
            raise RuntimeError(flanneld_failure(h)) from None
    cluster.add_pod(h1)
    pod2 = cluster.add_pod(h2)
    p1, p2 = cluster.pod_ns(h1, 1), cluster.pod_ns(h2, 1)
    if flush_netfilter:
        for h in (h1, h2):
            in_ns(h.ns, "nft", "flush", "ruleset")
    if not eventually(lambda: cluster.ping(p1, pod2), timeout=20):
        raise RuntimeError(f"pod {pod2} not reachable from h1's pod")
    return Ends(p2, pod2, p1, link_mtu(p1, "eth0"))


def netfilter_rules(cluster: Cluster) -> str:
    """What nftables holds in the cluster's hosts; empty for the diagnostic variant unless rules came back."""
    return "".join(in_ns(h.ns, "nft", "list", "ruleset", check=False).stdout for h in cluster.hosts.values())


def build_all(stack: contextlib.ExitStack, modes: list[str], diagnose: bool) -> list[DataPath]:
    """Every path of the run, in measuring order: underlay, then each mode's flannel path next to its twin.

    ``diagnose`` adds, after each hand-built twin, the flannel path with its netfilter rules flushed.
    """
    paths = [DataPath("underlay", "underlay")]
    for mode in modes:
        paths.append(DataPath(mode, "flannel"))
        if mode in HAND_BUILT:
            paths.append(DataPath(mode, "hand-built"))
            if diagnose:
                paths.append(DataPath(mode, FLUSHED))
    for path in paths:
        started = time.monotonic()
        try:
            if path.kind in ("flannel", FLUSHED):
                cluster = Cluster(network=NETWORK, backend=BACKENDS[path.mode])
                stack.callback(cluster.close)
                path.ends = build_flannel(cluster, path.mode, flush_netfilter=path.kind == FLUSHED)
                if path.kind == FLUSHED:
                    path.check = lambda c=cluster: netfilter_rules(c)
            else:
                hand = HandBuilt(None if path.kind == "underlay" else path.mode)
                stack.callback(hand.close)
                path.ends = build_hand(hand)
        except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else ""
            path.reason = " ".join(f"{exc} {detail}".split())
            path.ends = None
            log(f"{path.label}: not available: {path.reason}")
            continue
        log(f"{path.label}: ready in {time.monotonic() - started:.1f} s, client MTU {path.ends.mtu}")
    return paths


def build_hand(hand: HandBuilt) -> Ends:
    """Build ``hand`` and check that its path carries packets, so a typo shows here and not as an iperf3 error."""
    ends = hand.build()
    if not eventually(lambda: ping(ends), timeout=10):
        raise RuntimeError(f"{ends.server_ip} not reachable from {ends.client_ns}")
    return ends


def ping(ends: Ends) -> bool:
    return in_ns(ends.client_ns, "ping", "-c", "1", "-W", "2", ends.server_ip, check=False, timeout=10).returncode == 0


# -- reporting -----------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def paired_range(a: DataPath, b: DataPath, streams: int) -> str:
    """Min–max of the per-round ratios a/b: each round's pair was measured back to back, so this shows noise."""
    rs = [x / y for x, y in zip(a.samples[streams], b.samples[streams], strict=False) if y]
    return f" ({min(rs):.2f}–{max(rs):.2f})" if len(rs) > 1 else ""


def environment() -> list[str]:
    iperf_version = sh(IPERF3, "--version", check=False, timeout=10).stdout.splitlines()
    return [
        f"kernel {os.uname().release}",
        f"iperf3 {iperf_version[0].split()[1] if iperf_version else '?'}",
        f"{os.cpu_count()} CPUs",
        f"Python {sys.version.split()[0]}",
    ]


def report(paths: list[DataPath], args: argparse.Namespace, started: float, started_at: datetime.datetime,
           load_before: tuple[float, float, float]) -> None:
    by = {(p.mode, p.kind): p for p in paths}
    under = by[("underlay", "underlay")]
    print("| path | streams | pod MTU | flannel Gbit/s | ×underlay | hand-built Gbit/s | ×underlay "
          "| flannel ÷ hand-built (per-round range) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for p in STREAMS:
        if under.reason is not None:
            print(f"| underlay (host to host) | {p} | — | not available: {under.reason} | | | | |")
        else:
            under_mtu = under.ends.mtu if under.ends else None
            print(f"| underlay (host to host) | {p} | {under_mtu} | {fmt(under.median(p))} | 1.00 | — | — | — |")
    modes = [p.mode for p in paths if p.kind == "flannel"]
    variants = [(mode, kind) for mode in modes for kind in ("flannel", FLUSHED) if (mode, kind) in by]
    for mode, kind in variants:
        fl, hb = by[(mode, kind)], by.get((mode, "hand-built"))
        name = mode if kind == "flannel" else f"{mode}, {kind.split(', ', 1)[1]} (diagnostic)"
        for p in STREAMS:
            if fl.reason is not None:
                cells = [f"not available: {fl.reason}", ""]
            else:
                cells = [fmt(fl.median(p)), fmt(ratio(fl.median(p), under.median(p)))]
            mtu_fl = str(fl.ends.mtu) if fl.ends else "—"
            if hb is None:
                cells += ["n/a", "n/a", "n/a"]
                mtu = f"{mtu_fl} / n/a"
            elif hb.reason is not None:
                cells += [f"not available: {hb.reason}", "", "—"]
                mtu = f"{mtu_fl} / —"
            else:
                vs = ratio(fl.median(p), hb.median(p))
                rng = paired_range(fl, hb, p) if vs is not None else ""
                cells += [fmt(hb.median(p)), fmt(ratio(hb.median(p), under.median(p))), f"**{fmt(vs)}**{rng}"]
                mtu = f"{mtu_fl} / {hb.ends.mtu if hb.ends else '—'}"
            print(f"| {name} | {p} | {mtu} | {' | '.join(cells)} |")
    print()
    print("pod MTU: flannel / hand-built. Ratios are of medians; the range is over the rounds' paired tests.")
    if any(kind == FLUSHED for _, kind in variants):
        print("Diagnostic rows: flannel's path with flanneld's FORWARD rules off and the hosts' nftables rulesets "
              "(the bridge plugin's masquerade) flushed after the pods were attached.")
    print()
    for mode in modes:
        fl, hb = by[(mode, "flannel")], by.get((mode, "hand-built"))
        if hb is None or fl.reason is not None or hb.reason is not None:
            continue
        per = [ratio(fl.median(p), hb.median(p)) for p in STREAMS]
        ok = all(v is not None and v >= TARGET_VS_HAND for v in per)
        print(f"* {mode}: flannel ÷ hand-built {' / '.join(fmt(v) for v in per)} "
              f"({' / '.join(str(p) for p in STREAMS)} streams), target ≥ {TARGET_VS_HAND}: "
              f"{'met' if ok else 'NOT met'}")
    if "udp" in modes:
        udp, vx = by[("udp", "flannel")], by.get(("vxlan", "flannel"))
        if udp.reason is not None:
            print(f"* udp ÷ vxlan: not available ({udp.reason})")
        elif vx is None or vx.reason is not None:
            print("* udp ÷ vxlan: no vxlan measurement in this run")
        else:
            v = ratio(udp.median(1), vx.median(1))
            met = "met" if v is not None and v >= TARGET_UDP_VS_VXLAN else "NOT met"
            print(f"* udp ÷ vxlan (flannel, 1 stream): {fmt(v)}, target ≥ {TARGET_UDP_VS_VXLAN}: {met}")
    cmd = shlex.join([".venv/bin/python", "bench/bench_throughput.py", *sys.argv[1:]])
    load_after = os.getloadavg()
    print()
    print(f"Command: `{cmd}`; iperf3 -t {args.seconds}, -P {' and -P '.join(str(p) for p in STREAMS)}, "
          f"{args.repeat} test(s) per cell (median), receiver bitrate; {time.monotonic() - started:.0f} s in all.")
    print(f"Environment: {started_at.strftime('%Y-%m-%d %H:%M UTC')}; {'; '.join(environment())}; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min).")


# -- main ----------------------------------------------------------------------------------------------


def terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so the ``finally`` teardown runs."""
    raise SystemExit(128 + signum)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5, help="length of each iperf3 test (-t)")
    ap.add_argument("--repeat", type=int, default=3, help="tests per cell; the median is reported")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated flannel modes to measure")
    ap.add_argument("--netfilter-diagnosis", action="store_true",
                    help="also measure each kernel mode's flannel path with its netfilter rules flushed")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or args.seconds < 1 or args.repeat < 1:
        ap.error(f"unknown mode(s) {unknown}" if unknown else "--seconds and --repeat must be ≥ 1")
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, terminate)
    started, started_at, load_before = time.monotonic(), datetime.datetime.now(datetime.UTC), os.getloadavg()
    with contextlib.ExitStack() as stack:
        paths = build_all(stack, modes, args.netfilter_diagnosis)
        live = sum(p.ends is not None for p in paths)
        estimate = live * len(STREAMS) * args.repeat * (args.seconds + TEST_OVERHEAD_S)
        log(f"setup took {time.monotonic() - started:.0f} s; measuring {live} paths, about {estimate:.0f} s")
        measure(paths, args.seconds, args.repeat)
    report(paths, args, started, started_at, load_before)
    failed = [p for p in paths if p.reason is not None and p.mode not in STILL_BUILDING]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
