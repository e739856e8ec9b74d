"""Whole-daemon benchmarks: start to ready, convergence latency with 1000 peers, peak RSS with 5000 peers.

Runs in one fresh network namespace (a veth ``eth0`` underlay with 198.18.0.1/24) holding its own etcd on
the namespace's loopback, so nothing touches the root namespace. The script re-executes itself inside the
namespace. Bounded: a few hundred lease writes and a handful of daemon starts.

Usage: .venv/bin/python bench/bench_daemon.py [--peers-convergence 1000] [--peers-rss 5000] [--events 200]

flanneld runs as deployed (``one_host_netns.DEPLOYED_ENV``: ``PYTHONOPTIMIZE=2``; ``BENCH_AS_DEPLOYED=0`` for
without) and inherits the environment: ``FLANNEL_ETCD_CLIENT=grpc`` runs it on the gRPC etcd client instead of
the default JSON-gateway one (issue #16); the table's first line names the client. The benchmark's own
writes use etcd3aio (the ``flannel[grpc]`` extra, which ``make`` installs). ``--tls``: etcd requires client
certificates (made with the tests' helper) and flanneld gets ``--etcd-cafile/certfile/keyfile``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

from one_host_netns import flanneld_env, run_inside  # noqa: E402

FLANNELD = str(REPO / ".venv" / "bin" / "flanneld")
TLS_DIR: Path | None = None
"""Where the certificates are when ``--tls`` is on."""
PREFIX = "/coreos.com/network"
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE = 24


def peer_lease(i: int) -> tuple[str, str]:
    a, b = divmod(i + 1, 256)
    key = f"{PREFIX}/subnets/10.{100 + a}.{b}.0-24"
    mac = f"02:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:00:01"
    pub = f"198.19.{(i >> 8) & 255}.{i & 255}"
    value = (f'{{"PublicIP":"{pub}","PublicIPv6":null,"BackendType":"vxlan",'
             f'"BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}')
    return key, value


class Etcd:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.start()

    def start(self) -> None:
        url = etcd_url()
        tls = [] if TLS_DIR is None else [
            "--cert-file", str(TLS_DIR / "server.pem"), "--key-file", str(TLS_DIR / "server-key.pem"),
            "--client-cert-auth", "--trusted-ca-file", str(TLS_DIR / "ca.pem")]
        self.proc = subprocess.Popen(
            [shutil.which("etcd") or "etcd", "--data-dir", str(self.tmp / "etcd"),
             "--listen-client-urls", url, "--advertise-client-urls", url,
             "--listen-peer-urls", "http://127.0.0.1:2380", *tls],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def etcd_url() -> str:
    return f"{'http' if TLS_DIR is None else 'https'}://127.0.0.1:2379"


def etcd_client(address: str = "127.0.0.1:2379", tls_dir: Path | None = None) -> Any:
    """An etcd3aio client for the benchmark's own writes (outside the measure), with the client certificate
    from ``tls_dir`` (default: ``TLS_DIR``, set by ``--tls``)."""
    from etcd3aio import Etcd3Client

    tls_dir = tls_dir if tls_dir is not None else TLS_DIR
    if tls_dir is None:
        return Etcd3Client([address])
    return Etcd3Client([address], ca_cert=(tls_dir / "ca.pem").read_bytes(),
                       cert_chain=(tls_dir / "client.pem").read_bytes(),
                       cert_key=(tls_dir / "client-key.pem").read_bytes(), tls_server_name="127.0.0.1")


async def put_leases(start: int, count: int, address: str = "127.0.0.1:2379", tls_dir: Path | None = None) -> None:
    """``count`` peer records from number ``start`` on, on one 1-day lease, 64 to a transaction."""
    async with etcd_client(address, tls_dir) as c:
        for _ in range(100):
            try:
                await c.kv.get("x")
                break
            except Exception:
                await asyncio.sleep(0.1)
        lease = await c.lease.grant(86400)
        for base in range(start, start + count, 64):
            ops = [c.kv.txn_op_put(*peer_lease(i), lease=lease.ID) for i in range(base, min(base + 64, start + count))]
            await c.kv.txn(compare=[], success=ops, failure=[])


async def put_config() -> None:
    async with etcd_client() as c:
        for _ in range(100):
            try:
                await c.kv.put(f"{PREFIX}/config", '{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}')
                return
            except Exception:
                await asyncio.sleep(0.1)
        raise RuntimeError("etcd did not come up")


def relist_after_compaction(p: subprocess.Popen[bytes], etcd: Etcd, log: Path, first_new: int) -> int:
    """Make flanneld re-list: frozen while etcd restarts (its watch breaks unseen), 16 leases from peer number
    ``first_new`` are added and etcd compacts past its watch revision; thawed, it resumes into a compacted
    revision. Returns once it says it is re-listing; the compacted revision."""
    p.send_signal(signal.SIGSTOP)
    try:
        etcd.stop()
        etcd.start()
        asyncio.run(put_leases(first_new, 8))  # two transactions: the daemon's next revision is then compacted away
        asyncio.run(put_leases(first_new + 8, 8))
        rev = asyncio.run(compact_now())
    finally:
        p.send_signal(signal.SIGCONT)
    wait_log(log, "re-listing", timeout=60)
    return rev


async def compact_now() -> int:
    """Compact etcd at its current revision; return that revision."""
    async with etcd_client() as c:
        rev = int((await c.kv.get("x")).header.revision)
        await c.kv.compact(rev, physical=True)
        return rev


def wait_log(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            lines = [ln for ln in path.read_text().splitlines() if "route_plane.py" not in ln]
            raise RuntimeError(f"{text!r} not logged within {timeout} s:\n" + "\n".join(lines[-30:]))
        time.sleep(0.05)


STARTED: list[subprocess.Popen[bytes]] = []
"""Every flanneld this run started, so that a failing step still stops them all."""


def start_flanneld(tmp: Path, extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    with open(tmp / "flanneld.log", "ab") as log:
        tls = [] if TLS_DIR is None else [f"--etcd-cafile={TLS_DIR}/ca.pem", f"--etcd-certfile={TLS_DIR}/client.pem",
                                          f"--etcd-keyfile={TLS_DIR}/client-key.pem"]
        STARTED.append(subprocess.Popen([FLANNELD, f"--etcd-endpoints={etcd_url()}", *tls,
                                         f"--subnet-file={tmp}/subnet.env", "--iface=eth0", *extra],
                                        env=flanneld_env(), stdout=log, stderr=log))
    return STARTED[-1]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)


def wait_file(path: Path, timeout: float = 30) -> float:
    t0 = time.monotonic()
    while not path.exists():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{path} not written")
        time.sleep(0.002)
    return time.monotonic()


def count_routes() -> int:
    out = subprocess.run(["ip", "route", "show", "dev", "flannel.1"], capture_output=True, text=True).stdout
    return out.count("\n")


def wait_routes(n: int, timeout: float = 60) -> float:
    t0 = time.monotonic()
    while count_routes() < n:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"only {count_routes()} of {n} routes programmed")
        time.sleep(0.01)
    return time.monotonic()


def route_socket() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    s.bind((0, RTMGRP_IPV4_ROUTE))
    return s


def wait_route_msg(s: socket.socket, dst: bytes, timeout: float = 5) -> float:
    """Block until an RTM_NEWROUTE for ``dst`` (4 bytes) arrives; return its arrival time."""
    s.settimeout(timeout)
    while True:
        data = s.recv(65536)
        now = time.monotonic()
        off = 0
        while off + 16 <= len(data):
            length, mtype = struct.unpack_from("=IH", data, off)
            if mtype == RTM_NEWROUTE and dst in data[off:off + length]:
                return now
            off += (length + 3) & ~3


def vm_kib(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def top_mappings(pid: int, n: int = 12) -> str:
    """The largest resident mappings of a process, to see where memory goes."""
    sizes: dict[str, int] = {}
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if "-" in parts[0] and len(parts) >= 5:
            name = parts[5] if len(parts) > 5 else "[anon]"
        elif parts[0] == "Rss:":
            sizes[name] = sizes.get(name, 0) + int(parts[1])
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:n]
    return "\n".join(f"{kib:8d} KiB  {name}" for name, kib in top)


def use_tls(tmp: Path) -> None:
    """Certificates into ``tmp``: from now on etcd requires client certificates and every client here uses them."""
    global TLS_DIR
    sys.path.insert(0, str(REPO))
    from tests.etcd_server import make_tls_files

    make_tls_files(tmp)
    TLS_DIR = tmp


def inner(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="flannel-bench-"))
    if args.tls:
        use_tls(tmp)
    etcd = Etcd(tmp)
    rows: list[str] = []
    try:
        asyncio.run(put_config())
        # 1. start to ready, no peers
        times = []
        for _ in range(args.starts):
            (tmp / "subnet.env").unlink(missing_ok=True)
            t0 = time.monotonic()
            p = start_flanneld(tmp)
            times.append(wait_file(tmp / "subnet.env") - t0)
            stop(p)
        med = statistics.median(times) * 1000
        rows.append(f"| start to ready (subnet.env written), 0 peers | median {med:.0f} ms, "
                    f"max {max(times) * 1000:.0f} ms over {len(times)} starts | ≤ 1 s |")
        # 2. convergence with N existing peers
        asyncio.run(put_leases(0, args.peers_convergence))
        (tmp / "subnet.env").unlink(missing_ok=True)
        t0 = time.monotonic()
        p = start_flanneld(tmp)
        wait_file(tmp / "subnet.env")
        t_sync = wait_routes(args.peers_convergence) - t0
        rows.append(f"| start to {args.peers_convergence} peers programmed | {t_sync * 1000:.0f} ms | - |")
        s = route_socket()
        lat = asyncio.run(measure_events(s, args.events))
        lat.sort()
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        rows.append(f"| lease put → route on peer, {args.peers_convergence} existing peers | "
                    f"p50 {statistics.median(lat) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms ({len(lat)} events) "
                    "| p99 ≤ 50 ms |")
        stop(p)
        # 3. peak RSS with many peers
        asyncio.run(put_leases(args.peers_convergence, args.peers_rss - args.peers_convergence - args.events))
        p = start_flanneld(tmp)
        wait_file(tmp / "subnet.env")
        wait_routes(args.peers_rss - 1)
        time.sleep(2)
        rss, now = vm_kib(p.pid) / 1024, vm_kib(p.pid, "VmRSS") / 1024
        if os.environ.get("BENCH_SMAPS"):
            print(Path(f"/proc/{p.pid}/status").read_text(), file=sys.stderr)
            print(top_mappings(p.pid), file=sys.stderr)
            sockets = sum(1 for fd in Path(f"/proc/{p.pid}/fd").iterdir() if "socket" in os.readlink(fd))
            to_etcd = sum(1 for line in Path(f"/proc/{p.pid}/net/tcp").read_text().splitlines()[1:]
                          if line.split()[2].endswith(":094B") and line.split()[3] == "01")
            print(f"{sockets} sockets open, {to_etcd} TCP connections to etcd's port in the namespace", file=sys.stderr)
        rows.append(f"| peak RSS (VmHWM) holding {count_routes()} peers | {rss:.1f} MiB (steady VmRSS {now:.1f} MiB)"
                    " | ≤ 50 MiB |")
        # 4. the same daemon through a full re-list: frozen while etcd restarts (its watch breaks unseen), leases
        # change and etcd compacts past its watch revision; thawed, it resumes into a compacted revision
        rev = relist_after_compaction(p, etcd, tmp / "flanneld.log", 30000)
        t0 = time.monotonic()
        wait_routes(args.peers_rss + 15, timeout=60)
        t_relist = time.monotonic() - t0
        time.sleep(2)
        rss2, now2 = vm_kib(p.pid) / 1024, vm_kib(p.pid, "VmRSS") / 1024
        rows.append(f"| peak RSS (VmHWM) after a full re-list of {count_routes()} peers (compacted at {rev}) | "
                    f"{rss2:.1f} MiB (steady VmRSS {now2:.1f} MiB; re-listed in {t_relist:.1f} s) | ≤ 50 MiB |")
        stop(p)
    finally:
        for proc in STARTED:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a step that failed may have left it frozen
                proc.kill()
                proc.wait(10)
        etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"etcd client: {os.environ.get('FLANNEL_ETCD_CLIENT') or 'gateway'}{', TLS' if args.tls else ''}\n")
    print("| benchmark | result | target |\n|---|---|---|")
    print("\n".join(rows))
    return 0


async def measure_events(s: socket.socket, events: int) -> list[float]:
    """Put ``events`` new leases one by one over one connection; time each until its route is announced."""
    lat = []
    async with etcd_client() as c:
        lease = await c.lease.grant(86400)
        for k in range(events):
            i = 20000 + k
            key, value = peer_lease(i)
            a, b = divmod(i + 1, 256)
            dst = bytes([10, 100 + a, b, 0])
            t_put = time.monotonic()
            await c.kv.put(key, value, lease=lease.ID)
            lat.append(wait_route_msg(s, dst) - t_put)
    return lat


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inner", action="store_true")
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--peers-convergence", type=int, default=1000)
    ap.add_argument("--peers-rss", type=int, default=5000)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--tls", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    return inner(args) if args.inner else run_inside(__file__, "fbench")


if __name__ == "__main__":
    sys.exit(main())
