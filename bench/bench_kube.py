"""Kube mode at scale (issue #6): flanneld watching 5000 flannel nodes through the fake API server.

Measures, for ``--nodes`` nodes already annotated by flannel (as in a running cluster that a new node joins):
time from start to ready (subnet.env written), time to the initial sync (every peer's route in the kernel),
and flanneld's peak RSS (``VmHWM``) after the sync and after ``--updates`` node changes arrive by the watch.

Runs in one fresh network namespace (a veth ``eth0`` with 198.18.0.1/24), with the fake API server
(``tests/kube_fake``, HTTPS with its own CA and a bearer token, as a real cluster) on the namespace's loopback;
nothing touches the root namespace. The script re-executes itself inside the namespace. Bounded: one
flanneld start per repeat, and every process is stopped by PID.

Usage: .venv/bin/python bench/bench_kube.py [--nodes 5000] [--repeat 3] [--updates 200] [--yaml-kubeconfig]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.kube_fake.objects import make_node  # noqa: E402
from tests.kube_fake.process import FakeKubeProcess, start_fake_process  # noqa: E402

from one_host_netns import run_inside  # noqa: E402

FLANNELD = os.environ.get("BENCH_FLANNELD") or str(REPO / ".venv" / "bin" / "flanneld")
"""``BENCH_FLANNELD``: another flanneld command (a profiling wrapper), for finding where memory goes."""
TOKEN = "bench-token"
YAML_KUBECONFIG = False
"""``--yaml-kubeconfig``: the kubeconfig written as YAML (flanneld then loads PyYAML, +1.2 MiB) instead of JSON."""
PREFIX = "flannel.alpha.coreos.com/"


def peer_node(i: int) -> dict[str, object]:
    a, b = divmod(i + 1, 256)
    mac = f"02:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:00:01"
    return make_node(f"node-{i:05d}", i, pod_cidr=f"10.{100 + a}.{b}.0/24", annotations={
        PREFIX + "kube-subnet-manager": "true", PREFIX + "backend-type": "vxlan",
        PREFIX + "backend-data": json.dumps({"VNI": 1, "VtepMAC": mac}, separators=(",", ":")),
        PREFIX + "public-ip": f"198.19.{(i >> 8) & 255}.{i & 255}"})


def routes() -> int:
    out = subprocess.run(["ip", "route", "show", "dev", "flannel.1"], capture_output=True, text=True).stdout
    return out.count("\n")


def hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def api_call(api: FakeKubeProcess, tls: Path, method: str, path: str, body: object) -> None:
    import ssl

    ctx = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    req = urllib.request.Request(api.url + path, method=method, data=json.dumps(body).encode(), headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/strategic-merge-patch+json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        resp.read()


def one_run(tmp: Path, api: FakeKubeProcess, tls: Path, nodes: int, updates: int, run: int) -> dict[str, float]:
    kubeconfig = tmp / "kubeconfig"
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "b",
        "clusters": [{"name": "b", "cluster": {"server": api.url, "certificate-authority": str(tls / "ca.crt")}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "b", "context": {"cluster": "b", "user": "u"}}]}
    if YAML_KUBECONFIG:
        import yaml

        kubeconfig.write_text(yaml.safe_dump(doc))
    else:
        kubeconfig.write_text(json.dumps(doc))
    subnet_file = tmp / f"subnet-{run}.env"
    log = open(tmp / f"flanneld-{run}.log", "ab")  # noqa: SIM115 - closed below
    started = time.monotonic()
    proc = subprocess.Popen([FLANNELD, "--kube-subnet-mgr", f"--kubeconfig-file={kubeconfig}",
                             f"--net-config-path={tmp / 'net-conf.json'}", f"--subnet-file={subnet_file}",
                             "--iface=eth0"], env={**os.environ, "NODE_NAME": "self"}, stdout=log, stderr=log)
    try:
        while not subnet_file.exists():
            if proc.poll() is not None or time.monotonic() - started > 60:
                raise RuntimeError(f"flanneld not ready; see {tmp}/flanneld-{run}.log")
            time.sleep(0.005)
        ready = time.monotonic() - started
        while routes() < nodes:
            if proc.poll() is not None or time.monotonic() - started > 300:
                raise RuntimeError(f"only {routes()} of {nodes} routes; see {tmp}/flanneld-{run}.log")
            time.sleep(0.02)
        synced = time.monotonic() - started
        rss_sync = hwm_mib(proc.pid)
        for i in range(updates):  # a public IP moves: the watch carries it, the route changes
            api_call(api, tls, "PATCH", f"/api/v1/nodes/node-{i:05d}/status",
                     {"metadata": {"annotations": {PREFIX + "public-ip": f"198.20.{i >> 8}.{i & 255}"}}})
        deadline = time.monotonic() + 60
        while updates and f"198.20.{(updates - 1) >> 8}.{(updates - 1) & 255}" not in subprocess.run(
                ["ip", "neigh", "show", "dev", "flannel.1"], capture_output=True, text=True).stdout:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return {"ready_s": ready, "sync_s": synced, "rss_sync": rss_sync, "rss_end": hwm_mib(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        subprocess.run(["ip", "link", "del", "flannel.1"], check=False)


def inner(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="flannel-bench-kube-"))
    tls = tmp / "tls"
    nodes_file = tmp / "nodes.json"
    own = make_node("self", 0, pod_cidr="10.0.0.0/24", internal_ip="198.18.0.1")
    nodes_file.write_text(json.dumps([own, *(peer_node(i) for i in range(args.nodes))]))
    (tmp / "net-conf.json").write_text('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}')
    print(f"# fake API: {args.nodes} flannel nodes of ~{nodes_file.stat().st_size // (args.nodes + 1)} bytes "
          "of JSON each", flush=True)
    api = start_fake_process("127.0.0.1:6443", args=["--tls-dir", str(tls), "--token", TOKEN,
                                                      "--nodes-file", str(nodes_file)], timeout=120)
    try:
        results = [one_run(tmp, api, tls, args.nodes, args.updates, r) for r in range(args.repeat)]
    finally:
        api.stop()
    shutil.rmtree(tmp, ignore_errors=True)  # kept when a run failed: its error names the log in it
    for r in results:
        print(f"# run: ready {r['ready_s']:.2f} s, sync {r['sync_s']:.2f} s, peak RSS {r['rss_sync']:.1f} MiB "
              f"after sync, {r['rss_end']:.1f} MiB after {args.updates} updates", flush=True)
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print("| nodes | start to ready | start to initial sync (all routes) | peak RSS after sync | "
          f"peak RSS after {args.updates} updates |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {args.nodes} | {med['ready_s']:.2f} s | {med['sync_s']:.2f} s | {med['rss_sync']:.1f} MiB | "
          f"{med['rss_end']:.1f} MiB |")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--yaml-kubeconfig", action="store_true", help="write the kubeconfig as YAML, not JSON")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global YAML_KUBECONFIG
    YAML_KUBECONFIG = args.yaml_kubeconfig
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    return inner(args) if args.inner else run_inside(__file__, "fbenchk")


if __name__ == "__main__":
    sys.exit(main())
