"""What talking to WireGuard costs flanneld in memory: the peak RSS of importing each candidate.

flanneld's budget is far under 35 MiB. The wireguard backend speaks the UAPI text protocol and the generic
netlink messages itself (``flannel.backend.wireguard_uapi``, ``wireguard_genetlink``) instead of importing
pyroute2, the one PyPI library that speaks WireGuard (generic netlink only); this measures why. Each candidate
is imported in a fresh interpreter, its peak RSS read from ``wait4``; the median of ``--repeat`` runs is shown.

Usage: .venv/bin/python bench/bench_wireguard_import.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CANDIDATES = {
    "python (nothing imported)": "pass",
    "flannel.backend.vxlan (reference)": "import flannel.backend.vxlan",
    "flannel.backend.wireguard (hand-written UAPI + genetlink)": "import flannel.backend.wireguard",
    "pyroute2": "import pyroute2",
    "pyroute2 WireGuard": "from pyroute2 import WireGuard",
    "flannel.backend.wireguard + pyroute2 WireGuard":
        "import flannel.backend.wireguard; from pyroute2 import WireGuard",
}


def peak_rss_kib(code: str) -> int | None:
    """Peak RSS (KiB) of ``python -c code``; None when the import fails (package not installed)."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss if proc.returncode == 0 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    base = None
    print("| import | peak RSS MiB | over bare python MiB |")
    print("|---|---:|---:|")
    for name, code in CANDIDATES.items():
        runs = [peak_rss_kib(code) for _ in range(args.repeat)]
        if any(r is None for r in runs):
            print(f"| {name} | not installed | |")
            continue
        rss = statistics.median(r for r in runs if r is not None) / 1024
        base = rss if base is None else base
        print(f"| {name} | {rss:.1f} | {rss - base:+.1f} |")
    print(f"\nCommand: `.venv/bin/python bench/bench_wireguard_import.py --repeat {args.repeat}`; Python "
          f"{sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
