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
import subprocess
import sys
import tempfile
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
from churn_report import Observer, RssSampler, print_latencies, print_writer
from kernel_watch import cpu_seconds, loadavg, vm_kib
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
        obs.stop()
        if p is not None:
            stop(p)
        etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    delays = [None if (seen := obs.fdb_seen.get(change_ip(k))) is None else seen - starts[k] for k in range(count)]
    print(f"load average after: {loadavg()}; {count} changes at {args.rate:g}/s over {args.seconds:g} s, "
          f"{args.peers} peers present; flanneld CPU over the run {cpu:.2f} s ({cpu / run_s * 100:.0f}% of one core), "
          f"peak RSS {hwm:.1f} MiB{relisted}")
    print_writer(late, acked, "etcd's acknowledgement of a put")
    print_latencies(delays, args.rate, rss, "p99 ≤ 50 ms")
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
