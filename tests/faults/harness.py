"""The fault suite's cluster: the e2e namespaces cluster with etcd members that can be stopped, killed,
restored and partitioned, flanneld with its health server, and a ``/readyz`` probe per host.

Layout on top of ``tests/e2e/cluster.py`` (all inside namespaces of the run's unique prefix):

* etcd member M (1-based) in ``<p>etcdM`` at 198.18.0.(1+M), client port 2379, peer port 2380;
* each host runs flanneld with every member as an endpoint, ``--healthz-port=8471``, a 2 s reconcile
  interval and ``--subnet-lease-renew-margin=1439`` (with the 24 h TTL the lease is renewed every minute, so
  renewals also happen during the faults);
* ``readyz_probe.py`` runs in each host namespace for the life of the cluster.

``reset`` brings the cluster back to its base state between scenarios: every member running and reachable,
the base hosts' flanneld running and ready, hosts added by a scenario removed, kernel = leases.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.deployed import DEPLOYED_ENV
from tests.e2e.cluster import ETCD, ETCDCTL, FLANNELD, Cluster, Host, eventually, in_ns, sh
from tests.faults.observe import ReadyzLog, kernel_mismatches

PYTHON = sys.executable
PROBE = str(Path(__file__).with_name("readyz_probe.py"))
HEALTHZ_PORT = 8471
FLANNELD_FLAGS = ("--reconcile-interval=2", "--subnet-lease-renew-margin=1439")
LIFETIME = 1800
"""Upper bound (s) on every helper process the harness starts: probes and pings end by themselves then."""


@dataclass
class Member:
    """One etcd member."""

    n: int
    ns: str
    ip: str
    data: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"e{self.n}"

    @property
    def client_url(self) -> str:
        return f"http://{self.ip}:2379"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:2380"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class FaultCluster(Cluster):
    """A vxlan cluster of ``base_hosts`` hosts (one pod each) on ``members`` etcd members."""

    def __init__(self, members: int = 1, base_hosts: int = 3) -> None:
        super().__init__()
        self.member_count = members
        self.base_hosts = base_hosts
        self.members: list[Member] = []
        self.partitioned: set[int] = set()
        self.probes: dict[int, subprocess.Popen[bytes]] = {}
        self.children: list[subprocess.Popen[bytes]] = []
        self.ping_logs: list[Path] = []
        self.rebuilt_because = ""
        """Why the suite replaced the previous cluster with this one (recorded in the next figures)."""

    # -- etcd -----------------------------------------------------------------------------------------

    def start(self) -> None:
        ul = self._add_ns(f"{self.prefix}ul")
        in_ns(ul, "ip", "link", "add", "br0", "address", "02:00:c6:12:00:01", "type", "bridge")  # fixed: see cluster.py
        in_ns(ul, "ip", "addr", "add", "198.18.0.1/24", "dev", "br0")
        in_ns(ul, "ip", "link", "set", "br0", "up")
        for n in range(1, self.member_count + 1):
            ns = self._add_ns(f"{self.prefix}etcd{n}")
            member = Member(n, ns, f"198.18.0.{1 + n}", self.tmp / f"etcd{n}")
            self._plug(ns, "eth0", f"{member.ip}/24")
            self.members.append(member)
        for member in self.members:
            self.start_member(member)
        self.wait_store()
        self.put_config('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
        for n in range(1, self.base_hosts + 1):
            self.join(n)
        for host in self.hosts.values():
            self.wait_ready(host, timeout=60)
            self.add_pod(host)

    @property
    def endpoints(self) -> str:
        return ",".join(m.client_url for m in self.members)

    def start_member(self, member: Member, data: Path | None = None) -> None:
        """Start (or restart) a member on its data directory (or on ``data``, which becomes its directory)."""
        if data is not None:
            member.data = data
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        with open(self.tmp / f"etcd{member.n}.log", "ab") as log:  # the child has its own copy of the descriptor
            member.proc = subprocess.Popen(
                ["ip", "netns", "exec", member.ns, ETCD, "--name", member.name, "--data-dir", str(member.data),
                 "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
                 "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
                 "--initial-cluster", cluster, "--initial-cluster-token", self.prefix,
                 "--heartbeat-interval", "100", "--election-timeout", "1000"],
                stdout=log, stderr=log)

    def stop_member(self, member: Member, sig: int = signal.SIGTERM) -> None:
        """Signal the member by PID and wait until it is gone."""
        if member.proc is None:
            return
        if member.proc.poll() is None:
            member.proc.send_signal(sig)
            try:
                member.proc.wait(15)
            except subprocess.TimeoutExpired:
                member.proc.kill()
                member.proc.wait(5)
        member.proc = None

    def live_endpoints(self) -> str:
        live = [m.client_url for m in self.members if m.running and m.n not in self.partitioned]
        return ",".join(live) or self.endpoints

    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """etcdctl from the underlay switch's namespace, against the members that are up and reachable."""
        return in_ns(f"{self.prefix}ul", ETCDCTL, f"--endpoints={self.live_endpoints()}", *args, check=check,
                     timeout=20)

    def wait_store(self, timeout: float = 30) -> None:
        """Until every running, reachable member answers a quorum read."""
        def healthy() -> bool:
            return self.etcdctl("endpoint", "health", check=False).returncode == 0
        if not eventually(healthy, timeout=timeout, every=0.1):
            raise RuntimeError(f"etcd not healthy; logs in {self.tmp}")

    def revision(self) -> int:
        out = self.etcdctl("get", "/coreos.com/network/config", "-w", "json").stdout
        return int(json.loads(out)["header"]["revision"])

    def leader(self) -> Member:
        out = self.etcdctl("endpoint", "status", "-w", "json").stdout
        for status in json.loads(out):
            if status["Status"]["header"]["member_id"] == status["Status"]["leader"]:
                return next(m for m in self.members if m.client_url == status["Endpoint"])
        raise RuntimeError(f"no leader among {out}")

    def move_leader(self, member: Member) -> None:
        """Make ``member`` the leader (``etcdctl move-leader``, sent to the current leader)."""
        leader = self.leader()
        if leader is member:
            return
        out = self.etcdctl("endpoint", "status", "-w", "json").stdout
        ids = {s["Endpoint"]: s["Status"]["header"]["member_id"] for s in json.loads(out)}
        in_ns(f"{self.prefix}ul", ETCDCTL, f"--endpoints={leader.client_url}", "move-leader",
              f"{ids[member.client_url]:x}", timeout=20)
        if not eventually(lambda: self.leader() is member, timeout=10):
            raise RuntimeError(f"{member.name} did not become the leader")

    def partition(self, member: Member) -> None:
        """Drop everything to and from the member's underlay interface (iptables inside its namespace)."""
        for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
            in_ns(member.ns, "iptables", "-w", "-I", chain, flag, "eth0", "-j", "DROP")
        self.partitioned.add(member.n)

    def heal(self, member: Member) -> None:
        for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
            in_ns(member.ns, "iptables", "-w", "-D", chain, flag, "eth0", "-j", "DROP", check=False)
        self.partitioned.discard(member.n)

    def vxlan_leases(self) -> dict[str, tuple[str, str]]:
        """Subnet (``10.244.7.0/24``) → (PublicIP, VtepMAC) for every decodable vxlan lease in etcd."""
        out: dict[str, tuple[str, str]] = {}
        for key, value in self.leases().items():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                attrs = json.loads(value)
                if attrs.get("BackendType") == "vxlan":
                    out[key.replace("-", "/")] = (attrs["PublicIP"], attrs["BackendData"]["VtepMAC"])
        return out

    # -- hosts ----------------------------------------------------------------------------------------

    def join(self, n: int) -> Host:
        """Add host ``n`` with its /readyz probe and start its flanneld (not waiting for it)."""
        host = self.add_host(n)
        probe = subprocess.Popen(
            ["ip", "netns", "exec", host.ns, PYTHON, PROBE, host.ip, str(HEALTHZ_PORT),
             str(self.readyz(host).path), str(LIFETIME)])
        self.probes[n] = probe
        self.start_flanneld(host)
        return host

    def start_flanneld(self, host: Host, *extra: str, env: dict[str, str] | None = None) -> None:
        host.started = time.time()
        with open(host.log_file, "ab") as log:  # the child has its own copy of the descriptor
            log.write(f"=== fault harness: flanneld started at monotonic {time.monotonic():.3f} ===\n".encode())
            log.flush()
            variables = ["env", *(f"{k}={v}" for k, v in {**DEPLOYED_ENV, **(env or {})}.items())]
            host.proc = subprocess.Popen(
                ["ip", "netns", "exec", host.ns, *variables, FLANNELD, f"--etcd-endpoints={self.endpoints}",
                 f"--subnet-file={host.subnet_file}", f"--healthz-port={HEALTHZ_PORT}", *FLANNELD_FLAGS, *extra],
                stdout=log, stderr=log)

    def readyz(self, host: Host) -> ReadyzLog:
        return ReadyzLog(host.workdir / "readyz.log")

    def all_ready(self, hosts: list[Host] | None = None) -> bool:
        return all(self.readyz(h).status() == 200 for h in (hosts or list(self.hosts.values())))

    def remove_host(self, host: Host) -> None:
        """Stop its flanneld, delete its lease and its namespaces (the host has left the cluster)."""
        self.stop_flanneld(host)
        if "FLANNEL_SUBNET" in host.env():
            self.etcdctl("del", self.lease_key(host), check=False)
        probe = self.probes.pop(host.n, None)
        if probe is not None:
            _stop(probe)
        for m in range(len(host.pods), 0, -1):
            self._del_ns(self.pod_ns(host, m))
        self._del_ns(host.ns)
        host.workdir.rename(self.tmp / f"h{host.n}-left-{time.monotonic_ns()}")  # logs kept; the name is free again
        del self.hosts[host.n]

    def _del_ns(self, ns: str) -> None:
        sh("ip", "netns", "del", ns, check=False)
        with contextlib.suppress(ValueError):
            self.namespaces.remove(ns)

    def base(self) -> list[Host]:
        return [self.hosts[n] for n in range(1, self.base_hosts + 1)]

    def exits(self) -> list[dict[str, object]]:
        """flanneld processes that ended without being stopped by the harness, with their last log lines."""
        out: list[dict[str, object]] = []
        for host in self.hosts.values():
            if host.proc is not None and host.proc.poll() is not None:
                lines = host.log_file.read_text(errors="replace").splitlines()
                errors = [line for line in lines if re.match(r"^[EF]\d{4} ", line)][-4:]
                out.append({"host": f"h{host.n}", "code": host.proc.returncode, "log": [*errors, *lines[-1:]]})
        return out

    def reset(self) -> None:
        """Back to the base state (see the module docstring); raises when that cannot be reached."""
        for member in self.members:
            self.heal(member)
            if member.proc is not None and member.proc.poll() is None:
                member.proc.send_signal(signal.SIGCONT)
            if not member.running:
                self.start_member(member)
        self.wait_store()
        for n in sorted(self.hosts):
            if n > self.base_hosts:
                self.remove_host(self.hosts[n])
        ours = {self.lease_key(h).rsplit("/", 1)[-1] for h in self.base() if "FLANNEL_SUBNET" in h.env()}
        for key in set(self.leases()) - ours:  # made up by a scenario, or left by a host that is gone
            self.etcdctl("del", f"/coreos.com/network/subnets/{key}")
        for host in self.base():
            if host.proc is not None and host.proc.poll() is None:
                host.proc.send_signal(signal.SIGCONT)
            else:
                host.proc = None
                self.start_flanneld(host)
        if not eventually(self.all_ready, timeout=60, every=0.2):
            last = {f"h{h.n}": self.readyz(h).changes()[-1:] for h in self.base()}
            raise RuntimeError(f"reset: not every flanneld is ready: {last}")
        if not eventually(lambda: not kernel_mismatches(self, self.base()), timeout=30, every=0.5):
            raise RuntimeError(f"reset: kernel != leases: {kernel_mismatches(self, self.base())}")

    # -- tearing down ---------------------------------------------------------------------------------

    def close(self) -> None:
        for proc in [*self.children, *self.probes.values()]:
            _stop(proc)
        for host in self.hosts.values():
            if host.proc is not None and host.proc.poll() is None:
                host.proc.send_signal(signal.SIGCONT)
        for member in self.members:
            if member.proc is not None and member.proc.poll() is None:
                member.proc.send_signal(signal.SIGCONT)
        for member in self.members:
            with contextlib.suppress(Exception):
                self.stop_member(member)
        if os.environ.get("KEEP_LOGS"):
            print(f"fault cluster logs kept in {self.tmp}")
        super().close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
