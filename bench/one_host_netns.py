"""Run a benchmark script inside a fresh network namespace that looks like one host: a veth ``eth0`` with
198.18.0.1/24 and a default route, and ``lo`` up. Shared by the whole-daemon and kube-mode benchmarks.

The script re-executes itself with ``--inner`` inside the namespace, so nothing it does touches the root
namespace; the namespace (and with it every device) is deleted afterwards, whatever happened.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = str(REPO / ".venv" / "bin" / "python")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.deployed import DEPLOYED_ENV  # noqa: E402


def flanneld_env(**extra: str) -> dict[str, str]:
    """The environment a benchmark starts flanneld with: this process's, the deployed settings
    (``tests.deployed``: what the image and the systemd unit set), then ``extra``. ``BENCH_AS_DEPLOYED=0``
    measures flanneld without the deployed settings."""
    deployed = {} if os.environ.get("BENCH_AS_DEPLOYED") == "0" else DEPLOYED_ENV
    return {**os.environ, **deployed, **extra}


def run_inside(script: str, prefix: str) -> int:
    """Build the namespace ``<prefix><pid>x``, run ``script --inner <this process's args>`` in it, delete it."""
    ns = f"{prefix}{os.getpid()}x"
    compile_flannel()
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        def ns_run(*cmd: str) -> None:
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        ns_run("ip", "link", "set", "lo", "up")
        # This kernel has no dummy driver: a veth whose peer stays in the namespace serves as the underlay.
        ns_run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        ns_run("ip", "addr", "add", "198.18.0.1/24", "dev", "eth0")
        ns_run("ip", "link", "set", "eth0p", "up")
        ns_run("ip", "link", "set", "eth0", "up")
        ns_run("ip", "route", "add", "default", "via", "198.18.0.254", "dev", "eth0", "onlink")
        return subprocess.run(["ip", "netns", "exec", ns, PY, script, "--inner", *sys.argv[1:]]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def compile_flannel() -> None:
    """Byte-compile the flannel package that flanneld will import (found as flanneld finds it, ``$PYTHONPATH``
    first). With PYTHONDONTWRITEBYTECODE set, an editable install would otherwise compile every changed module
    at each start, inside the measured time; a pip-installed flanneld is compiled at install."""
    where = subprocess.run([PY, "-c", "import flannel, os; print(os.path.dirname(flannel.__file__))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    # Both levels: plain, and the docstring-free one flanneld runs with as deployed (``DEPLOYED_ENV``).
    subprocess.run([PY, "-m", "compileall", "-q", "-o", "0", "-o", "2", where], check=True,
                   stdout=subprocess.DEVNULL)
