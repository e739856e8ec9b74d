"""CNI plugin start-up, A/B: installed plugins timed against each other, calls interleaved, wall and CPU time.

What bench/bench_cni.py's ADD overhead is made of, without the kernel's share: the delegate is a stub (a static
C program, compiled here, that reads its stdin and prints a fixed ADD result), so an ADD is the plugin's own
work (start-up, imports, reading subnet.env, saving the delegate config with its fsyncs, one posix_spawn) and
nothing else. No namespaces, no root: the data directory is a temporary one. Each round calls every plugin
once, the order reversed every other round, after a busy wait (the CPU kept warm) or ``--idle SECONDS`` of
sleep (an idle node). CPU time (the process and what it waited for, from ``wait4``) is reported beside wall
time: on a shared machine it is the steadier of the two, as it leaves out waiting for a core.

``--bundled`` adds the current tree's plugin with its bundled runtime, built as the image builds it
(tests/cni_bundle.py); ``--plugin PATH`` adds an installed plugin (its ``flannel`` launcher).

Usage: .venv/bin/python bench/bench_cni_start.py [--verb ADD|DEL|VERSION] [--rounds 60] [--idle 0.5]
       [--bundled] [--plugin PATH ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cni_bundle import build_launcher, build_runtime, bundle_env  # noqa: E402

INSTALLER = REPO / "deploy" / "image" / "flannel_install.py"
SUBNET_ENV = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
STUB = r"""
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
int main(void) {
    char buf[4096];
    while (read(0, buf, sizeof buf) > 0) {}
    const char *command = getenv("CNI_COMMAND");
    const char *result = "{\"cniVersion\":\"0.3.1\",\"ips\":[{\"version\":\"4\",\"address\":\"10.1.17.2/24\"}]}\n";
    if (command != NULL && strcmp(command, "ADD") == 0 && write(1, result, strlen(result)) < 0) return 1;
    return 0;
}
"""
WARMUP = 3


def build_stub(cni_dir: Path) -> None:
    """The stub delegate as ``cni_dir/bridge``."""
    source = cni_dir / "stub.c"
    source.write_text(STUB)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(cni_dir / "bridge"), str(source)], check=True, timeout=120)


def install_bundled(top: Path) -> str:
    env = bundle_env(build_runtime(top / "runtime"), build_launcher(top / "launcher"))
    bin_dir = top / "bundled"
    bin_dir.mkdir()
    subprocess.run([sys.executable, str(INSTALLER), "install-cni-plugin", "--python=bundled", str(bin_dir)],
                   env={**os.environ, **env}, check=True, capture_output=True, timeout=300)
    return str(bin_dir / "flannel")


def settle(idle: float) -> None:
    if idle > 0:
        time.sleep(idle)
        return
    end = time.perf_counter() + 0.03
    while time.perf_counter() < end:
        pass


def call(plugin: str, stdin_path: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU milliseconds of one call."""
    fd = os.open(stdin_path, os.O_RDONLY)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        actions = [(os.POSIX_SPAWN_DUP2, fd, 0), (os.POSIX_SPAWN_DUP2, devnull, 1), (os.POSIX_SPAWN_DUP2, devnull, 2)]
        start = time.perf_counter()
        pid = os.posix_spawn(plugin, [plugin], env, file_actions=actions)
        _, status, usage = os.wait4(pid, 0)
        wall = (time.perf_counter() - start) * 1000.0
    finally:
        os.close(fd)
        os.close(devnull)
    if status != 0:
        raise SystemExit(f"{plugin} {env['CNI_COMMAND']} failed (wait status {status})")
    return wall, (usage.ru_utime + usage.ru_stime) * 1000.0


def spread(values: list[float]) -> str:
    cuts = statistics.quantiles(values, n=10)
    return f"{statistics.median(values):.2f} ms | {cuts[0]:.2f} / {cuts[-1]:.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verb", default="ADD", choices=("ADD", "DEL", "VERSION"))
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--idle", type=float, default=0.0, help="sleep this long before each call (an idle node)")
    parser.add_argument("--bundled", action="store_true", help="also time the current tree's bundled plugin")
    parser.add_argument("--plugin", action="append", default=[], help="an installed plugin's launcher")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cni-start-") as top_name:
        top = Path(top_name)
        plugins = list(args.plugin) + ([install_bundled(top)] if args.bundled else [])
        if not plugins:
            parser.error("nothing to time: give --bundled or --plugin PATH")
        cni_dir = top / "cni"
        cni_dir.mkdir()
        build_stub(cni_dir)
        (top / "subnet.env").write_text(SUBNET_ENV)
        conf = {"name": "cbr0", "cniVersion": "0.3.1", "type": "flannel", "subnetFile": str(top / "subnet.env"),
                "dataDir": str(top / "data"), "delegate": {"bridge": "cni0", "isDefaultGateway": True}}
        (top / "conf.json").write_text(json.dumps(conf))
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "CNI_COMMAND": args.verb, "CNI_CONTAINERID": "bench",
               "CNI_NETNS": "/var/run/netns/bench", "CNI_IFNAME": "eth0", "CNI_PATH": str(cni_dir)}
        if args.verb == "DEL":  # DEL replays what ADD saved
            for plugin in plugins:
                call(plugin, top / "conf.json", {**env, "CNI_COMMAND": "ADD"})
        wall: list[list[float]] = [[] for _ in plugins]
        cpu: list[list[float]] = [[] for _ in plugins]
        load_before = os.getloadavg()[0]
        for i in range(WARMUP + args.rounds):
            order = list(range(len(plugins)))
            if i % 2:
                order.reverse()
            for k in order:
                if args.verb == "DEL":  # something to delete every time, outside the timing
                    call(plugins[k], top / "conf.json", {**env, "CNI_COMMAND": "ADD"})
                settle(args.idle)
                elapsed, used = call(plugins[k], top / "conf.json", env)
                if i >= WARMUP:
                    wall[k].append(elapsed)
                    cpu[k].append(used)
        load_after = os.getloadavg()[0]
    flags = (f" --idle {args.idle:g}" if args.idle else "") + "".join(f" --plugin {p}" for p in args.plugin)
    flags += " --bundled" if args.bundled else ""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"Command: `.venv/bin/python bench/bench_cni_start.py --verb {args.verb} --rounds {args.rounds}{flags}`"
          f" ({when}; load average {load_before:.2f} before, {load_after:.2f} after)\n")
    print(f"| plugin | {args.verb} wall median | p10 / p90 | CPU median | p10 / p90 |\n|---|---:|---:|---:|---:|")
    for k, plugin in enumerate(plugins):
        name = "bundled (this tree)" if args.bundled and k == len(plugins) - 1 else plugin
        print(f"| {name} | {spread(wall[k])} | {spread(cpu[k])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
