"""Benchmark: flanneld programming N remote VXLAN peers from etcd, against ``ip -batch`` + ``bridge -batch``
doing the same kernel work, black-box (issue #16).

Why: at start-up (and after a re-list) flanneld programs every remote lease: a neighbour, an FDB entry and
an onlink route per peer on ``flannel.1`` (through a nexthop object by default). The target is to be no slower
than iproute2's batch mode, the fastest standard tool, at any scale: the ratio must not grow with N. iproute2
runs twice per round: with upstream's plain routes, and with flanneld's own nexthop objects.

One namespace that looks like a host (``one_host_netns``) holds its own etcd with N lease records. Each run
deletes ``flannel.1`` (its entries go with it), then either starts flanneld (a subprocess, default flags,
vxlan) or builds ``flannel.1`` by hand and runs ``ip -batch``/``bridge -batch`` with the very entries
flanneld makes. The runs alternate, so load drift hits both sides alike. flanneld is watched from outside,
through a netlink socket subscribed to route and neighbour notifications:

* **window**: first flannel entry seen → N-th peer route seen (the programming, as wall time);
* **start → all**: process spawn → N-th route (includes start-up, the etcd list and lease acquisition);
* **CPU**: flanneld's utime+stime over the window (``/proc/<pid>/stat``), and at all-programmed; for
  iproute2 the two processes' utime+stime (``RUSAGE_CHILDREN``). Kernel work done in a ``sendmsg`` counts as
  the sender's stime, so the CPU ratio compares the same work and, unlike wall time, holds up under load.

Bounded: sizes × repeat flanneld starts, each waited for at most 120 s.

Run as root:  .venv/bin/python bench/bench_program_peers.py [--sizes 1000 5000 10000 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench_daemon import Etcd, peer_lease, put_config, put_leases, start_flanneld, stop
from kernel_watch import KernelWatch, cpu_seconds, loadavg, vm_kib
from one_host_netns import run_inside

DEV = "flannel.1"


@dataclass
class FlannelRun:
    start_to_all: float
    window: float
    cpu_window: float
    cpu_total: float
    hwm_mib: float
    overrun: bool


@dataclass
class IpRun:
    wall: float
    cpu: float


def peer_entries(i: int) -> tuple[str, str, str]:
    """(subnet address, VtepMAC, PublicIP) of bench_daemon's peer ``i``, parsed back from its record."""
    key, value = peer_lease(i)
    net = key.rsplit("/", 1)[1].split("-")[0]
    mac = value.split('"VtepMAC":"')[1].split('"')[0]
    pub = value.split('"PublicIP":"')[1].split('"')[0]
    return net, mac, pub


def delete_device() -> None:
    subprocess.run(["ip", "link", "del", DEV], capture_output=True, check=False)


def run_flannel(tmp: Path, n: int, timeout: float = 120) -> FlannelRun:
    delete_device()
    (tmp / "subnet.env").unlink(missing_ok=True)
    watch = KernelWatch()
    routes: set[bytes] = set()
    t_first = cpu_first = t_last = 0.0
    try:
        t0 = time.monotonic()
        p = start_flanneld(tmp)
        try:
            while len(routes) < n:
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"only {len(routes)} of {n} routes within {timeout} s")
                if p.poll() is not None:
                    raise RuntimeError(f"flanneld exited with {p.returncode}")
                for e in watch.read(0.05):
                    if e.kind == "route" and e.plen == 24 and e.dst[0] == 10:
                        routes.add(e.dst)
                        t_last = e.at
                    if not t_first and (e.kind == "fdb" or (e.kind == "route" and e.plen == 24 and e.dst[0] == 10)):
                        t_first, cpu_first = e.at, cpu_seconds(p.pid)
                if watch.overrun:
                    raise RuntimeError("netlink monitor overrun: raise its buffer")
            t_all = t_last
            cpu_all = cpu_seconds(p.pid)
            time.sleep(1)
            hwm = vm_kib(p.pid) / 1024
        finally:
            stop(p)
    finally:
        watch.close()
    return FlannelRun(t_all - t0, t_all - t_first, cpu_all - cpu_first, cpu_all, hwm, watch.overrun)


def run_ip(tmp: Path, n: int, nexthops: bool = False) -> IpRun:
    """iproute2 doing flanneld's work: with ``nexthops`` exactly its kernel entries (routes naming nexthop
    objects, the default since session 6), without them upstream's plain onlink routes."""
    delete_device()
    subprocess.run(["ip", "link", "add", DEV, "address", "0a:58:ff:00:00:01", "mtu", "1450", "type", "vxlan",
                    "id", "1", "dev", "eth0", "local", "198.18.0.1", "nolearning", "dstport", "8472"], check=True)
    subprocess.run(["ip", "link", "set", DEV, "up"], check=True)
    ip_file, bridge_file = tmp / "ip.batch", tmp / "bridge.batch"
    with open(ip_file, "w") as ipf, open(bridge_file, "w") as brf:
        for i in range(n):
            net, mac, pub = peer_entries(i)
            ipf.write(f"neigh replace {net} lladdr {mac} dev {DEV} nud permanent\n")
            brf.write(f"fdb replace {mac} dev {DEV} dst {pub} self permanent\n")
        for i in range(n):
            net, _, _ = peer_entries(i)
            if nexthops:
                nh = int.from_bytes(bytes(int(x) for x in net.split(".")), "big")
                ipf.write(f"nexthop replace id {nh} via {net} dev {DEV} onlink\n")
                ipf.write(f"route replace {net}/24 nhid {nh}\n")
            else:
                ipf.write(f"route replace {net}/24 via {net} dev {DEV} onlink\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    subprocess.run(["ip", "-batch", str(ip_file)], check=True)
    subprocess.run(["bridge", "-batch", str(bridge_file)], check=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = subprocess.run(["ip", "route", "show", "dev", DEV], capture_output=True, text=True).stdout
    if out.count("onlink") != n:  # routes naming a nexthop show its "onlink" too
        raise RuntimeError(f"ip -batch left {out.count('onlink')} routes, expected {n}")
    return IpRun(wall, cpu)


def inner(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="flannel-bench-"))
    etcd = Etcd(tmp)
    rows = []
    print(f"command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs; load average before: {loadavg()}")
    try:
        asyncio.run(put_config())
        have = 0
        for n in sorted(args.sizes):
            asyncio.run(put_leases(have, n - have))
            have = n
            fl: list[FlannelRun] = []
            ip: list[IpRun] = []
            ipnh: list[IpRun] = []
            for r in range(args.repeat):
                for side in ((0, 1, 2) if r % 2 == 0 else (2, 1, 0)):
                    if side == 0:
                        fl.append(run_flannel(tmp, n))
                    elif side == 1:
                        ip.append(run_ip(tmp, n))
                    else:
                        ipnh.append(run_ip(tmp, n, nexthops=True))
            rows.append((n, fl, ip, ipnh))
            print(f"  {n}: flannel window {[round(f.window, 3) for f in fl]} cpu {[round(f.cpu_window, 2) for f in fl]}"
                  f" start→all {[round(f.start_to_all, 3) for f in fl]}; ip {[round(i.wall, 3) for i in ip]}"
                  f" cpu {[round(i.cpu, 2) for i in ip]}; ip with nexthops {[round(i.wall, 3) for i in ipnh]}"
                  f" cpu {[round(i.cpu, 2) for i in ipnh]}", flush=True)
    finally:
        subprocess.run(["ip", "link", "del", DEV], capture_output=True, check=False)
        etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average after: {loadavg()}; medians of {args.repeat}\n")
    print("`ip` below is iproute2 making upstream's plain onlink routes; `ip nh` the same with nexthop objects, "
          "flanneld's own kernel entries.\n")
    print("| peers | flanneld window (s) | ip+bridge -batch (s) | wall ratio | ip nh (s) | wall ratio to ip nh "
          "| flanneld CPU in window (s) | ip+bridge CPU (s) | CPU ratio | ip nh CPU (s) | CPU ratio to ip nh "
          "| flanneld start → all programmed (s) | flanneld CPU at all (s) | peak RSS (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, fl, ip, ipnh in rows:
        w = statistics.median(f.window for f in fl)
        iw = statistics.median(i.wall for i in ip)
        nw = statistics.median(i.wall for i in ipnh)
        c = statistics.median(f.cpu_window for f in fl)
        ic = statistics.median(i.cpu for i in ip)
        nc = statistics.median(i.cpu for i in ipnh)
        print(f"| {n} | {w:.3f} | {iw:.3f} | {w / iw:.2f} | {nw:.3f} | {w / nw:.2f} | {c:.2f} | {ic:.2f} "
              f"| {c / ic:.2f} | {nc:.2f} | {c / nc:.2f} "
              f"| {statistics.median(f.start_to_all for f in fl):.3f} "
              f"| {statistics.median(f.cpu_total for f in fl):.2f} | {statistics.median(f.hwm_mib for f in fl):.1f} |")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inner", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000, 20000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    if max(args.sizes) > 39000:
        print("at most 39000 peers (bench_daemon's address plan)", file=sys.stderr)
        return 2
    return inner(args) if args.inner else run_inside(__file__, "fpeers")


if __name__ == "__main__":
    sys.exit(main())
