"""etcd clients side by side (issue #16): gRPC (``EtcdStore``) against the JSON gateway (``EtcdGatewayStore``).

One throw-away etcd on a free loopback port holds 5000 lease records (flanneld's keys and values, attached
to one etcd lease). Each client then runs in a fresh process that does what flanneld's datastore side does
at start: import the client, connect, list the 5000 records, open a watch and receive one event. The process
reports its peak RSS (VmHWM) and the time of each step; the parent also times spawn → done. Variants:

* ``grpc``: today's client, ``ssl`` blocked as flanneld's entry point does in etcd mode;
* ``gateway``: the JSON-gateway client, ``ssl`` blocked (an ``http://`` etcd);
* ``gateway+ssl``: the same with ``ssl`` loaded, as it is when the gateway client speaks TLS.

Rounds alternate the variants' order; medians are reported. Bounded: 3 rounds × 3 variants by default.
With ``--tls`` etcd requires client certificates (made with the tests' helper) and the variants are ``grpc``
and ``gateway+ssl``.

Usage: .venv/bin/python bench/bench_etcd_client.py [--rounds 3] [--peers 5000] [--lists 5] [--tls]
"""

from __future__ import annotations

import sys
import time

T0 = time.perf_counter()
if "--child" in sys.argv and "gateway+ssl" not in sys.argv:
    sys.modules["ssl"] = None  # type: ignore[assignment]  # before asyncio, as flanneld's entry point does

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PREFIX = "/coreos.com/network"
VARIANTS = ("grpc", "gateway", "gateway+ssl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fill(endpoint: str, peers: int, tls: Path | None) -> None:
    """``peers`` records written by bench_daemon's writer (imported here, in the parent only: the measured
    children must import nothing but what they measure)."""
    from bench_daemon import put_leases

    await put_leases(0, peers, endpoint.split("://")[1], tls)


def child(variant: str, endpoint: str, lists: int, tls: str) -> None:
    """One measured process; prints one JSON line."""
    t0 = T0
    sys.path.insert(0, str(REPO / "src"))
    from flannel.subnet.etcd_options import EtcdStoreOptions

    if variant == "grpc":
        from flannel.subnet.etcd_store import EtcdStore as Store
    else:
        from flannel.subnet.etcd_gateway import EtcdGatewayStore as Store  # type: ignore[assignment]
    t_import = time.perf_counter()

    async def run() -> dict[str, float]:
        files = {} if not tls else {"cafile": f"{tls}/ca.pem", "certfile": f"{tls}/client.pem",
                                     "keyfile": f"{tls}/client-key.pem"}
        store = await Store.open(EtcdStoreOptions(endpoints=(endpoint,), request_timeout=10, **files))
        t_open = time.perf_counter()
        times = []
        count, rev = 0, 0
        for _ in range(lists):
            t = time.perf_counter()
            kvs, rev = await store.get_prefix(f"{PREFIX}/subnets/")
            times.append(time.perf_counter() - t)
            count = len(kvs)
            del kvs
        t_listed = time.perf_counter()
        watch = store.watch(f"{PREFIX}/subnets/", rev + 1, prefix=True)
        first = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0.2)
        await store.put(f"{PREFIX}/subnets/10.99.0.0-24", "{}", None)
        seen = await first
        while not seen:
            seen = await anext(watch)
        await watch.aclose()
        await store.delete(f"{PREFIX}/subnets/10.99.0.0-24")
        await store.close()
        return {"open_ms": (t_open - t_import) * 1000, "first_list_ms": times[0] * 1000,
                "list_ms": statistics.median(times) * 1000, "count": count,
                "start_to_listed_ms": (t_open - t0 + times[0]) * 1000, "watch_ok": float(len(seen)),
                "_listed": t_listed}

    result = asyncio.run(run())
    result.pop("_listed")
    status = Path("/proc/self/status").read_text().splitlines()
    kib = {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith(("VmHWM", "VmRSS"))}
    result.update(import_ms=(t_import - t0) * 1000, hwm_mib=kib["VmHWM"] / 1024, rss_mib=kib["VmRSS"] / 1024,
                  ssl_loaded=float(sys.modules.get("ssl") is not None))
    print(json.dumps(result))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=VARIANTS)
    ap.add_argument("--endpoint", default="")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peers", type=int, default=5000)
    ap.add_argument("--lists", type=int, default=5)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--tls-dir", default="")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.endpoint, args.lists, args.tls_dir)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="flannel-bench-etcd-"))
    client, peer = free_port(), free_port()
    endpoint = f"{'https' if args.tls else 'http'}://127.0.0.1:{client}"
    cmd = [shutil.which("etcd") or "etcd", "--data-dir", str(tmp / "etcd"), "--listen-client-urls", endpoint,
           "--advertise-client-urls", endpoint, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
           "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
           "--initial-cluster", f"default=http://127.0.0.1:{peer}"]
    variants = VARIANTS
    if args.tls:
        sys.path.insert(0, str(REPO))
        from tests.etcd_server import make_tls_files

        files = make_tls_files(tmp)
        cmd += ["--cert-file", str(files.server_cert), "--key-file", str(files.server_key), "--client-cert-auth",
                "--trusted-ca-file", str(files.ca)]
        variants = ("grpc", "gateway+ssl")
    etcd = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    try:
        asyncio.run(fill(endpoint, args.peers, tmp if args.tls else None))
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for variant in order:
                t = time.perf_counter()
                out = subprocess.run([sys.executable, __file__, "--child", variant, "--endpoint", endpoint,
                                      "--lists", str(args.lists), "--tls-dir", str(tmp) if args.tls else ""],
                                     capture_output=True, text=True, timeout=120)
                if out.returncode:
                    raise RuntimeError(f"{variant}: {out.stderr[-2000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["process_ms"] = (time.perf_counter() - t) * 1000
                results[variant].append(row)
    finally:
        etcd.terminate()
        etcd.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.peers} records, {'TLS with client certificates, ' if args.tls else ''}{args.rounds} rounds, "
          "medians (min–max)\n")
    print("| client | peak RSS (VmHWM) | import | connect | first list | list (median of "
          f"{args.lists}) | spawn → listed + watched, exit |\n|---|---:|---:|---:|---:|---:|---:|")

    def cell(rows: list[dict[str, float]], key: str, unit: str, fmt: str = ".1f") -> str:
        vals = [row[key] for row in rows]
        return f"{statistics.median(vals):{fmt}} {unit} ({min(vals):{fmt}}–{max(vals):{fmt}})"

    for variant, rows in results.items():
        assert all(row["count"] == args.peers and row["watch_ok"] >= 1 for row in rows), rows
        print(f"| {variant} | {cell(rows, 'hwm_mib', 'MiB')} | {cell(rows, 'import_ms', 'ms', '.0f')} | "
              f"{cell(rows, 'open_ms', 'ms', '.0f')} | {cell(rows, 'first_list_ms', 'ms', '.0f')} | "
              f"{cell(rows, 'list_ms', 'ms', '.0f')} | {cell(rows, 'process_ms', 'ms', '.0f')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
