"""A simulated host's own mount namespace, held by one process, beside its network namespace.

Simulated hosts on one machine share the filesystem, but some components keep per-host state at fixed paths:
wireguard-go's UAPI sockets under ``/var/run/wireguard``, charon's VICI socket under ``/var/run``, container
runtimes under ``/run`` and ``/var/lib``. Each host therefore gets a private mount namespace, created inside
its network namespace and held by one long-lived process (the *holder*); every command for that host runs
with ``nsenter -t <holder> -m -n``. In it:

- ``/run`` (and so ``/var/run``, a symlink to it on Debian) is a bind mount of a per-host directory, which the
  test can read from outside at ``holder.run_dir``;
- ``/sys`` is a fresh sysfs of the host's network namespace (as ``ip netns exec`` gives), with the cgroup
  mounts carried across, which ``ip netns exec`` loses;
- any further ``binds`` (e.g. ``/etc/cni/net.d`` -> a per-host directory) are mounted over their targets.

``close`` kills every process that lives in the holder's mount namespace (a daemon such as wireguard-go,
started by flanneld, outlives flanneld by design), found by namespace and killed by PID.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_READY = "holder-ready"


def _script(run_dir: Path, binds: Mapping[str, Path]) -> str:
    cg = run_dir.parent / f".{run_dir.name}-cgroup"
    lines = [
        "set -e",
        "mount --make-rprivate /",
        f"mkdir -p {shlex.quote(str(cg))}",
        f"mount --rbind /sys/fs/cgroup {shlex.quote(str(cg))}",
        "mount -t sysfs sysfs /sys",
        f"mount --move {shlex.quote(str(cg))} /sys/fs/cgroup",
        f"rmdir {shlex.quote(str(cg))}",
        f"mount --bind {shlex.quote(str(run_dir))} /run",
    ]
    for target, source in binds.items():
        lines += [f"mkdir -p {shlex.quote(target)}", f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}"]
    lines += [f"echo {_READY}", "exec sleep infinity"]
    return "\n".join(lines)


class MountHolder:
    """One host's private mount namespace inside network namespace ``netns``; see the module docstring."""

    def __init__(self, netns: str, workdir: Path, binds: Mapping[str, Path] | None = None) -> None:
        self.netns = netns
        self.run_dir = workdir / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for source in (binds or {}).values():
            Path(source).mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{netns}", "unshare", "--mount", "--propagation", "private",
             "sh", "-c", _script(self.run_dir, binds or {})],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if line != _READY:
            self._proc.kill()
            _, err = self._proc.communicate(timeout=5)
            raise RuntimeError(f"mount holder for {netns} did not start: {line} {err.strip()}")
        self._mnt_ns = os.readlink(f"/proc/{self._proc.pid}/ns/mnt")

    @property
    def pid(self) -> int:
        """The holder's PID, for ``nsenter -t``."""
        return self._proc.pid

    def prefix(self) -> list[str]:
        """The argv prefix that runs a command in this host (mount and network namespaces)."""
        return ["nsenter", "-t", str(self.pid), "-m", "-n", "--"]

    def run(self, *args: str, check: bool = True, timeout: float = 30,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in this host and wait for it, capturing text output."""
        full_env = {**os.environ, **env} if env else None
        return subprocess.run([*self.prefix(), *args], check=check, capture_output=True, text=True,
                              timeout=timeout, env=full_env)

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running command in this host."""
        return subprocess.Popen([*self.prefix(), *args], **kwargs)

    def pids(self) -> list[int]:
        """Every process in this host's mount namespace except the holder itself."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self._proc.pid:
                continue
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/mnt") == self._mnt_ns:
                    found.append(int(entry))
        return found

    def close(self) -> None:
        """Kill (by PID) every process left in the host's mount namespace, then the holder."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline and self.pids():
                time.sleep(0.05)
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(5)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> MountHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
