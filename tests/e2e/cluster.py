"""A multi-host flannel cluster built from network namespaces, for the end-to-end tests and the demo.

Layout (all inside namespaces; the root namespace is never touched):

* ``<p>ul``: the underlay "switch", a bridge ``br0`` holding 198.18.0.1/24 (the hosts' default gateway);
* ``<p>etcd``: etcd on 198.18.0.2:2379;
* ``<p>h<N>``: host N, ``eth0`` = 198.18.0.(10+N)/24, running ``flanneld``;
* ``<p>h<N>p<M>``: pod M of host N, attached by the ``flannel`` CNI plugin (bridge ``cni0`` + host-local).

With ``ipv6_network`` set (dual stack), the underlay also carries 2001:db8:198:18::/64 (documentation prefix;
``br0`` ::1, host N ::(10+N), all ``nodad``, hosts' default v6 route via ``br0``), the network config enables
IPv6, and pods also get an address from ``FLANNEL_IPV6_SUBNET``. etcd stays on IPv4.

The prefix embeds the owning PID, so stale namespaces from a dead run can be told apart from a live one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deployed import DEPLOYED_ENV
from tests.host_mounts import MountHolder
from tests.waiting import holds_within

REPO = Path(__file__).resolve().parents[2]
FLANNELD = str(REPO / ".venv" / "bin" / "flanneld")
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
FLANNEL_CNI = str(REPO / ".venv" / "bin" / "flannel")
CNI_BIN_DIR = "/usr/lib/cni"
NS_FAMILY = "fle"
ETCD_IP = "198.18.0.2"
ETCD_URL = f"http://{ETCD_IP}:2379"
UNDERLAY_V6 = "2001:db8:198:18::"
"""Underlay IPv6 /64 (documentation prefix), used only inside the namespaces of a dual-stack cluster."""


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output."""
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=timeout)


def in_ns(ns: str, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command inside namespace ``ns``."""
    return sh("ip", "netns", "exec", ns, *args, check=check, timeout=timeout)


def eventually(check: Callable[[], bool], timeout: float = 15, every: float = 0.2) -> bool:
    """Poll ``check`` until it holds or ``timeout`` passes; the last answer is returned (``assert eventually(...),
    detail`` then names what was seen). The polling is tests/waiting.py's, shared with the other tests."""
    return holds_within(check, timeout, every)


def subnet_of(host: Host) -> str:
    """The host's IPv4 lease subnet as written in subnet.env, e.g. ``10.244.7.0/24``."""
    return str(ipaddress.IPv4Interface(host.env()["FLANNEL_SUBNET"]).network)


def cleanup_stale() -> None:
    """Remove namespaces of this family whose owning process is gone."""
    for line in sh("ip", "netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = re.match(rf"^{NS_FAMILY}(\d+)x", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            sh("ip", "netns", "del", name, check=False)


@dataclass
class Host:
    """One simulated host."""

    n: int
    ns: str
    ip: str
    workdir: Path
    ip6: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    pods: list[str] = field(default_factory=list)
    pods6: list[str] = field(default_factory=list)
    """IPv6 addresses of the pods (dual-stack clusters only), in the order of ``pods``."""
    holder: MountHolder | None = None
    """The host's private mount namespace (clusters built with ``private_mounts``), else None."""

    def prefix(self) -> list[str]:
        """The argv prefix that runs a command on this host: its mount namespace too where it has one."""
        return self.holder.prefix() if self.holder is not None else ["ip", "netns", "exec", self.ns]

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command on this host (see ``prefix``)."""
        return sh(*self.prefix(), *args, check=check, timeout=timeout)

    @property
    def subnet_file(self) -> Path:
        return self.workdir / "subnet.env"

    @property
    def log_file(self) -> Path:
        return self.workdir / "flanneld.log"

    def env(self) -> dict[str, str]:
        """subnet.env as a dict (empty when not written yet)."""
        if not self.subnet_file.exists():
            return {}
        out = {}
        for line in self.subnet_file.read_text().splitlines():
            k, _, v = line.partition("=")
            out[k] = v
        return out


class Cluster:
    """Build, drive and tear down the namespaces, etcd and flanneld processes."""

    def __init__(self, network: str = "10.244.0.0/16", backend: str = '{"Type":"vxlan"}',
                 ipv6_network: str | None = None, private_mounts: bool = False) -> None:
        """``private_mounts`` gives each host its own mount namespace (tests/host_mounts.py): own ``/run``."""
        cleanup_stale()
        self.private_mounts = private_mounts
        self.prefix = f"{NS_FAMILY}{os.getpid()}x{os.urandom(2).hex()}"
        self.network = network
        self.backend = backend
        self.ipv6_network = ipv6_network
        self.tmp = Path(tempfile.mkdtemp(prefix=f"flannel-e2e-{self.prefix}-"))
        self.hosts: dict[int, Host] = {}
        self.namespaces: list[str] = []
        self.etcd: subprocess.Popen[bytes] | None = None

    # -- building -------------------------------------------------------------------------------------

    def _add_ns(self, name: str) -> str:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        in_ns(name, "ip", "link", "set", "lo", "up")
        return name

    @property
    def dual_stack(self) -> bool:
        return self.ipv6_network is not None

    def _plug(self, ns: str, ifname: str, cidr: str, cidr6: str | None = None) -> None:
        """Connect ``ns`` to the underlay bridge with a veth named ``ifname``."""
        peer = f"v{len(self.namespaces)}{os.urandom(2).hex()}"
        ul = f"{self.prefix}ul"
        in_ns(ul, "ip", "link", "add", peer, "type", "veth", "peer", "name", ifname, "netns", ns)
        in_ns(ul, "ip", "link", "set", peer, "master", "br0", "up")
        in_ns(ns, "ip", "addr", "add", cidr, "dev", ifname)
        if cidr6 is not None:
            in_ns(ns, "ip", "-6", "addr", "add", cidr6, "dev", ifname, "nodad")
        in_ns(ns, "ip", "link", "set", ifname, "up")

    def start(self) -> None:
        """Underlay switch and etcd, with the network config stored."""
        ul = self._add_ns(f"{self.prefix}ul")
        # A fixed MAC: a bridge otherwise takes its ports' lowest, which changes as hosts join, and the hosts'
        # cached neighbour entry for the gateway goes stale meanwhile.
        in_ns(ul, "ip", "link", "add", "br0", "address", "02:00:c6:12:00:01", "type", "bridge")
        in_ns(ul, "ip", "addr", "add", "198.18.0.1/24", "dev", "br0")
        if self.dual_stack:
            in_ns(ul, "ip", "-6", "addr", "add", f"{UNDERLAY_V6}1/64", "dev", "br0", "nodad")
        in_ns(ul, "ip", "link", "set", "br0", "up")
        ens = self._add_ns(f"{self.prefix}etcd")
        self._plug(ens, "eth0", f"{ETCD_IP}/24")
        data = self.tmp / "etcd"
        with open(self.tmp / "etcd.log", "wb") as log:  # the child has its own copy of the descriptor
            self.etcd = subprocess.Popen(
                ["ip", "netns", "exec", ens, ETCD, "--name", "e2e", "--data-dir", str(data),
                 "--listen-client-urls", ETCD_URL, "--advertise-client-urls", ETCD_URL,
                 "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls",
                 "http://127.0.0.1:2380", "--initial-cluster", "e2e=http://127.0.0.1:2380"],
                stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.etcdctl("endpoint", "health", check=False).returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"etcd did not become healthy; log in {self.tmp / 'etcd.log'}")
        v6 = f'"EnableIPv6":true,"IPv6Network":"{self.ipv6_network}",' if self.dual_stack else ""
        self.put_config(f'{{"Network":"{self.network}",{v6}"Backend":{self.backend}}}')

    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return in_ns(f"{self.prefix}etcd", ETCDCTL, f"--endpoints={ETCD_URL}", *args, check=check,
                     timeout=15)

    def put_config(self, text: str) -> None:
        self.etcdctl("put", "/coreos.com/network/config", text)

    def leases(self) -> dict[str, str]:
        """Subnet keys → lease JSON, read straight from etcd."""
        out = self.etcdctl("get", "--prefix", "/coreos.com/network/subnets").stdout.splitlines()
        return {out[i].rsplit("/", 1)[-1]: out[i + 1] for i in range(0, len(out) - 1, 2)}

    def lease_key(self, host: Host) -> str:
        """The etcd key of the host's lease (from its subnet.env): ``/coreos.com/network/subnets/10.244.7.0-24``."""
        return f"/coreos.com/network/subnets/{subnet_of(host).replace('/', '-')}"

    def delete_lease(self, host: Host) -> None:
        """Delete the host's lease from etcd, as an operator would with etcdctl."""
        self.etcdctl("del", self.lease_key(host))

    def add_host(self, n: int, binds: Mapping[str, Path] | None = None) -> Host:
        """Host ``n`` on the underlay; ``binds`` (target -> per-host source directory) go to its private mount
        namespace (clusters built with ``private_mounts`` only)."""
        if binds and not self.private_mounts:
            raise ValueError("binds need a cluster with private_mounts")
        ns = self._add_ns(f"{self.prefix}h{n}")
        ip = f"198.18.0.{10 + n}"
        ip6 = f"{UNDERLAY_V6}{10 + n}" if self.dual_stack else None
        self._plug(ns, "eth0", f"{ip}/24", f"{ip6}/64" if ip6 else None)
        in_ns(ns, "ip", "route", "add", "default", "via", "198.18.0.1")
        in_ns(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        if ip6 is not None:
            in_ns(ns, "ip", "-6", "route", "add", "default", "via", f"{UNDERLAY_V6}1", "dev", "eth0")
            in_ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        workdir = self.tmp / f"h{n}"
        workdir.mkdir()
        host = Host(n=n, ns=ns, ip=ip, workdir=workdir, ip6=ip6)
        self.hosts[n] = host
        if self.private_mounts:
            host.holder = MountHolder(ns, workdir, binds=binds)
        return host

    def start_flanneld(self, host: Host, *extra: str, env: dict[str, str] | None = None) -> None:
        """Start flanneld in the host's namespace, as deployed (``DEPLOYED_ENV``); ``env`` adds variables (e.g.
        ``NODE_NAME`` in kube mode)."""
        host.started = time.time()
        prefix = ["env", *(f"{k}={v}" for k, v in {**DEPLOYED_ENV, **(env or {})}.items())]
        with open(host.log_file, "ab") as log:  # the child has its own copy of the descriptor
            host.proc = subprocess.Popen(
                [*host.prefix(), *prefix, FLANNELD, f"--etcd-endpoints={ETCD_URL}",
                 f"--subnet-file={host.subnet_file}", *extra],
                stdout=log, stderr=log)

    def wait_ready(self, host: Host, timeout: float = 20) -> dict[str, str]:
        """Wait until the running flanneld has written subnet.env (a file left by an earlier run does not count)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            env = host.env()
            if "FLANNEL_SUBNET" in env and host.subnet_file.stat().st_mtime >= host.started - 0.01:
                return env
            if host.proc is not None and host.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"flanneld on h{host.n} not ready:\n{host.log_file.read_text()[-3000:]}")

    def stop_flanneld(self, host: Host, sig: int = signal.SIGTERM) -> int | None:
        if host.proc is None:
            return None
        if host.proc.poll() is None:
            host.proc.send_signal(sig)
            try:
                host.proc.wait(10)
            except subprocess.TimeoutExpired:
                host.proc.kill()
                host.proc.wait(5)
        code = host.proc.returncode
        host.proc = None
        return code

    def cni(self, host: Host, command: str, pod_ns: str, container_id: str) -> dict[str, Any]:
        """Call the ``flannel`` CNI plugin inside the host namespace exactly as a runtime would."""
        conf = {
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": str(host.subnet_file),
            "dataDir": str(host.workdir / "cni"),
            # host-local keeps its reservations here rather than in the real /var/lib/cni
            "ipam": {"dataDir": str(host.workdir / "ipam")},
            "delegate": {"hairpinMode": True, "isDefaultGateway": True},
        }
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": f"/var/run/netns/{pod_ns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": f"{REPO / '.venv' / 'bin'}:{CNI_BIN_DIR}",
        }
        r = subprocess.run(["ip", "netns", "exec", host.ns, FLANNEL_CNI], input=json.dumps(conf), env=env,
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"CNI {command} failed ({r.returncode}): {r.stdout} {r.stderr}")
        return json.loads(r.stdout) if r.stdout.strip() else {}

    def add_pod(self, host: Host) -> str:
        """A pod namespace attached by the flannel CNI plugin (bridge + host-local). Returns its IPv4 address."""
        m = len(host.pods) + 1
        ns = self._add_ns(f"{self.prefix}h{host.n}p{m}")
        result = self.cni(host, "ADD", ns, f"pod{m}")
        ips = [ip["address"].split("/")[0] for ip in result.get("ips", [])]
        v4 = [ip for ip in ips if ":" not in ip]
        v6 = [ip for ip in ips if ":" in ip]
        if not v4 and not v6:
            raise RuntimeError(f"CNI ADD gave no address: {result}")
        host.pods.append(v4[0] if v4 else "")
        if v6:
            host.pods6.append(v6[0])
        return v4[0] if v4 else v6[0]

    def del_pod(self, host: Host, m: int) -> None:
        """CNI DEL of pod ``m`` (1-based) of ``host``; its namespace stays until ``close``."""
        self.cni(host, "DEL", self.pod_ns(host, m), f"pod{m}")

    def pod_ns(self, host: Host, m: int) -> str:
        return f"{self.prefix}h{host.n}p{m}"

    def ping(self, src_ns: str, dst_ip: str, count: int = 1, timeout: int = 2) -> bool:
        family = ["-6"] if ":" in dst_ip else []
        r = in_ns(src_ns, "ping", *family, "-c", str(count), "-W", str(timeout), dst_ip, check=False,
                  timeout=timeout * count + 5)
        return r.returncode == 0

    def matrix(self, v6: bool = False) -> dict[tuple[str, str], bool]:
        """Ping every pod from every pod; (src pod ip, dst pod ip) → reachable. ``v6``: over the pods' IPv6."""
        pods = [(self.pod_ns(h, i + 1), ip) for h in self.hosts.values()
                for i, ip in enumerate(h.pods6 if v6 else h.pods)]
        return {(s_ip, d_ip): self.ping(s_ns, d_ip) for s_ns, s_ip in pods for _, d_ip in pods if s_ip != d_ip}

    def routes(self, host: Host) -> str:
        return in_ns(host.ns, "ip", "route", "show").stdout

    def routes6(self, host: Host) -> str:
        return in_ns(host.ns, "ip", "-6", "route", "show").stdout

    # -- tearing down ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process we started (by PID) and delete every namespace we made."""
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                self.stop_flanneld(host)
            if host.holder is not None:
                host.holder.close()
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(10)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
                self.etcd.wait(5)
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
        if os.environ.get("KEEP_LOGS") is None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the outside world (masquerade tests) -----------------------------------------------------------

    OUTSIDE_IP = "203.0.113.1"
    """An "internet" address (TEST-NET-3), held by the outside namespace."""
    OUTSIDE_UNDERLAY_IP = "198.18.0.200"

    def add_outside(self, *routed_by: Host) -> str:
        """An "outside" host beyond the cluster: namespace ``<p>out`` on the underlay (198.18.0.200) holding
        ``OUTSIDE_IP``; each host in ``routed_by`` routes 203.0.113.0/24 through it, as a host routes to the
        internet. It has no route to the pod network, so only masqueraded pod traffic gets an answer.
        Returns the namespace name.
        """
        ns = self._add_ns(f"{self.prefix}out")
        self._plug(ns, "eth0", f"{self.OUTSIDE_UNDERLAY_IP}/24")
        in_ns(ns, "ip", "addr", "add", f"{self.OUTSIDE_IP}/32", "dev", "lo")
        for host in routed_by:
            in_ns(host.ns, "ip", "route", "add", "203.0.113.0/24", "via", self.OUTSIDE_UNDERLAY_IP)
        return ns
