"""Benchmark: lease churn (issue #16). With N peers programmed, a writer changes leases in etcd at a steady
rate; each change is timed from its put to the kernel entry it causes on the flanneld host.

Why: a busy cluster changes leases all the time (nodes join, leave, renew, move). flanneld must keep up:
the target is p99 ≤ 50 ms from put to kernel entry at 100 changes per second for 60 s with 5000 peers
present, and no backlog (the lag must not grow over the run).

One namespace that looks like a host (``one_host_netns``) holds its own etcd and flanneld (a subprocess,
default flags, vxlan). The writer schedules change ``k`` at ``t0 + k / rate`` and sends each put as its own
task, so a slow put does not delay the next one. Changes alternate between a new lease (a new subnet) and a
new PublicIP for one of the N existing leases; every change carries a PublicIP of its own, so the FDB entry
``<VtepMAC> dst <that IP>`` identifies it. The observer is a netlink socket subscribed to neighbour and route
notifications in the host's namespace, read in its own thread and timestamped as read
(``bench/kernel_watch.py``): it sees the kernel, not flanneld's logs.

Reported: latency percentiles overall and per 10-second window (a backlog shows as windows growing), changes
missing at the end, the writer's own lag behind its schedule, flanneld's CPU over the run, flanneld's peak RSS,
and the load average. Bounded: ``rate × seconds`` changes (at most 60 000), every wait limited.

``--steady W`` keeps the number of peers constant for long runs (the memory soak of issue #16: 5000 peers
through 10 minutes of churn): each new lease deletes the one added ``W`` changes of its kind earlier.
``--relist`` ends the run with a full re-list after compaction (``bench_daemon.relist_after_compaction``) and
reports the peak RSS after it too.

Run as root:  .venv/bin/python bench/bench_churn.py [--peers 5000] [--rate 100] [--seconds 60] [--steady 50]
              [--relist] [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_daemon import (
    Etcd,
    etcd_client,
    peer_lease,
    put_config,
    put_leases,
    relist_after_compaction,
    start_flanneld,
    stop,
    use_tls,
)
from kernel_watch import KernelWatch, cpu_seconds, loadavg, vm_kib
from one_host_netns import run_inside

CHANGE_IP_BASE = (198 << 24) | (19 << 16) | (128 << 8)
"""PublicIPs of the changes: 198.19.128.0 onwards (the N peers use 198.19.0.0-198.19.127.255)."""


def change_ip(k: int) -> bytes:
    return (CHANGE_IP_BASE + k).to_bytes(4, "big")


def change_record(k: int, peers: int) -> tuple[str, str]:
    """Change ``k``: even, a new PublicIP for existing peer ``k/2 mod peers``; odd, a new lease."""
    i = (k // 2) % peers if k % 2 == 0 else peers + k // 2
    key, value = peer_lease(i)
    old_pub = value.split('"PublicIP":"')[1].split('"')[0]
    pub = ".".join(str(b) for b in change_ip(k))
    return key, value.replace(f'"PublicIP":"{old_pub}"', f'"PublicIP":"{pub}"')


def retired_key(k: int, peers: int, steady: int) -> str | None:
    """With ``--steady``: the lease that new lease ``k`` (odd) replaces, added ``steady`` new leases earlier."""
    if not steady or k % 2 == 0 or k // 2 < steady:
        return None
    return peer_lease(peers + k // 2 - steady)[0]


class RssSampler(threading.Thread):
    """Samples flanneld's VmRSS once a second: a leak shows as a column that keeps growing window by window."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            try:
                self.samples.append((time.monotonic() - self.t0, vm_kib(self.pid, "VmRSS") / 1024))
            except OSError:
                return

    def window_max(self, window: int) -> float:
        return max((mib for t, mib in self.samples if int(t) // 10 == window), default=float("nan"))


class Observer(threading.Thread):
    """Reads kernel notifications until stopped; keeps the first time each FDB destination was seen."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.watch = KernelWatch()
        self.fdb_seen: dict[bytes, float] = {}
        self.routes: set[bytes] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for e in self.watch.read(0.05):
                if e.kind == "fdb":
                    self.fdb_seen.setdefault(e.dst, e.at)
                elif e.kind == "route" and e.plen == 24 and e.dst[0] == 10:
                    self.routes.add(e.dst)


async def write_changes(count: int, rate: float, peers: int, steady: int = 0
                        ) -> tuple[list[float], list[float], list[float]]:
    """Put ``count`` changes at ``rate`` per second; return each put's start time, its lateness behind the
    schedule, and how long etcd took to acknowledge it."""
    starts = [0.0] * count
    late = [0.0] * count
    acked = [0.0] * count
    async with etcd_client() as c:
        lease = await c.lease.grant(86400)
        records = [change_record(k, peers) for k in range(count)]
        tasks = []
        t0 = time.monotonic() + 0.1

        async def put(k: int) -> None:
            key, value = records[k]
            await c.kv.put(key, value, lease=lease.ID)
            acked[k] = time.monotonic() - starts[k]
            retired = retired_key(k, peers, steady)
            if retired is not None:
                await c.kv.delete(retired)

        for k in range(count):
            due = t0 + k / rate
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            starts[k] = time.monotonic()
            late[k] = starts[k] - due
            tasks.append(asyncio.create_task(put(k)))
        await asyncio.gather(*tasks)
    return starts, late, acked


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))] if s else float("nan")


def inner(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="flannel-churn-"))
    if args.tls:
        use_tls(tmp)
    etcd = Etcd(tmp)
    count = int(args.rate * args.seconds)
    print(f"command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs; load average before: {loadavg()}")
    obs = Observer()
    obs.start()
    p = None
    rss: RssSampler | None = None
    try:
        asyncio.run(put_config())
        asyncio.run(put_leases(0, args.peers))
        p = start_flanneld(tmp, tuple(args.flanneld_arg))
        deadline = time.monotonic() + 120
        while len(obs.routes) < args.peers:
            if time.monotonic() > deadline or p.poll() is not None:
                raise RuntimeError(f"only {len(obs.routes)} of {args.peers} routes programmed")
            time.sleep(0.05)
        time.sleep(1)  # the post-snapshot reconcile
        cpu0 = cpu_seconds(p.pid)
        t_run = time.monotonic()
        spy = None
        if args.py_spy:  # sample flanneld over the run: where its time goes under churn
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200", "-f", "raw",
                                    "-o", args.py_spy, "-d", str(int(args.seconds)), "-p", str(p.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rss = RssSampler(p.pid)
        rss.start()
        starts, late, acked = asyncio.run(write_changes(count, args.rate, args.peers, args.steady))
        rss.done.set()
        if spy is not None:
            spy.wait(30)
        wait_until = time.monotonic() + 10
        while time.monotonic() < wait_until and any(change_ip(k) not in obs.fdb_seen for k in range(count)):
            time.sleep(0.05)
        run_s = time.monotonic() - t_run
        cpu = cpu_seconds(p.pid) - cpu0
        hwm = vm_kib(p.pid) / 1024
        relisted = ""
        if args.relist:
            routes = subprocess.run(["ip", "route", "show", "dev", "flannel.1"], capture_output=True,
                                    text=True).stdout.count("\n")
            rev = relist_after_compaction(p, etcd, tmp / "flanneld.log", 38000)
            wait_until = time.monotonic() + 60
            while subprocess.run(["ip", "route", "show", "dev", "flannel.1"], capture_output=True,
                                 text=True).stdout.count("\n") < routes + 16:
                if time.monotonic() > wait_until:
                    raise RuntimeError("the re-list did not program the 16 leases added meanwhile")
                time.sleep(0.1)
            time.sleep(2)
            relisted = (f"; after a full re-list of {routes + 16} peers (compacted at {rev}): peak RSS "
                        f"{vm_kib(p.pid) / 1024:.1f} MiB, VmRSS {vm_kib(p.pid, 'VmRSS') / 1024:.1f} MiB")
    finally:
        obs.done.set()
        obs.join(5)
        obs.watch.close()
        if p is not None:
            stop(p)
        etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if obs.watch.overrun:
        print("WARNING: the netlink observer overran; some changes may be reported missing")
    lat: list[float] = []
    windows: dict[int, list[float]] = {}
    missing = 0
    for k in range(count):
        seen = obs.fdb_seen.get(change_ip(k))
        if seen is None:
            missing += 1
            continue
        d = seen - starts[k]
        lat.append(d)
        windows.setdefault(int(k / args.rate) // 10, []).append(d)
    ms = 1000
    print(f"load average after: {loadavg()}; {count} changes at {args.rate:g}/s over {args.seconds:g} s, "
          f"{args.peers} peers present; flanneld CPU over the run {cpu:.2f} s ({cpu / run_s * 100:.0f}% of one core), "
          f"peak RSS {hwm:.1f} MiB{relisted}")
    print(f"writer lateness behind its schedule: p50 {statistics.median(late) * ms:.1f} ms, "
          f"p99 {pct(late, 0.99) * ms:.1f} ms, max {max(late) * ms:.1f} ms; etcd's acknowledgement of a put: "
          f"p50 {statistics.median(acked) * ms:.1f} ms, p99 {pct(acked, 0.99) * ms:.1f} ms\n")
    print("| changes | seen | missing | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) | target |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {count} | {len(lat)} | {missing} | {statistics.median(lat) * ms:.1f} | {pct(lat, 0.95) * ms:.1f} "
          f"| {pct(lat, 0.99) * ms:.1f} | {max(lat) * ms:.1f} | p99 ≤ 50 ms |")
    print("\nper 10-second window (a backlog shows as growing latency):\n")
    print("| window | changes | p50 (ms) | p99 (ms) | max (ms) | flanneld VmRSS, max (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for w in sorted(windows):
        v = windows[w]
        print(f"| {w * 10}-{w * 10 + 10} s | {len(v)} | {statistics.median(v) * ms:.1f} | {pct(v, 0.99) * ms:.1f} "
              f"| {max(v) * ms:.1f} | {rss.window_max(w) if rss is not None else float('nan'):.1f} |")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inner", action="store_true")
    ap.add_argument("--peers", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--steady", type=int, default=0, metavar="W",
                    help="keep the peer count constant: each new lease retires the one added W new leases earlier")
    ap.add_argument("--relist", action="store_true", help="end with a full re-list after compaction")
    ap.add_argument("--tls", action="store_true", help="etcd over TLS with client certificates, as bench_daemon")
    ap.add_argument("--flanneld-arg", action="append", default=[], help="an extra flanneld flag (repeatable)")
    ap.add_argument("--py-spy", metavar="FILE", help="sample flanneld with py-spy over the run, raw output to FILE")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    count = args.rate * args.seconds
    if not 0 < count <= 60000 or not 0 < args.peers <= 20000 or args.peers + count // 2 >= 38000:
        # bench_daemon's address plan ends at peer 39000; 38000 onwards is the re-list's
        print("at most 60000 changes and 20000 peers, with peers + changes / 2 below 38000", file=sys.stderr)
        return 2
    return inner(args) if args.inner else run_inside(__file__, "fchurn")


if __name__ == "__main__":
    sys.exit(main())
