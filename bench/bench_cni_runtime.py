"""CNI plugin start-up: the bundled runtime (static launcher + the image's interpreter tree) against the
node's own Python (the /bin/sh launcher), in one run, calls interleaved.

Both are installed by ``install-cni-plugin`` into temporary CNI bin directories, the bundle built as the
Dockerfile builds it (tests/cni_bundle.py). Each round calls VERSION once through each, the order
alternating; the environment is what a runtime gives a plugin (a plain PATH, whose first Python is this
interpreter outside the virtualenv). For ADD/DEL overhead against bare ``bridge``, point bench/bench_cni.py at
either launcher with ``FLANNEL_BENCH_PLUGIN``.

Usage: ``.venv/bin/python bench/bench_cni_runtime.py [--rounds 100]``
"""

from __future__ import annotations

import argparse
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


def install(bin_dir: Path, env: dict[str, str], mode: str) -> Path:
    bin_dir.mkdir()
    subprocess.run([sys.executable, str(INSTALLER), "install-cni-plugin", f"--python={mode}", str(bin_dir)],
                   env={**os.environ, **env}, check=True, capture_output=True, timeout=120)
    return bin_dir / "flannel"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cni-runtime-") as top:
        tmp = Path(top)
        env = bundle_env(build_runtime(tmp / "runtime"), build_launcher(tmp / "launcher"))
        pybin = tmp / "pybin"
        pybin.mkdir()
        (pybin / f"python3.{sys.version_info.minor}").symlink_to(os.path.realpath(sys.executable))
        launchers = {"bundled": install(tmp / "bundled", env, "bundled"), "node": install(tmp / "node", env, "node")}
        call_env = {"CNI_COMMAND": "VERSION", "PATH": f"{pybin}:/usr/local/bin:/usr/bin:/bin"}
        samples: dict[str, list[float]] = {name: [] for name in launchers}
        for i in range(3 + args.rounds):
            order = list(launchers.items())
            if i % 2:
                order.reverse()
            for name, launcher in order:
                start = time.perf_counter()
                subprocess.run([str(launcher)], env=call_env, stdout=subprocess.DEVNULL, check=True)
                if i >= 3:
                    samples[name].append((time.perf_counter() - start) * 1000)
        size = sum(f.stat().st_size for f in (tmp / "bundled").rglob("*") if f.is_file())
    print(f"Command: `.venv/bin/python bench/bench_cni_runtime.py --rounds {args.rounds}` "
          f"({time.strftime('%Y-%m-%d')})\n")
    print("| launcher | VERSION median | p10 | p90 |\n|---|---:|---:|---:|")
    for name, values in samples.items():
        q = statistics.quantiles(values, n=10)
        print(f"| {name} | {statistics.median(values):.1f} ms | {q[0]:.1f} ms | {q[-1]:.1f} ms |")
    print(f"\nInstalled size, bundled: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
