"""The three container runtimes the tests drive, each behind the same small interface.

Every command runs inside a simulated host (``host.run`` = ``nsenter -t <holder> -m -n``), with the
runtime's own CLI, as an operator would type it on a flannel node:

* **podman** (no daemon), CNI network backend: ``podman run --network cbr0``, the network config being
  upstream's ``cni-conf.json`` in ``/etc/cni/net.d``. Its ``containers.conf`` is per host (``/etc/containers``
  is a bind mount), with what a namespace on this machine needs: no default ulimits (raising
  ``RLIMIT_NOFILE`` is refused here), cgroupfs, events to a file.
* **containerd** with ``ctr run --cni``, which reads ``/etc/cni/net.d`` and ``/opt/cni/bin`` (fixed paths)
  and runs the first network config it finds. ``ctr`` tears the network down only when it ran the container
  in the foreground (``ctr run --rm`` without ``-d``, then ``ctr task kill``), so each container is one
  ``ctr run`` process.
* **dockerd** started the way deploy/systemd/docker.service.d/flannel.conf starts it: ``mk-docker-opts -c``
  turns ``/run/flannel/subnet.env`` into ``/run/docker_opts.env``, and dockerd gets ``$DOCKER_OPTS``
  (``--bip``, ``--ip-masq=false``, ``--mtu``); its data root, exec root, socket and pidfile are per host.

Images come from tests/e2e/runtimes/image.py (no registry is reachable).
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from tests.e2e.cluster import REPO, Host
from tests.e2e.runtimes.hosts import NETWORK, RuntimeHosts, host_dir, kill_containers, start_time, stop
from tests.e2e.runtimes.image import oci_archive, rootfs_tar
from tests.waiting import wait_until_sync

IMAGE = "localhost/busybox:flannel"
MK_DOCKER_OPTS = str(REPO / ".venv" / "bin" / "mk-docker-opts")
TIMEOUT = 60
"""Seconds for one runtime command: generous, the machine is shared."""


class Runtime(ABC):
    """One runtime on the two hosts of ``hosts``."""

    name: ClassVar[str]
    binaries: ClassVar[tuple[str, ...]]
    """The programs whose absence skips the runtime's tests."""
    package: ClassVar[str]
    """The Debian package that installs it (Makefile APT_PACKAGES)."""
    binds: ClassVar[tuple[str, ...]]
    """Per-host directories besides the CNI ones."""
    cni: ClassVar[bool] = True
    """Whether containers are attached by the flannel CNI plugin (else by dockerd's bridge driver)."""
    publishes: ClassVar[bool] = True
    """Whether the CLI publishes ports (``-p``): podman through the conflist's ``portmap``, dockerd itself."""

    def __init__(self, hosts: RuntimeHosts) -> None:
        self.hosts = hosts
        self.started: list[tuple[int, str | None]] = []
        self._exec_ids = itertools.count()
        self.last_ping: subprocess.CompletedProcess[str] | None = None

    @classmethod
    def missing(cls) -> str | None:
        """The skip reason when the runtime is not installed here, else None."""
        absent = [b for b in cls.binaries if shutil.which(b) is None]
        if absent:
            return f"{', '.join(absent)} not installed (Debian package {cls.package}; `make deps` installs it)"
        return None

    def run(self, host: Host, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A runtime CLI command on ``host``; a failure names the command and its output."""
        r = host.run(*args, check=False, timeout=TIMEOUT)
        if check and r.returncode != 0:
            raise AssertionError(f"h{host.n}: {' '.join(args)} exited {r.returncode}: {r.stdout} {r.stderr}")
        return r

    @abstractmethod
    def setup(self, host: Host) -> None:
        """Start the runtime's daemon on ``host`` (if it has one) and import the image."""

    @abstractmethod
    def start(self, host: Host, name: str, publish: str | None = None) -> None:
        """Start container ``name`` on ``host``, running ``sleep``, attached to the flannel network;
        ``publish`` is ``-p``'s ``HOSTPORT:CONTAINERPORT`` (runtimes that publish ports only)."""

    @abstractmethod
    def exec(self, host: Host, name: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in container ``name`` (unchecked)."""

    @abstractmethod
    def remove(self, host: Host, name: str) -> None:
        """Stop and remove container ``name``, as its user would."""

    @abstractmethod
    def pid(self, host: Host, name: str) -> int:
        """The host PID of the container's first process."""

    @abstractmethod
    def close(self) -> None:
        """Remove what is left and stop the daemons, by PID."""

    def remember(self, host: Host, name: str) -> None:
        """Note the container's first process for the teardown's backstop (``kill_containers``)."""
        pid = self.pid(host, name)
        self.started.append((pid, start_time(pid)))

    def backstop(self) -> None:
        kill_containers(self.started)

    def address(self, host: Host, name: str) -> tuple[str, int]:
        """The container's IPv4 address on ``eth0`` (with prefix) and the interface's MTU."""
        r = self.exec(host, name, "ip", "-o", "-4", "addr", "show", "dev", "eth0")
        assert r.returncode == 0, f"{name}: ip addr: {r.stderr}"
        addr = r.stdout.split(" inet ", 1)[1].split()[0]
        link = self.exec(host, name, "cat", "/sys/class/net/eth0/mtu")
        return addr, int(link.stdout)

    def ping(self, host: Host, name: str, ip: str) -> bool:
        """One ping from container ``name``; the last answer is kept in ``last_ping`` for failure messages."""
        self.last_ping = self.exec(host, name, "ping", "-c", "1", "-W", "2", ip)
        return self.last_ping.returncode == 0


class Podman(Runtime):
    name = "podman"
    binaries = ("podman",)
    package = "podman"
    binds = ("/var/lib/containers", "/etc/containers")

    CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[network]
network_backend = "cni"
network_config_dir = "/etc/cni/net.d"
cni_plugin_dirs = ["/opt/cni/bin"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
    STORAGE_CONF = """\
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
"""

    def setup(self, host: Host) -> None:
        etc = host_dir(host, "/etc/containers")
        (etc / "containers.conf").write_text(self.CONTAINERS_CONF)
        (etc / "storage.conf").write_text(self.STORAGE_CONF)
        (etc / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        tar = rootfs_tar(host.workdir / "rootfs.tar")
        self.run(host, "podman", "import", str(tar), IMAGE)

    def start(self, host: Host, name: str, publish: str | None = None) -> None:
        # podman 4 leaves NET_RAW out of the default capabilities, and busybox's ping needs a raw socket
        ports = ["-p", publish] if publish else []
        self.run(host, "podman", "run", "-d", "--name", name, "--network", NETWORK, "--cap-add", "NET_RAW",
                 *ports, IMAGE, "sleep", "3600")
        self.remember(host, name)

    def exec(self, host: Host, name: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return self.run(host, "podman", "exec", name, *cmd, check=False)

    def remove(self, host: Host, name: str) -> None:
        self.run(host, "podman", "rm", "-f", "-t", "0", name)

    def pid(self, host: Host, name: str) -> int:
        return int(self.run(host, "podman", "inspect", "-f", "{{.State.Pid}}", name).stdout)

    def close(self) -> None:
        for host in self.hosts.hosts:
            self.run(host, "podman", "rm", "-a", "-f", "-t", "0", check=False)
        self.backstop()


class Containerd(Runtime):
    name = "containerd"
    binaries = ("containerd", "ctr")
    package = "containerd"
    binds = ("/var/lib/containerd",)
    publishes = False  # ctr passes no portMappings to CNI

    CONFIG = """\
version = 2
# ctr talks to containerd directly; the CRI plugin (for kubelet) is not needed
disabled_plugins = ["io.containerd.grpc.v1.cri"]
"""

    def __init__(self, hosts: RuntimeHosts) -> None:
        super().__init__(hosts)
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.runs: dict[tuple[int, str], subprocess.Popen[bytes]] = {}

    def setup(self, host: Host) -> None:
        assert host.holder is not None
        config = host.workdir / "containerd.toml"
        config.write_text(self.CONFIG)
        with open(host.workdir / "containerd.log", "ab") as log:
            self.daemons.append(host.holder.popen(["containerd", "--config", str(config)], stdout=log, stderr=log))
        wait_until_sync(lambda: self.run(host, "ctr", "version", check=False).returncode == 0,
                        f"containerd answers on h{host.n}", timeout=TIMEOUT)
        self.run(host, "ctr", "image", "import", str(oci_archive(host.workdir / "oci.tar", IMAGE)))

    def _status(self, host: Host, name: str) -> tuple[int, str] | None:
        for line in self.run(host, "ctr", "task", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == name:
                return int(fields[1]), fields[2]
        return None

    def start(self, host: Host, name: str, publish: str | None = None) -> None:
        assert host.holder is not None and publish is None
        with open(host.workdir / f"ctr-run-{name}.log", "ab") as log:
            proc = host.holder.popen(["ctr", "run", "--cni", "--rm", IMAGE, name, "sleep", "3600"],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.runs[host.n, name] = proc

        def running() -> bool:
            assert proc.poll() is None, f"ctr run {name} exited {proc.returncode}"
            status = self._status(host, name)
            return status is not None and status[1] == "RUNNING"

        wait_until_sync(running, f"container {name} runs on h{host.n}", timeout=TIMEOUT)
        self.remember(host, name)

    def exec(self, host: Host, name: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return self.run(host, "ctr", "task", "exec", "--exec-id", f"e{next(self._exec_ids)}", name, *cmd,
                        check=False)

    def remove(self, host: Host, name: str) -> None:
        """``ctr task kill``: the foreground ``ctr run`` then removes the network (CNI DEL) and, with ``--rm``,
        the container."""
        self.run(host, "ctr", "task", "kill", "-s", "SIGKILL", name)
        proc = self.runs.pop((host.n, name))
        code = proc.wait(TIMEOUT)
        assert code == 137, f"ctr run {name} exited {code}: {(host.workdir / f'ctr-run-{name}.log').read_text()}"
        assert self.run(host, "ctr", "container", "info", name, check=False).returncode != 0, "container left"

    def pid(self, host: Host, name: str) -> int:
        status = self._status(host, name)
        assert status is not None, f"no task {name} on h{host.n}"
        return status[0]

    def close(self) -> None:
        for (n, name), proc in list(self.runs.items()):
            host = self.hosts.cluster.hosts[n]
            self.run(host, "ctr", "task", "kill", "-s", "SIGKILL", name, check=False)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                stop(proc)
        self.backstop()
        for daemon in self.daemons:
            stop(daemon)


class Docker(Runtime):
    name = "docker"
    binaries = ("dockerd", "docker")
    package = "docker.io"
    binds = ("/var/lib/docker", "/etc/docker")
    cni = False
    SOCKET = "unix:///run/docker.sock"

    def __init__(self, hosts: RuntimeHosts) -> None:
        super().__init__(hosts)
        self.daemons: list[subprocess.Popen[bytes]] = []

    def docker(self, host: Host, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(host, "docker", "-H", self.SOCKET, *args, check=check)

    def options(self, host: Host) -> str:
        """What mk-docker-opts wrote on ``host``."""
        assert host.holder is not None
        return (host.holder.run_dir / "docker_opts.env").read_text()

    def setup(self, host: Host) -> None:
        assert host.holder is not None
        (host_dir(host, "/etc/docker") / "daemon.json").write_text("{}\n")
        # as the systemd drop-in does: the options from subnet.env (default paths), then dockerd with them
        self.run(host, MK_DOCKER_OPTS, "-c")
        # as on a freshly booted host: forwarding off until dockerd turns it on, and with it sets the FORWARD
        # policy to DROP; only flanneld's FORWARD rules then let traffic from other hosts into docker0
        host.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
        daemon = (f"exec dockerd -H {self.SOCKET} --data-root /var/lib/docker --exec-root /run/docker "
                  "--pidfile /run/docker.pid --config-file /etc/docker/daemon.json $DOCKER_OPTS")
        log_file = host.workdir / "dockerd.log"
        with open(log_file, "ab") as log:
            proc = host.holder.popen(["sh", "-c", f". /run/docker_opts.env && {daemon}"], stdout=log, stderr=log)
        self.daemons.append(proc)

        def answers() -> bool:
            assert proc.poll() is None, f"dockerd exited {proc.returncode}: {log_file.read_text()[-2000:]}"
            return self.docker(host, "version", check=False).returncode == 0

        wait_until_sync(answers, f"dockerd answers on h{host.n}", timeout=TIMEOUT)
        self.docker(host, "import", str(rootfs_tar(host.workdir / "rootfs.tar")), IMAGE)

    def start(self, host: Host, name: str, publish: str | None = None) -> None:
        ports = ["-p", publish] if publish else []
        self.docker(host, "run", "-d", "--name", name, *ports, IMAGE, "sleep", "3600")
        self.remember(host, name)

    def exec(self, host: Host, name: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return self.docker(host, "exec", name, *cmd, check=False)

    def remove(self, host: Host, name: str) -> None:
        self.docker(host, "rm", "-f", name)

    def pid(self, host: Host, name: str) -> int:
        return int(self.docker(host, "inspect", "-f", "{{.State.Pid}}", name).stdout)

    def endpoints(self, host: Host) -> list[str]:
        """IPv4 addresses (with prefix) dockerd's IPAM holds on the default bridge network."""
        out = self.docker(host, "network", "inspect", "bridge", "-f", "{{json .Containers}}").stdout
        return sorted(c["IPv4Address"] for c in (json.loads(out) or {}).values())

    def close(self) -> None:
        for host in self.hosts.hosts:
            ids = self.docker(host, "ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker(host, "rm", "-f", *ids, check=False)
        self.backstop()
        for daemon in self.daemons:
            stop(daemon)


RUNTIMES: dict[str, type[Runtime]] = {rt.name: rt for rt in (Podman, Containerd, Docker)}


def cni_state(host: Host) -> dict[str, set[str]]:
    """What CNI keeps on disk in ``host``: flannel's saved configs and host-local's reservations (by IP)."""
    root = host_dir(host, "/var/lib/cni")

    def names(d: Path) -> set[str]:
        return {p.name for p in d.iterdir()} if d.is_dir() else set()

    return {"flannel": names(root / "flannel"),
            "reserved": {n for n in names(root / "networks" / NETWORK) if n[0].isdigit()}}
