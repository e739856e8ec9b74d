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

A/B: ``--plugin PATH`` (repeatable) times several installed plugins in the same run, their calls interleaved
with each other and with bare ``bridge`` (the order rotating every round), so that machine load and CPU state
weigh on each alike. Each gets the median overhead and the p10/p90 of its per-round difference to ``bridge``.

``--bundled`` times the current tree's plugin with its bundled runtime, installed as the image installs it
(runtime and launcher built by tests/cni_bundle.py, then ``install-cni-plugin --python=bundled``); the runtime
is made of Debian's ``/usr/bin/python3.11`` as in the image, or ``--bundled-python PATH``.

Usage (root): .venv/bin/python bench/bench_cni.py [--iterations 30] [--idle 0.5] [--bundled] [--plugin PATH ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cni_bundle import RUNTIME_PYTHON  # noqa: E402
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
    try:
        bundled = [install_bundled(Path(tmp), args.bundled_python)] if args.bundled else []
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    plugins = list(args.plugin) + bundled or [FLANNEL]
    namespaces = [new_netns(underlay=False) for _ in range(2 + len(plugins))]
    node, pods = namespaces[0], namespaces[1:]
    try:
        cmd = [PY, __file__, "--inner", "--pods", ",".join(p.name for p in pods), "--tmp", tmp,
               "--iterations", str(args.iterations), "--idle", str(args.idle)]
        cmd += [f"--plugin={plugin}" for plugin in args.plugin] + [f"--bundled-plugin={b}" for b in bundled]
        cmd += [f"--bundled-python={args.bundled_python}"]
        return subprocess.run(["ip", "netns", "exec", node.name, *cmd], check=False).returncode
    finally:
        for ns in namespaces:
            ns.delete()
        shutil.rmtree(tmp, ignore_errors=True)


CPU_MS: list[float] = []
"""CPU time of each call of ``timed`` (the plugin and every process it waited for, e.g. bridge and host-local):
less disturbed by other jobs than wall time, which also counts waiting for a core."""


def install_bundled(top: Path, python: str = RUNTIME_PYTHON) -> str:
    """The current tree's plugin and a runtime bundled from ``python``, installed into ``top/bundled``; its
    launcher."""
    from tests.cni_bundle import build_launcher, build_runtime, bundle_env

    env = bundle_env(build_runtime(top / "runtime", python), build_launcher(top / "launcher"))
    bin_dir = top / "bundled"
    bin_dir.mkdir()
    installer = REPO / "deploy" / "image" / "flannel_install.py"
    subprocess.run([PY, str(installer), "install-cni-plugin", "--python=bundled", str(bin_dir)],
                   env={**os.environ, **env}, check=True, capture_output=True, timeout=300)
    return str(bin_dir / "flannel")


def timed(argv: list[str], stdin: bytes, env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_MS.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000.0)
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


def deciles(samples: list[float]) -> tuple[float, float]:
    """p10 and p90."""
    cuts = statistics.quantiles(samples, n=10)
    return cuts[0], cuts[-1]


Row = tuple[str, str, list[list[float]], list[float], list[list[float]], list[float]]
"""Call name, plugin, the plugins' wall-time samples (one list per plugin) and bridge's, round by round; then
the same in CPU time."""


def inner(args: argparse.Namespace) -> int:
    tmp = Path(args.tmp)
    (tmp / "subnet.env").write_text(SUBNET_ENV)
    base = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    base.pop("PYTHONDONTWRITEBYTECODE", None)  # a node's runtime does not set it
    plugins = list(args.plugin) + ([args.bundled_plugin] if args.bundled_plugin else []) or [FLANNEL]
    sides = ["b", *(f"f{k}" for k in range(len(plugins)))]  # bare bridge, then each plugin
    pods = dict(zip(sides, args.pods.split(","), strict=True))  # one pod namespace per side

    def env(command: str, side: str, container_id: str) -> dict[str, str]:
        return {**base, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
                "CNI_NETNS": f"{NETNS_DIR}/{pods[side]}", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}

    def flannel_conf(version: str, k: int) -> bytes:
        return json.dumps({
            "name": "cbr0", "cniVersion": version, "type": "flannel", "subnetFile": str(tmp / "subnet.env"),
            "dataDir": str(tmp / f"flannel{k}"), "ipam": {"dataDir": str(tmp / "host-local")},
            "delegate": {"bridge": "fbench0", "hairpinMode": True, "isDefaultGateway": True},
        }).encode()

    load_before = os.getloadavg()
    rows: list[Row] = []
    for flannel_version, bridge_version in (("0.3.1", "0.3.1"), ("1.1.0", "1.0.0")):
        confs = [flannel_conf(flannel_version, k) for k in range(len(plugins))]
        # The exact delegate config flannel gives bridge, taken from flannel's data dir.
        timed([plugins[0]], confs[0], env("ADD", "f0", "probe"))
        delegate = json.loads((tmp / "flannel0" / "probe").read_bytes())
        timed([plugins[0]], confs[0], env("DEL", "f0", "probe"))
        delegate["cniVersion"] = bridge_version
        calls = {"b": ([BRIDGE], json.dumps(delegate).encode())}
        calls.update({f"f{k}": ([plugin], confs[k]) for k, plugin in enumerate(plugins)})
        samples: dict[str, list[float]] = {side + key: [] for side in sides for key in "ad"}
        cpu: dict[str, list[float]] = {side + key: [] for side in sides for key in "ad"}
        for i in range(WARMUP + args.iterations):
            order = sides[i % len(sides):] + sides[:i % len(sides)]  # who goes first rotates
            if (i // len(sides)) % 2:
                order.reverse()
            for command, key in (("ADD", "a"), ("DEL", "d")):
                for side in order:
                    argv, stdin = calls[side]
                    settle(idle=args.idle)
                    elapsed = timed(argv, stdin, env(command, side, f"{side}-{i}"))
                    if i >= WARMUP:
                        samples[side + key].append(elapsed)
                        cpu[side + key].append(CPU_MS[-1])
        label = f"{flannel_version}" + ("" if flannel_version == bridge_version else f" → bridge {bridge_version}")
        for key, verb in (("a", "ADD"), ("d", "DEL")):
            rows.append((f"{verb} ({label})", flannel_version, [samples[f"f{k}{key}"] for k in range(len(plugins))],
                         samples["b" + key], [cpu[f"f{k}{key}"] for k in range(len(plugins))], cpu["b" + key]))

    startup = [timed([PY, "-c", "pass"], b"", env("VERSION", "f0", "version")) for _ in range(args.iterations)]
    versions = [[timed([plugin], b"", env("VERSION", "f0", "version")) for _ in range(args.iterations)]
                for plugin in plugins]
    print(report(rows, startup, versions, args, plugins, (load_before, os.getloadavg())))
    for k in range(len(plugins)):
        leftovers = [n for n in os.listdir(tmp / "host-local" / "cbr0") if n[0].isdigit()]
        assert not leftovers, f"leaked reservations: {leftovers}"
        assert not [n for n in os.listdir(tmp / f"flannel{k}") if not n.startswith(".")], "leaked saved configs"
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, for docs/performance.md."""
    plugin = os.environ.get("FLANNEL_BENCH_PLUGIN")
    return ((f"FLANNEL_BENCH_PLUGIN={plugin} " if plugin and not args.plugin else "")
            + ".venv/bin/python bench/bench_cni.py" + f" --iterations {args.iterations}"
            + (f" --idle {args.idle:g}" if args.idle > 0 else "")
            + "".join(f" --plugin {p}" for p in args.plugin) + (" --bundled" if args.bundled_plugin else "")
            + (f" --bundled-python {args.bundled_python}"
               if args.bundled_plugin and args.bundled_python != RUNTIME_PYTHON else ""))


def report(rows: list[Row], startup: list[float], versions: list[list[float]], args: argparse.Namespace,
           plugins: list[str], loads: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    several = len(plugins) > 1
    lines = [
        f"Command: `{command_line(args)}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average"
        f" {loads[0][0]:.2f} before, {loads[1][0]:.2f} after)",
        "",
        *(f"Plugin {k}: {'bundled (this tree)' if p == args.bundled_plugin else p}"
          for k, p in enumerate(plugins) if several),
        *([""] if several else []),
        "| call |" + (" plugin |" if several else "") + " flannel + bridge median | p95 | bridge alone median | p95"
        " | overhead (median) | per-round overhead p10 / p90 | CPU overhead (median) | target |",
        "|---|" + ("---|" if several else "") + "---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, _, per_plugin, bridge, per_plugin_cpu, bridge_cpu in rows:
        for k, flannel in enumerate(per_plugin):
            overhead = statistics.median(flannel) - statistics.median(bridge)
            low, high = deciles([f - b for f, b in zip(flannel, bridge, strict=True)])
            cpu_overhead = statistics.median(per_plugin_cpu[k]) - statistics.median(bridge_cpu)
            lines.append(
                f"| {name} |" + (f" {k} |" if several else "")
                + f" {statistics.median(flannel):.1f} ms | {p95(flannel):.1f} ms"
                f" | {statistics.median(bridge):.1f} ms | {p95(bridge):.1f} ms | {overhead:.1f} ms"
                f" | {low:.1f} / {high:.1f} ms | {cpu_overhead:.1f} ms | ≤ 15 ms |"
            )
    version_text = ", ".join(f"{statistics.median(v):.1f} ms" for v in versions)
    lines += [
        "",
        f"For scale, same run: `python -c pass` in the venv, median {statistics.median(startup):.1f} ms; "
        f"`flannel` VERSION (start-up plus dispatch), median {version_text}.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--idle", type=float, default=0.0,
                        help="sleep this many seconds before each call (an idle node) instead of a warm CPU")
    parser.add_argument("--plugin", action="append", default=[],
                        help="an installed plugin to time (repeat for an interleaved A/B); default:"
                        " FLANNEL_BENCH_PLUGIN or the venv's console script")
    parser.add_argument("--bundled", action="store_true",
                        help="time the current tree's plugin with its bundled runtime (installed here)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bundled-python", default=RUNTIME_PYTHON,
                        help="with --bundled: the interpreter the runtime is made of (default: Debian's "
                             "/usr/bin/python3.X, as in the image, where it exists; else this one)")
    parser.add_argument("--bundled-plugin", help=argparse.SUPPRESS)
    parser.add_argument("--pods", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    sys.exit(main())
