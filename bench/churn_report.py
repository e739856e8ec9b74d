"""What the two churn benchmarks share (``bench_churn`` for etcd, ``kube_churn`` for kube mode): the kernel
observer thread, a VmRSS sampler, percentiles and the report tables. Both time each change from its write to
the FDB entry it causes, so both keep the first time each FDB destination was seen.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence

from kernel_watch import KernelWatch, vm_kib

MS = 1000


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

    def stop(self) -> None:
        self.done.set()
        self.join(5)
        self.watch.close()
        if self.watch.overrun:
            print("WARNING: the netlink observer overran; some changes may be reported missing")


def pct(values: Sequence[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))] if s else float("nan")


def print_writer(late: Sequence[float], acked: Sequence[float], server: str) -> None:
    """The writer's lateness behind its schedule and the server's answer time: the latencies are only as good
    as the writer's punctuality."""
    print(f"writer lateness behind its schedule: p50 {statistics.median(late) * MS:.1f} ms, "
          f"p99 {pct(late, 0.99) * MS:.1f} ms, max {max(late) * MS:.1f} ms; {server}: "
          f"p50 {statistics.median(acked) * MS:.1f} ms, p99 {pct(acked, 0.99) * MS:.1f} ms\n")


def print_latencies(delays: Sequence[float | None], rate: float, rss: RssSampler | None, target: str,
                    answers: Sequence[float] | None = None) -> None:
    """The overall table and the per-10-second windows of ``delays`` (change ``k`` scheduled at ``k / rate``;
    None: never seen). ``answers``, each write's answer time (NaN: failed), adds their slowest per window: a
    stall of the server shows there, a stall of the daemon does not."""
    lat = [d for d in delays if d is not None]
    windows: dict[int, list[float]] = {}
    for k, d in enumerate(delays):
        if d is not None:
            windows.setdefault(int(k / rate) // 10, []).append(d)
    if not lat:
        print(f"none of {len(delays)} changes seen")
        return
    print("| changes | seen | missing | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) | target |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {len(delays)} | {len(lat)} | {len(delays) - len(lat)} | {statistics.median(lat) * MS:.1f} "
          f"| {pct(lat, 0.95) * MS:.1f} | {pct(lat, 0.99) * MS:.1f} | {max(lat) * MS:.1f} | {target} |")
    print("\nper 10-second window (a backlog shows as growing latency):\n")
    extra = " slowest write answer (ms) |" if answers is not None else ""
    print(f"| window | changes | p50 (ms) | p99 (ms) | max (ms) | flanneld VmRSS, max (MiB) |{extra}")
    print("|---|---:|---:|---:|---:|---:|" + ("---:|" if extra else ""))
    for w in sorted(windows):
        v = windows[w]
        slowest = ""
        if answers is not None:
            mine = [a for k, a in enumerate(answers) if int(k / rate) // 10 == w and a == a]
            slowest = f" {max(mine, default=float('nan')) * MS:.1f} |"
        print(f"| {w * 10}-{w * 10 + 10} s | {len(v)} | {statistics.median(v) * MS:.1f} | {pct(v, 0.99) * MS:.1f} "
              f"| {max(v) * MS:.1f} | {rss.window_max(w) if rss is not None else float('nan'):.1f} |{slowest}")
