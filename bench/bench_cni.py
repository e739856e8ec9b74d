"""CNI plugin overhead: ADD and DEL through ``flannel`` + ``bridge`` against ``bridge`` alone, same run.

A runtime starts the plugin once per pod, so what flannel costs is the difference between calling it (Python
start-up, reading subnet.env, saving the delegate config, running bridge) and calling Debian's ``bridge``
directly with the very config flannel hands it. Both are timed in the same process, back to back, from a
"node" namespace with one pod namespace per side, so nothing touches the root namespace; flannel's data dir
and host-local's state live in a temporary directory. Each round adds both pods, then deletes both (the order
alternates), so that every DEL comes at least one plugin call after its ADD: deleting a veth right after
creating it is cheaper (the kernel's post-ADD work is still pending), which would flatter whichever side
started faster. Bounded: ``--iterations`` (default 30) rounds after 3 warm-up rounds. Target: median
overhead ≤ 15 ms per call. Two configurations: the shipped conflist's 0.3.1, and 1.1.0, which Debian's bridge
refuses, so flannel negotiates 1.0.0 (the direct bridge call is given 1.0.0).

Usage (root): .venv/bin/python bench/bench_cni.py [--iterations 30]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.netns import NETNS_DIR, have_root, new_netns  # noqa: E402

PY = str(REPO / ".venv" / "bin" / "python")
FLANNEL = os.environ.get("FLANNEL_BENCH_PLUGIN", str(REPO / ".venv" / "bin" / "flannel"))
"""The plugin timed: the venv's console script, or an installed launcher (``FLANNEL_BENCH_PLUGIN=/x/flannel``,
e.g. install-cni-plugin's bundled or node-Python launcher)."""
BRIDGE = "/usr/lib/cni/bridge"
SUBNET_ENV = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
WARMUP = 3
SETTLE = 0.05


def outer(args: argparse.Namespace) -> int:
    reason = have_root()
    if reason or not os.path.exists(BRIDGE):
        print(f"skipped: {reason or 'needs containernetworking-plugins'}", file=sys.stderr)
        return 1
    # The plugin's modules must be byte-compiled, or every call compiles them (PYTHONDONTWRITEBYTECODE may be set).
    subprocess.run([PY, "-m", "compileall", "-q", str(REPO / "src" / "flannel")], check=True)
    tmp = tempfile.mkdtemp(prefix="bench-cni-")
    namespaces = [new_netns(underlay=False) for _ in range(3)]
    node, pods = namespaces[0], namespaces[1:]
    try:
        cmd = [PY, __file__, "--inner", "--pods", ",".join(p.name for p in pods), "--tmp", tmp,
               "--iterations", str(args.iterations), "--idle", str(args.idle)]
        return subprocess.run(["ip", "netns", "exec", node.name, *cmd], check=False).returncode
    finally:
        for ns in namespaces:
            ns.delete()
        shutil.rmtree(tmp, ignore_errors=True)


def timed(argv: list[str], stdin: bytes, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} {env['CNI_COMMAND']} failed: {proc.stdout!r} {proc.stderr!r}")
    return elapsed * 1000.0


def settle(seconds: float = SETTLE, idle: float = 0.0) -> None:
    """Wait with the CPU busy: the kernel finishes the previous call's deferred work, and the CPU stays warm.

    Sleeping instead lets the (virtual) CPU idle, after which every process starts slower, Python (11 → 14 ms)
    more than Go (3 → 4.5 ms). Both cases happen on nodes: ``--idle SECONDS`` sleeps that long before each
    call instead (a node that sat idle between pod starts), the default keeps the CPU warm.
    """
    if idle > 0:
        time.sleep(idle)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def inner(args: argparse.Namespace) -> int:
    tmp = Path(args.tmp)
    (tmp / "subnet.env").write_text(SUBNET_ENV)
    base = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    base.pop("PYTHONDONTWRITEBYTECODE", None)  # a node's runtime does not set it
    pods = dict(zip("fb", args.pods.split(","), strict=True))  # one pod namespace per side

    def env(command: str, container_id: str) -> dict[str, str]:
        return {**base, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
                "CNI_NETNS": f"{NETNS_DIR}/{pods[container_id[0]]}", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}

    def flannel_conf(version: str) -> bytes:
        return json.dumps({
            "name": "cbr0", "cniVersion": version, "type": "flannel", "subnetFile": str(tmp / "subnet.env"),
            "dataDir": str(tmp / "flannel"), "ipam": {"dataDir": str(tmp / "host-local")},
            "delegate": {"bridge": "fbench0", "hairpinMode": True, "isDefaultGateway": True},
        }).encode()

    rows: list[tuple[str, str, list[float], list[float]]] = []
    for flannel_version, bridge_version in (("0.3.1", "0.3.1"), ("1.1.0", "1.0.0")):
        conf = flannel_conf(flannel_version)
        # The exact delegate config flannel gives bridge, taken from flannel's data dir.
        timed([FLANNEL], conf, env("ADD", "f-probe"))
        delegate = json.loads((tmp / "flannel" / "f-probe").read_bytes())
        timed([FLANNEL], conf, env("DEL", "f-probe"))
        delegate["cniVersion"] = bridge_version
        direct = json.dumps(delegate).encode()
        samples: dict[str, list[float]] = {k: [] for k in ("fa", "fd", "ba", "bd")}
        for i in range(WARMUP + args.iterations):
            sides = [("f", FLANNEL, conf), ("b", BRIDGE, direct)]
            if i % 2:
                sides.reverse()  # alternate who goes first
            for command, key in (("ADD", "a"), ("DEL", "d")):
                for side, plugin, stdin in sides:
                    settle(idle=args.idle)
                    elapsed = timed([plugin], stdin, env(command, f"{side}{i}"))
                    if i >= WARMUP:
                        samples[side + key].append(elapsed)
        label = f"{flannel_version}" + ("" if flannel_version == bridge_version else f" → bridge {bridge_version}")
        rows.append((f"ADD ({label})", flannel_version, samples["fa"], samples["ba"]))
        rows.append((f"DEL ({label})", flannel_version, samples["fd"], samples["bd"]))

    startup = [timed([PY, "-c", "pass"], b"", env("VERSION", "f-version")) for _ in range(args.iterations)]
    version = [timed([FLANNEL], b"", env("VERSION", "f-version")) for _ in range(args.iterations)]
    print(report(rows, startup, version, args.iterations, args.idle))
    leftovers = [n for n in os.listdir(tmp / "host-local" / "cbr0") if n[0].isdigit()]
    assert not leftovers, f"leaked reservations: {leftovers}"
    return 0


def command_line(iterations: int, idle: float) -> str:
    """The command that reproduces this run, for docs/performance.md."""
    plugin = os.environ.get("FLANNEL_BENCH_PLUGIN")
    return ((f"FLANNEL_BENCH_PLUGIN={plugin} " if plugin else "") + ".venv/bin/python bench/bench_cni.py"
            f" --iterations {iterations}" + (f" --idle {idle:g}" if idle > 0 else ""))


def report(rows: list[tuple[str, str, list[float], list[float]]], startup: list[float], version: list[float],
           iterations: int, idle: float) -> str:
    lines = [
        f"Command: `{command_line(iterations, idle)}` ({time.strftime('%Y-%m-%d')})",
        "",
        "| call | flannel + bridge median | p95 | bridge alone median | p95 | overhead (median) | target |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, _, flannel, bridge in rows:
        overhead = statistics.median(flannel) - statistics.median(bridge)
        lines.append(
            f"| {name} | {statistics.median(flannel):.1f} ms | {p95(flannel):.1f} ms"
            f" | {statistics.median(bridge):.1f} ms | {p95(bridge):.1f} ms | {overhead:.1f} ms | ≤ 15 ms |"
        )
    lines += [
        "",
        f"For scale, same run: `python -c pass` in the venv, median {statistics.median(startup):.1f} ms; "
        f"`flannel` VERSION (start-up plus dispatch), median {statistics.median(version):.1f} ms.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--idle", type=float, default=0.0,
                        help="sleep this many seconds before each call (an idle node) instead of a warm CPU")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pods", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    sys.exit(main())
