"""What a cloud backend's SDK costs a node at start-up, and proof that a vxlan node pays none of it.

Black box: each sample is a fresh interpreter (a subprocess) that starts the way ``flanneld`` does (the entry
module's settings, then the daemon's modules) and builds the configured backend through the registry, exactly
as ``daemon/main.py`` does once the network config is read; nothing is called on the network. The parent
measures the child's wall time and reads its peak RSS from ``wait4``'s rusage. ``--version`` is flanneld
itself printing its version (the floor: interpreter and flag parsing). Reported: the median of
``--iterations`` samples (default 7) after one warm-up, per case.

Usage: .venv/bin/python bench/bench_cloud_imports.py [--iterations 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = str(REPO / ".venv" / "bin" / "python")
FLANNELD = str(REPO / ".venv" / "bin" / "flanneld")

BUILD = """
import json, os, sys
from flannel.daemon import entry
entry._limit_memory(False, os.environ)  # etcd mode, as flanneld starts without --kube-subnet-mgr
import flannel.daemon.main  # noqa: F401  (the daemon's own modules, loaded by every start)
from ipaddress import IPv4Address
from flannel.backend.base import BackendContext, ExternalInterface
from flannel.backend.registry import create_backend
from flannel.config import parse_network_config
ext = ExternalInterface("eth0", 2, 1500, IPv4Address("198.18.0.11"), None, IPv4Address("198.18.0.11"), None)
config = parse_network_config(json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": sys.argv[1]}}))
create_backend(BackendContext(subnet_manager=None, ext_iface=ext), config)
"""

CASES = {
    "flanneld --version": [FLANNELD, "--version"],
    "vxlan backend built": [PY, "-c", BUILD, "vxlan"],
    "aws-vpc backend built": [PY, "-c", BUILD, "aws-vpc"],
}


def sample(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one run of ``argv``."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[-1]}: exit {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=7)
    args = parser.parse_args()
    print(f"{'case':<24} {'wall ms (median)':>17} {'peak RSS MiB (median)':>22}")
    for name, argv in CASES.items():
        sample(argv)  # warm-up: page cache, byte-compiled modules
        runs = [sample(argv) for _ in range(args.iterations)]
        wall = statistics.median(r[0] for r in runs) * 1000
        rss = statistics.median(r[1] for r in runs)
        print(f"{name:<24} {wall:>17.0f} {rss:>22.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
