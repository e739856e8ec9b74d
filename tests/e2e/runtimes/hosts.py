"""Two simulated flannel hosts (vxlan, ``--ip-masq``) ready for a container runtime, plus an outside host.

Each host has its own mount namespace (tests/host_mounts.py) in which the runtime finds what it would find on
a real node: flanneld's ``/run/flannel/subnet.env``, the network config ``/etc/cni/net.d/10-flannel.conflist``
(deploy/cni/10-flannel.conflist, upstream's ``cni-conf.json``: ``flannel`` delegating to ``bridge`` +
``host-local``, then ``portmap``), the plugins in ``/opt/cni/bin`` (links to Debian's reference plugins and to
this project's ``flannel``), and private ``/var/lib/cni`` and runtime state directories. Two adjustments make
the runtimes work in a namespace on this machine (issue #13, measured): its cgroups are mixed v1/v2, which
crun refuses, so the v2 mount ``/sys/fs/cgroup/unified`` is unmounted inside each host; and the runtimes'
daemons are started inside the host, never in the root namespace, and stopped by PID.

Mount points that did not exist before (e.g. ``/var/lib/docker`` on a machine where dockerd never ran) are
created by the mount holders and removed again, when still empty, after the cluster is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.cluster import CNI_BIN_DIR, FLANNEL_CNI, REPO, Cluster, Host

CONFLIST = REPO / "deploy" / "cni" / "10-flannel.conflist"
CNI_BINDS = ("/var/lib/cni", "/etc/cni/net.d", "/opt/cni/bin")
"""Per-host directories every runtime here uses (ctr hard-codes the last two)."""
NETWORK = "cbr0"
"""The network's name in the conflist: podman's ``--network``, host-local's directory under /var/lib/cni."""


def host_dir(host: Host, target: str) -> Path:
    """Where the host's private copy of ``target`` (a bind mount inside the host) lives, seen from outside."""
    return host.workdir / "binds" / target.strip("/").replace("/", "_")


@dataclass
class RuntimeHosts:
    """The cluster, its two hosts and the outside namespace."""

    cluster: Cluster
    h1: Host
    h2: Host
    outside: str

    @property
    def hosts(self) -> tuple[Host, Host]:
        return self.h1, self.h2


def _prepare(host: Host) -> None:
    bin_dir = host_dir(host, "/opt/cni/bin")
    for plugin in Path(CNI_BIN_DIR).iterdir():
        (bin_dir / plugin.name).symlink_to(plugin)
    (bin_dir / "flannel").symlink_to(FLANNEL_CNI)  # a link keeps the venv's interpreter (docs/cni.md)
    (host_dir(host, "/etc/cni/net.d") / "10-flannel.conflist").write_text(CONFLIST.read_text())
    assert host.holder is not None
    # flanneld writes host.subnet_file (Cluster passes --subnet-file); the runtime and the plugin read the default
    (host.holder.run_dir / "flannel").mkdir()
    (host.holder.run_dir / "flannel" / "subnet.env").symlink_to(host.subnet_file)
    host.run("umount", "/sys/fs/cgroup/unified", check=False)  # absent on a pure v1 or v2 machine: fine
    fs = host.run("stat", "-f", "-c", "%T", "/sys/fs/cgroup/unified", check=False).stdout.strip()
    assert fs != "cgroup2fs", "crun refuses hybrid cgroups: /sys/fs/cgroup/unified is still mounted"


@contextlib.contextmanager
def runtime_hosts(extra_binds: Iterable[str]) -> Iterator[RuntimeHosts]:
    """A started two-host cluster; ``extra_binds`` are the runtime's own per-host directories."""
    targets = (*CNI_BINDS, *extra_binds)
    created = _missing_dirs(targets)
    cluster = Cluster(private_mounts=True)
    try:
        cluster.start()
        hosts = []
        for n in (1, 2):
            workdir = cluster.tmp / f"h{n}"
            binds = {t: workdir / "binds" / t.strip("/").replace("/", "_") for t in targets}
            host = cluster.add_host(n, binds=binds)
            _prepare(host)
            hosts.append(host)
        outside = cluster.add_outside(*hosts)
        for host in hosts:
            cluster.start_flanneld(host, "--ip-masq")
        for host in hosts:
            assert cluster.wait_ready(host)["FLANNEL_IPMASQ"] == "true"
        yield RuntimeHosts(cluster, hosts[0], hosts[1], outside)
    finally:
        cluster.close()
        _remove_if_unused(created)


def _missing_dirs(targets: Iterable[str]) -> list[Path]:
    """The directories the mount holders will create for ``targets`` (with their parents), deepest first."""
    missing: set[Path] = set()
    for target in targets:
        path = Path(target)
        while not path.exists():
            missing.add(path)
            path = path.parent
    return sorted(missing, key=lambda p: len(p.parts), reverse=True)


def _remove_if_unused(dirs: Iterable[Path]) -> None:
    """rmdir each directory that is empty and no mount point in any mount namespace: removing a mount point
    would detach another run's bind mount."""
    mounted: set[str] = set()
    for info in Path("/proc").glob("[0-9]*/mountinfo"):
        with contextlib.suppress(OSError):
            mounted.update(line.split()[4] for line in info.read_text().splitlines())
    for path in dirs:
        if str(path) not in mounted:
            with contextlib.suppress(OSError):  # not empty: someone else's now, leave it
                path.rmdir()


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    """Stop a daemon we started, by its PID: SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (``/proc/PID/stat`` field 22): with the PID, names one process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def kill_containers(started: Iterable[tuple[int, str | None]]) -> None:
    """Backstop for containers a runtime failed to remove: kill each container's first process, by PID and
    only if it is still the same process (same start time); the rest of its PID namespace dies with it.
    Containers live in mount namespaces of their own, out of reach of MountHolder.close."""
    for pid, when in started:
        if when is not None and start_time(pid) == when:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
