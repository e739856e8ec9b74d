"""Pod-to-pod TCP throughput over flannel's wireguard backend, beside vxlan, the underlay and a hand-built twin.

One run measures, with iperf3 from a pod on host 1 to a pod on host 2 (single stream and ``-P 4``, every test
bounded by ``-t``):

* underlay: host to host over ``eth0`` (no pods, no flannel);
* vxlan (flannel): two hosts running flanneld with the vxlan backend;
* wireguard (flannel): two hosts running flanneld with the wireguard backend, each host with its own mount
  namespace (its own ``/var/run/wireguard``); this kernel has no WireGuard, so flanneld runs ``wireguard-go``;
* wireguard-go (hand-built): the same topology (pods behind ``cni0``), with ``wireguard-go`` and ``wg`` set up
  by hand the way a user would, at the same device MTU (underlay − 80), so that "flannel ÷ hand-built"
  isolates what flannel's configuration costs. Both hosts get the netfilter rules ``--ip-masq`` leaves (as the
  throughput benchmark's twins do), so both sides have the same conntrack state.

The paths take turns within each round, the order reversed every other round, so that a drift in this shared
machine's load hits the flannel path and its twin alike. The measuring, the layout and the teardown are
``bench_throughput``'s; everything lives in namespaces with per-run names and is removed in ``finally``.

Usage: .venv/bin/python bench/bench_wireguard.py [--seconds 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.cluster import Cluster, sh  # noqa: E402
from tests.host_mounts import MountHolder  # noqa: E402

from bench_throughput import (  # noqa: E402
    STREAMS,
    UNDERLAY_GW,
    DataPath,
    Ends,
    HandBuilt,
    build_flannel,
    build_hand,
    environment,
    fmt,
    in_ns,
    log,
    measure,
    paired_range,
    ratio,
    terminate,
)

WG_OVERHEAD = 80
TARGET_VS_HAND = 0.95
NETWORK = "10.244.0.0/16"


class HandBuiltWireGuard(HandBuilt):
    """``bench_throughput``'s hand-built hosts and pods, joined by ``wireguard-go`` devices set up with ``wg``."""

    def __init__(self) -> None:
        super().__init__("wireguard")
        self.holders: list[MountHolder] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-wg-"))

    def build(self) -> Ends:
        ul = self._ns("ul")
        in_ns(ul, "ip", "link", "add", "br0", "type", "bridge")
        in_ns(ul, "ip", "addr", "add", f"{UNDERLAY_GW}/24", "dev", "br0")
        in_ns(ul, "ip", "link", "set", "br0", "up")
        hosts = {n: self._host(ul, n) for n in (1, 2)}
        mtu = int(in_ns(hosts[1], "cat", "/sys/class/net/eth0/mtu").stdout) - WG_OVERHEAD
        pods = {n: self._pod(hosts[n], n, mtu) for n in (1, 2)}
        keys = {n: sh("wg", "genkey").stdout.strip() for n in (1, 2)}
        pubs = {n: subprocess.run(["wg", "pubkey"], input=keys[n], capture_output=True, text=True,
                                  check=True).stdout.strip() for n in (1, 2)}
        for n, peer in ((1, 2), (2, 1)):
            holder = MountHolder(hosts[n], self.tmp / f"h{n}")
            self.holders.append(holder)
            (holder.run_dir / "key").write_text(keys[n])
            holder.run("wireguard-go", "wg0")
            holder.run("wg", "set", "wg0", "private-key", "/run/key", "listen-port", "51820", "peer", pubs[peer],
                       "endpoint", f"{self.host_ip(peer)}:51820", "allowed-ips", f"10.244.{peer}.0/24")
            for cmd in (["link", "set", "wg0", "mtu", str(mtu)], ["addr", "add", f"10.244.{n}.0/32", "dev", "wg0"],
                        ["link", "set", "wg0", "up"], ["route", "add", NETWORK, "dev", "wg0", "scope", "link"]):
                holder.run("ip", *cmd)
            in_ns(hosts[n], "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", NETWORK, "!", "-d", NETWORK, "-j",
                  "MASQUERADE")
            for flag in ("-s", "-d"):
                in_ns(hosts[n], "iptables", "-A", "FORWARD", flag, NETWORK, "-j", "ACCEPT")
        return Ends(pods[2], "10.244.2.2", pods[1], mtu)

    def close(self) -> None:
        for holder in self.holders:
            holder.close()  # stops wireguard-go by PID
        self.holders.clear()
        super().close()
        sh("rm", "-rf", str(self.tmp), check=False)


def build_all(stack: contextlib.ExitStack) -> list[DataPath]:
    paths = [DataPath("underlay", "underlay"), DataPath("vxlan", "flannel"), DataPath("wireguard", "flannel"),
             DataPath("wireguard", "hand-built")]
    for path in paths:
        started = time.monotonic()
        try:
            if path.kind == "flannel":
                backend = '{"Type":"wireguard"}' if path.mode == "wireguard" else '{"Type":"vxlan"}'
                cluster = Cluster(network=NETWORK, backend=backend, private_mounts=path.mode == "wireguard")
                stack.callback(cluster.close)
                path.ends = build_flannel(cluster, path.mode)
            else:
                hand = HandBuiltWireGuard() if path.kind == "hand-built" else HandBuilt(None)
                stack.callback(hand.close)
                path.ends = build_hand(hand)
        except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            path.reason = " ".join(str(exc).split())
            log(f"{path.label}: not available: {path.reason}")
            continue
        log(f"{path.label}: ready in {time.monotonic() - started:.1f} s, client MTU {path.ends.mtu}")
    return paths


def report(paths: list[DataPath], args: argparse.Namespace, started: float, started_at: datetime.datetime,
           load_before: tuple[float, float, float]) -> None:
    under, vxlan, wg, hand = paths
    print("| path | streams | pod MTU | Gbit/s | ×underlay |")
    print("|---|---:|---:|---:|---:|")
    for path in paths:
        for p in STREAMS:
            if path.reason is not None:
                print(f"| {path.label} | {p} | — | not available: {path.reason} | |")
                continue
            mtu = path.ends.mtu if path.ends else "—"
            print(f"| {path.label} | {p} | {mtu} | {fmt(path.median(p))} | "
                  f"{fmt(ratio(path.median(p), under.median(p)))} |")
    print()
    for p in STREAMS:
        vs_hand = ratio(wg.median(p), hand.median(p))
        rng = paired_range(wg, hand, p) if vs_hand is not None else ""
        met = "met" if vs_hand is not None and vs_hand >= TARGET_VS_HAND else "NOT met"
        print(f"* {p} stream(s): wireguard (flannel) ÷ wireguard-go (hand-built) {fmt(vs_hand)}{rng}, target ≥ "
              f"{TARGET_VS_HAND}: {met}; wireguard ÷ vxlan {fmt(ratio(wg.median(p), vxlan.median(p)))}")
    cmd = shlex.join([".venv/bin/python", "bench/bench_wireguard.py", *sys.argv[1:]])
    print()
    print(f"Command: `{cmd}`; iperf3 -t {args.seconds}, {args.repeat} test(s) per cell (median), receiver "
          f"bitrate; {time.monotonic() - started:.0f} s in all.")
    print(f"Environment: {started_at.strftime('%Y-%m-%d %H:%M UTC')}; {'; '.join(environment())}; load average "
          f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after (1 min).")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=3, help="length of each iperf3 test (-t)")
    ap.add_argument("--repeat", type=int, default=3, help="tests per cell; the median is reported")
    args = ap.parse_args()
    if args.seconds < 1 or args.repeat < 1:
        ap.error("--seconds and --repeat must be ≥ 1")
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, terminate)
    started, started_at, load_before = time.monotonic(), datetime.datetime.now(datetime.UTC), os.getloadavg()
    with contextlib.ExitStack() as stack:
        paths = build_all(stack)
        measure(paths, args.seconds, args.repeat)
    report(paths, args, started, started_at, load_before)
    return 1 if any(p.reason is not None for p in paths) else 0


if __name__ == "__main__":
    sys.exit(main())
