"""Kube mode under churn and through a re-list (issue #16), the part of ``bench_kube`` that changes nodes.

Why: the memory target of issue #16 holds "including a full re-list after compaction and 10 minutes of lease
churn"; in kube mode, churn is node objects changing in the API server, and a re-list is what a real cluster
forces when its watch cache has moved past flanneld's resourceVersion (410 Expired).

The writer schedules change ``k`` at ``t0 + k / rate`` and hands it to one of a few threads, each holding one
persistent HTTPS connection (as a controller keeps one), so that a slow answer does not delay the next change.
Every change gives a node a public IP of its own (``flannel.alpha.coreos.com/public-ip``), so the FDB entry
``<VtepMAC> dst <that IP>`` identifies it in the kernel; the observer (``churn_report.Observer``) sees it there.
With ``steady`` W, odd changes are new nodes instead, each deleting the node added W new nodes earlier.

The re-list: flanneld is stopped (SIGSTOP) while the fake drops its watch, a node moves, 16 nodes are added
and the history is compacted; resumed, flanneld's watch from its old resourceVersion gets 410 Expired and it
lists again. Only that list can deliver the moved node's new public IP and the 16 routes, so seeing them in
the kernel proves the re-list done.
"""

from __future__ import annotations

import http.client
import json
import queue
import signal
import ssl
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from tests.kube_fake.objects import make_node

from churn_report import Observer

PREFIX = "flannel.alpha.coreos.com/"
CHANGE_IP_BASE = (198 << 24) | (21 << 16)
"""Public IPs of the churn changes: 198.21.0.0 onwards (the nodes start with 198.19.x.y, updates use 198.20)."""
RELIST_IP = bytes([198, 22, 0, 1])
"""The public IP a node moves to while flanneld's watch is down: only the re-list can bring it."""
RELIST_ADDED = 16
WORKERS = 4


def peer_node(i: int, public_ip: str | None = None) -> dict[str, object]:
    a, b = divmod(i + 1, 256)
    mac = f"02:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:00:01"
    return make_node(f"node-{i:05d}", i, pod_cidr=f"10.{100 + a}.{b}.0/24", annotations={
        PREFIX + "kube-subnet-manager": "true", PREFIX + "backend-type": "vxlan",
        PREFIX + "backend-data": json.dumps({"VNI": 1, "VtepMAC": mac}, separators=(",", ":")),
        PREFIX + "public-ip": public_ip or f"198.19.{(i >> 8) & 255}.{i & 255}"})


def subnet_dst(i: int) -> bytes:
    """The route destination that node ``i``'s pod CIDR puts in the kernel."""
    a, b = divmod(i + 1, 256)
    return bytes([10, 100 + a, b, 0])


def change_ip(k: int) -> bytes:
    return (CHANGE_IP_BASE + k).to_bytes(4, "big")


def dotted(ip: bytes) -> str:
    return ".".join(map(str, ip))


class Api:
    """One keep-alive HTTPS connection to the fake API server, with the bearer token; reconnects once when the
    server closed it."""

    def __init__(self, url: str, cafile: Path, token: str) -> None:
        self.url, self.cafile = url, cafile
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 443
        self.ctx = ssl.create_default_context(cafile=str(cafile))
        self.headers = {"Authorization": f"Bearer {token}"}
        self.conn: http.client.HTTPSConnection | None = None

    def call(self, method: str, path: str, body: object = None,
             content_type: str = "application/merge-patch+json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.headers, "Content-Type": content_type} if data is not None else self.headers
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=10)
            try:
                self.conn.request(method, path, body=data if data is not None else b"", headers=headers)
                resp = self.conn.getresponse()
                answer = resp.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                continue
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: {resp.status} {answer[:200]!r}")
            return json.loads(answer) if answer else None
        raise AssertionError("unreachable")

    def move(self, i: int, ip: bytes) -> None:
        """What ``kubectl annotate --overwrite`` does: a merge patch of the node's annotations."""
        self.call("PATCH", f"/api/v1/nodes/node-{i:05d}",
                  {"metadata": {"annotations": {PREFIX + "public-ip": dotted(ip)}}})

    def create(self, i: int, ip: bytes | None = None) -> None:
        self.call("POST", "/api/v1/nodes", peer_node(i, dotted(ip) if ip else None), "application/json")

    def delete(self, i: int) -> None:
        self.call("DELETE", f"/api/v1/nodes/node-{i:05d}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def apply_change(api: Api, k: int, peers: int, steady: int) -> None:
    """Change ``k``: a node moves (``k mod peers``); with ``steady``, odd changes add a node and retire one."""
    if not steady:
        api.move(k % peers, change_ip(k))
    elif k % 2 == 0:
        api.move((k // 2) % peers, change_ip(k))
    else:
        api.create(peers + k // 2, change_ip(k))
        if k // 2 >= steady:
            api.delete(peers + k // 2 - steady)


def last_index(peers: int, count: int, steady: int) -> int:
    """One past the highest node index the churn creates."""
    return peers + (count // 2 + 1 if steady else 0)


class Writer:
    """Sends ``count`` changes at ``rate`` per second; ``sent`` (when a thread sent it), ``late`` (behind the
    schedule, queueing included) and ``acked`` (the server's answer time) per change, ``errors`` the failures."""

    def __init__(self, new_api: Any, count: int, rate: float, peers: int, steady: int) -> None:
        self.new_api, self.count, self.rate, self.peers, self.steady = new_api, count, rate, peers, steady
        self.sent = [0.0] * count
        self.late = [0.0] * count
        self.acked = [float("nan")] * count
        self.errors: list[str] = []
        self.t0 = 0.0
        self.queue: queue.Queue[int | None] = queue.Queue()

    def _work(self) -> None:
        api: Api = self.new_api()
        try:
            while (k := self.queue.get()) is not None:
                self.sent[k] = time.monotonic()
                self.late[k] = self.sent[k] - (self.t0 + k / self.rate)
                try:
                    apply_change(api, k, self.peers, self.steady)
                except (OSError, RuntimeError, http.client.HTTPException) as exc:
                    self.errors.append(f"change {k}: {exc}")
                    continue
                self.acked[k] = time.monotonic() - self.sent[k]
        finally:
            api.close()

    def run(self) -> None:
        threads = [threading.Thread(target=self._work, daemon=True) for _ in range(WORKERS)]
        for t in threads:
            t.start()
        self.t0 = time.monotonic() + 0.1
        try:
            for k in range(self.count):
                delay = self.t0 + k / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.queue.put(k)
        finally:
            for _ in threads:
                self.queue.put(None)
            for t in threads:
                t.join(30)

    def delays(self, obs: Observer) -> list[float | None]:
        return [None if (seen := obs.fdb_seen.get(change_ip(k))) is None else seen - self.sent[k]
                for k in range(self.count)]


def wait_seen(obs: Observer, count: int, timeout: float) -> None:
    """Until every change's FDB entry is in the kernel, or ``timeout`` seconds (the missing ones are reported)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(change_ip(k) not in obs.fdb_seen for k in range(count)):
        time.sleep(0.05)


def relist(api: Api, proc: subprocess.Popen[bytes], obs: Observer, first_new: int, timeout: float = 120) -> str:
    """Force a full re-list (see the module docstring) and wait until the kernel shows it; describe it."""
    lists = api.call("POST", "/_fake/requests")["counts"].get("list nodes", 0)
    proc.send_signal(signal.SIGSTOP)
    try:
        dropped = api.call("POST", "/_fake/drop-watches")["dropped"]
        api.move(0, RELIST_IP)
        for i in range(first_new, first_new + RELIST_ADDED):
            api.create(i)
        compacted = api.call("POST", "/_fake/compact")["compactedResourceVersion"]
    finally:
        proc.send_signal(signal.SIGCONT)
    started = time.monotonic()
    added = {subnet_dst(i) for i in range(first_new, first_new + RELIST_ADDED)}
    while RELIST_IP not in obs.fdb_seen or not added <= obs.routes:
        if time.monotonic() - started > timeout or proc.poll() is not None:
            raise RuntimeError(f"the re-list did not deliver what changed while the watch was down "
                               f"({len(added & obs.routes)} of {RELIST_ADDED} routes)")
        time.sleep(0.05)
    took = time.monotonic() - started
    lists = api.call("POST", "/_fake/requests")["counts"].get("list nodes", 0) - lists
    return (f"{dropped} watch dropped, history compacted at {compacted}; {lists} list requests (one per page); "
            f"the moved node and the {RELIST_ADDED} added nodes in the kernel {took:.2f} s after resuming")


def log_problems(log: Path, limit: int = 8) -> list[str]:
    """flanneld's warning and error lines (klog: ``W``/``E`` first), counted by message, the most frequent first."""
    counts: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        if line[:1] in ("W", "E") and "]" in line:
            msg = line.split("]", 1)[1].strip()
            counts[msg[:160]] = counts.get(msg[:160], 0) + 1
    return [f"{n} × {msg}" for msg, n in sorted(counts.items(), key=lambda kv: -kv[1])[:limit]]
