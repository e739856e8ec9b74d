"""Pod-to-pod TCP throughput (issue #3): underlay host-to-host, host-gw and vxlan in one run, with iperf3.

For each backend a two-host cluster of the end-to-end harness (``tests/e2e/cluster.py``: namespaces only, the
root namespace is never touched) is built, flanneld started on both hosts, one pod attached to each host by
the flannel CNI plugin, and iperf3 run from the pod of host 1 to the pod of host 2, single stream and
``-P 4``. The underlay is iperf3 between the two host namespaces' ``eth0`` addresses, measured in each
cluster in turns with its pods; a backend's ratio is to the underlay of its own cluster. Every cluster is
torn down (its ``close()``: processes stopped by PID, namespaces deleted) before the next one is built.
Every iperf3 server serves one test (``-s -1``) and is also stopped by PID in ``finally``; every
subprocess has a timeout.

Usage: .venv/bin/python bench/bench_throughput.py [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.cluster import Cluster, eventually, in_ns  # noqa: E402

IPERF3 = "iperf3"
PORT = 5201
STREAMS = (1, 4)
BACKENDS = (("host-gw", '{"Type":"host-gw"}'), ("vxlan", '{"Type":"vxlan"}'))
NOT_IMPLEMENTED = ("udp",)
"""Backends of the issue that do not exist yet: printed as a row saying so."""


def listening(ns: str, port: int) -> bool:
    r = in_ns(ns, "ss", "-Hltn", f"sport = :{port}", check=False, timeout=10)
    return r.returncode == 0 and bool(r.stdout.strip())


def iperf(server_ns: str, server_ip: str, client_ns: str, streams: int, seconds: int) -> float:
    """One iperf3 test from ``client_ns`` to ``server_ip`` (in ``server_ns``); the receiver's Gbit/s."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, IPERF3, "-s", "-1", "-B", server_ip, "-p", str(PORT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not eventually(lambda: listening(server_ns, PORT), timeout=10, every=0.05):
            raise RuntimeError(f"iperf3 server in {server_ns} did not listen")
        r = in_ns(client_ns, IPERF3, "-c", server_ip, "-p", str(PORT), "-t", str(seconds), "-P", str(streams),
                  "-J", check=False, timeout=seconds + 20)
        result = json.loads(r.stdout) if r.stdout.strip() else {}
        if r.returncode != 0 or "error" in result:
            raise RuntimeError(f"iperf3 client failed ({r.returncode}): {result.get('error', r.stderr)}")
        return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        if server.poll() is None:
            server.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(5)


def measure(pairs: dict[str, tuple[str, str, str]], seconds: int, repeat: int) -> dict[str, dict[int, float]]:
    """Median Gbit/s per path and stream count; ``pairs``: path → (server ns, server ip, client ns).

    The paths take turns within each round, so a drift in the machine's load hits them alike.
    """
    samples: dict[str, dict[int, list[float]]] = {name: {p: [] for p in STREAMS} for name in pairs}
    for _ in range(repeat):
        for p in STREAMS:
            for name, (server_ns, server_ip, client_ns) in pairs.items():
                samples[name][p].append(iperf(server_ns, server_ip, client_ns, p, seconds))
    return {name: {p: statistics.median(v) for p, v in per.items()} for name, per in samples.items()}


def run_backend(name: str, backend: str, seconds: int, repeat: int) -> dict[str, dict[int, float]]:
    """Build a two-host cluster with ``backend``, measure its underlay and pod to pod, tear it down."""
    c = Cluster(network="10.244.0.0/16", backend=backend)
    try:
        c.start()
        h1, h2 = c.add_host(1), c.add_host(2)
        for h in (h1, h2):
            c.start_flanneld(h)  # each cluster has its own etcd, so the default prefix is never shared
        for h in (h1, h2):
            c.wait_ready(h)
        c.add_pod(h1)
        pod2 = c.add_pod(h2)
        p1, p2 = c.pod_ns(h1, 1), c.pod_ns(h2, 1)
        if not eventually(lambda: c.ping(p1, pod2), timeout=20):
            raise RuntimeError(f"{name}: pod {pod2} not reachable from h1's pod")
        mtu = h1.env().get("FLANNEL_MTU", "?")
        print(f"# {name}: cluster {c.prefix} ready, pod MTU {mtu}", file=sys.stderr, flush=True)
        return measure({"underlay": (h2.ns, h2.ip, h1.ns), name: (p2, pod2, p1)}, seconds, repeat)
    finally:
        c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5, help="length of each iperf3 test (-t)")
    ap.add_argument("--repeat", type=int, default=3, help="tests per cell; the median is reported")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    started = time.monotonic()
    # Each cluster measures its own underlay alongside its backend; the ratio is to that underlay.
    results = {name: run_backend(name, backend, args.seconds, args.repeat) for name, backend in BACKENDS}

    head = " | ".join(f"{p} stream{'s' if p > 1 else ''} Gbit/s | ×underlay" for p in STREAMS)
    print(f"| path | {head} |")
    print("|---|" + "---:|---:|" * len(STREAMS))
    for name, _ in BACKENDS:
        base = results[name]["underlay"]
        cells = " | ".join(f"{base[p]:.2f} | 1.00" for p in STREAMS)
        print(f"| underlay (in the {name} cluster) | {cells} |")
    for name, _ in BACKENDS:
        got, base = results[name][name], results[name]["underlay"]
        cells = " | ".join(f"{got[p]:.2f} | {got[p] / base[p]:.2f}" for p in STREAMS)
        print(f"| {name} | {cells} |")
    for name in NOT_IMPLEMENTED:
        cells = " | ".join("— | —" for _ in STREAMS)
        print(f"| {name}: not implemented yet | {cells} |")
    cmd = shlex.join([".venv/bin/python", "bench/bench_throughput.py", *sys.argv[1:]])
    print()
    print(f"Command: `{cmd}` ({datetime.date.today().isoformat()}); iperf3 -t {args.seconds}, "
          f"-P {' and -P '.join(str(p) for p in STREAMS)}, {args.repeat} test(s) per cell (median); "
          f"receiver bitrate; {time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
