"""Start the fake API server as a separate process (optionally inside a network namespace) and stop it by PID.

End-to-end tests run flanneld in namespaces; the API server must then live at an address those namespaces
reach, so it runs as its own process, ``python -m tests.kube_fake``, under ``ip netns exec`` when asked.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FakeKubeProcess:
    """A running fake; ``url`` as it printed it."""

    proc: subprocess.Popen[bytes]
    url: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def hook(self, name: str, **params: Any) -> Any:
        """Call a ``/_fake/<name>`` hook (plain HTTP servers only; from the root namespace only without netns)."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        req = urllib.request.Request(f"{self.url}/_fake/{name}?{query}", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_fake_process(listen: str = "127.0.0.1:0", *, netns: str | None = None, args: Sequence[str] = (),
                       timeout: float = 30.0) -> FakeKubeProcess:
    """Start ``python -m tests.kube_fake --listen LISTEN ARGS...`` and wait for its ``ready`` line."""
    cmd = [sys.executable, "-m", "tests.kube_fake", "--listen", listen, *args]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        piece = os.read(proc.stdout.fileno(), 1024)
        if not piece:
            break
        line += piece
    if not line.startswith(b"ready"):
        FakeKubeProcess(proc, "").stop()
        raise RuntimeError(f"fake API server did not become ready within {timeout}s (said {line[:200]!r})")
    return FakeKubeProcess(proc, line.split()[1].decode())
