#!/usr/bin/env python3
"""flanneld under a memory profiler, for finding where its RSS goes (issue #16; docs/performance.md,
"Per-peer state and baseline (session 6)").

Use it as the flanneld a benchmark starts: ``BENCH_FLANNELD=bench/flanneld_memprof.py .venv/bin/python
bench/bench_kube.py --repeat 1``. It runs the real entry point (``flannel.daemon.entry.run``) and, into
``$MEMPROF_OUT`` (default ``/tmp/flanneld-memprof``):

* ``rss-PID.txt``: VmRSS in KiB each time it changes, sampled every millisecond by a thread (seconds since
  start, KiB), and ``log-PID.txt``: flanneld's log with the start's wall time first, to place the phases;
* on ``SIGUSR1`` (or at each of the seconds listed in ``MEMPROF_AT``, e.g. ``3,20``), ``snap-PID-N.gc``:
  VmRSS, the 60 most numerous object types (``gc.get_objects``) and ``sys.modules``; ``snap-PID-N.smaps``:
  ``/proc/self/smaps``; and with ``MEMPROF_TRACE=1`` (tracing from the first import, ``MEMPROF_FRAMES``
  frames, default 8; the sampler is then off, as tracing doubles the memory) ``snap-PID-N.tm``, a
  ``tracemalloc`` snapshot to read with ``tracemalloc.Snapshot.load``.

Not for production: the profile itself costs memory (reading smaps, tracing).
"""

from __future__ import annotations

import collections
import gc
import os
import signal
import sys
import threading
import time

OUT = os.environ.get("MEMPROF_OUT", "/tmp/flanneld-memprof")
TRACE = os.environ.get("MEMPROF_TRACE") == "1"
if TRACE:
    import tracemalloc

    tracemalloc.start(int(os.environ.get("MEMPROF_FRAMES", "8")))
os.makedirs(OUT, exist_ok=True)
T0 = time.time()
_snaps = [0]


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _sampler() -> None:
    last = 0
    with open(f"{OUT}/rss-{os.getpid()}.txt", "w") as f:
        while True:
            rss = _rss_kib()
            if rss != last:
                f.write(f"{time.time() - T0:.3f} {rss}\n")
                f.flush()
                last = rss
            time.sleep(0.001)


def _snapshot(_sig: int, _frame: object) -> None:
    _snaps[0] += 1
    tag = f"{OUT}/snap-{os.getpid()}-{_snaps[0]}"
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    with open(tag + ".gc", "w") as f:
        f.write(f"at {time.time() - T0:.3f} s, VmRSS {_rss_kib()} KiB\n")
        f.writelines(f"{n} {name}\n" for name, n in counts.most_common(60))
        f.write(f"modules {len(sys.modules)}\n{' '.join(sorted(sys.modules))}\n")
    with open("/proc/self/smaps") as src, open(tag + ".smaps", "w") as dst:
        dst.write(src.read())
    if TRACE:
        tracemalloc.take_snapshot().dump(tag + ".tm")


def _timer(times: list[float]) -> None:
    for at in times:
        time.sleep(max(0.0, at - (time.time() - T0)))
        os.kill(os.getpid(), signal.SIGUSR1)


def _venv_python() -> None:
    """Run again under the repository's venv when started by another Python (the shebang's) without flannel."""
    try:
        import flannel  # noqa: F401
    except ImportError:
        venv = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv", "bin", "python")
        os.execv(venv, [venv, os.path.abspath(__file__), *sys.argv[1:]])


def main() -> None:
    _venv_python()
    log = open(f"{OUT}/log-{os.getpid()}.txt", "w")  # noqa: SIM115 - flanneld's stderr until the process ends
    log.write(f"T0 {T0}\n")
    log.flush()
    os.dup2(log.fileno(), 2)
    if not TRACE:
        threading.Thread(target=_sampler, daemon=True).start()
    signal.signal(signal.SIGUSR1, _snapshot)
    if os.environ.get("MEMPROF_AT"):
        times = sorted(float(t) for t in os.environ["MEMPROF_AT"].split(","))
        threading.Thread(target=_timer, args=(times,), daemon=True).start()
    from flannel.daemon.entry import run

    sys.argv[0] = "flanneld"
    run()


if __name__ == "__main__":
    main()
