"""What a fault scenario measures: pings lost between pods, /readyz answers over time, kernel vs leases.

* ``Pinger``: one ``ping -i 0.1 -c 10×BOUND`` per ordered pair of pods, inside the source pod's namespace,
  started before the fault and stopped (SIGINT, by PID) after it; loss is counted per sequence number, so a
  reply still in flight when ping is stopped is not counted as lost. Not ``-w BOUND``: with a deadline,
  iputils ping ends at the first ICMP error ("Destination Net Unreachable"), and the loss after it would
  go uncounted.
* ``ReadyzLog``: the answers written by ``readyz_probe.py`` for one host, and when it was ready again.
* ``kernel_mismatches``: for the vxlan backend, every remote lease in etcd has its route, neighbour and FDB
  entry on ``flannel.1``, and ``flannel.1`` has nothing for a subnet without a lease.
"""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.e2e.cluster import Host, in_ns, subnet_of

if TYPE_CHECKING:
    from tests.faults.harness import FaultCluster

_REPLY = re.compile(r"icmp_seq=(\d+) ttl=")
_ERROR = re.compile(r"icmp_seq=(\d+) (?!ttl=)")
_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass
class PingResult:
    pair: str
    sent: int
    lost: int


def parse_ping(pair: str, text: str) -> PingResult:
    """Sent and lost from ping's output; the last echo is not counted if its answer was merely still pending."""
    m = _SUMMARY.search(text)
    sent = int(m.group(1)) if m else 0
    got = {int(s) for s in _REPLY.findall(text)}
    errors = {int(s) for s in _ERROR.findall(text)}
    missing = [seq for seq in range(1, sent + 1) if seq not in got]
    if missing and missing[-1] == sent and sent not in errors:
        missing.pop()
        sent -= 1
    return PingResult(pair, sent, len(missing))


class Pinger:
    """Background pings every 0.1 s between the first pods of ``hosts``, every ordered pair."""

    def __init__(self, cluster: FaultCluster, hosts: list[Host], bound: int) -> None:
        self.cluster = cluster
        self.pairs = [(a, b) for a in hosts for b in hosts if a is not b]
        self.bound = bound
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self) -> None:
        for a, b in self.pairs:
            label = f"h{a.n}->h{b.n}"
            out = self.cluster.tmp / f"ping-{label}-{len(self.cluster.ping_logs)}.txt"
            self.cluster.ping_logs.append(out)
            with open(out, "wb") as f:
                proc = subprocess.Popen(  # bounded by a count: with -w, ping ends at the first ICMP error
                    ["ip", "netns", "exec", self.cluster.pod_ns(a, 1), "ping", "-n", "-i", "0.1",
                     "-c", str(self.bound * 10), b.pods[0]], stdout=f, stderr=subprocess.STDOUT)
            self.procs.append((label, proc, out))
            self.cluster.children.append(proc)

    def stop(self) -> list[PingResult]:
        results = []
        for label, proc, out in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # `ip netns exec` execs ping: this PID is ping's
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            results.append(parse_ping(label, out.read_text()))
        self.procs.clear()
        return results


@dataclass
class ReadyzLog:
    """The changes of one host's ``/readyz`` answer: (monotonic time, status, body)."""

    path: Path

    def changes(self) -> list[tuple[float, int, str]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            t, status, *body = line.split(" ", 2)
            out.append((float(t), int(status), body[0] if body else ""))
        return out

    def status(self) -> int:
        changes = self.changes()
        return changes[-1][1] if changes else 0

    def ready_again(self, since: float) -> float | None:
        """Seconds from ``since`` until the answer last turned 200 (0 if it was 200 throughout); None if not 200."""
        changes = self.changes()
        if not changes or changes[-1][1] != 200:
            return None
        turned = changes[-1][0]
        return max(0.0, turned - since)

    def unready_between(self, t0: float, t1: float) -> list[str]:
        """The non-200 answers seen between ``t0`` and ``t1`` (the answer in force at ``t0`` included); nothing
        for a host that was not ready before ``t0`` (it joined during the fault)."""
        seen: list[str] = []
        changes = self.changes()
        if not any(status == 200 and t < t0 for t, status, _ in changes):
            return seen
        for i, (t, status, body) in enumerate(changes):
            nxt = changes[i + 1][0] if i + 1 < len(changes) else float("inf")
            if nxt >= t0 and t <= t1 and status != 200:
                seen.append(f"{status} {body}"[:160])
        return seen


def kernel_mismatches(cluster: FaultCluster, hosts: list[Host]) -> list[str]:
    """Differences between the vxlan leases in etcd and each host's ``flannel.1`` routes, neighbours and FDB."""
    leases = cluster.vxlan_leases()
    problems = []
    for host in hosts:
        own = subnet_of(host)
        remote = {sub: v for sub, v in leases.items() if sub != own}
        want_routes = {(sub, str(ipaddress.ip_network(sub).network_address)) for sub in remote}
        want_neigh = {(str(ipaddress.ip_network(sub).network_address), mac) for sub, (_, mac) in remote.items()}
        want_fdb = {(mac, ip) for ip, mac in remote.values()}
        routes = _json(in_ns(host.ns, "ip", "-j", "route", "show", "dev", "flannel.1", check=False).stdout)
        have_routes = {(r["dst"], r.get("gateway", "")) for r in routes}
        neighs = _json(in_ns(host.ns, "ip", "-j", "neigh", "show", "dev", "flannel.1", check=False).stdout)
        have_neigh = {(n["dst"], n.get("lladdr", "")) for n in neighs}
        fdb = _json(in_ns(host.ns, "bridge", "-j", "fdb", "show", "dev", "flannel.1", check=False).stdout)
        have_fdb = {(f["mac"], f.get("dst", "")) for f in fdb}
        for what, want, have in (("route", want_routes, have_routes), ("neigh", want_neigh, have_neigh),
                                 ("fdb", want_fdb, have_fdb)):
            problems += [f"h{host.n}: {what} {e} missing" for e in sorted(want - have)]
            problems += [f"h{host.n}: {what} {e} has no lease" for e in sorted(have - want)]
        for r in routes:
            if (r["dst"], r.get("gateway", "")) in want_routes and "onlink" not in r.get("flags", []):
                problems.append(f"h{host.n}: route {r['dst']} is not onlink")
    return problems


def kernel_entry_count(host: Host) -> int:
    """Routes + neighbours + FDB entries on the host's ``flannel.1``."""
    n = 0
    for cmd in (("ip", "-j", "route", "show", "dev", "flannel.1"), ("ip", "-j", "neigh", "show", "dev", "flannel.1"),
                ("bridge", "-j", "fdb", "show", "dev", "flannel.1")):
        n += len(_json(in_ns(host.ns, *cmd, check=False).stdout))
    return n


def _json(text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(text) if text.strip() else []
    return out
