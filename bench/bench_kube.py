"""Kube mode at scale (issues #6, #16): flanneld watching 5000 flannel nodes through the fake API server.

Measures, for ``--nodes`` nodes already annotated by flannel (as in a running cluster that a new node joins):
time from start to ready (subnet.env written), time to the initial sync (every peer's route in the kernel),
and flanneld's peak RSS (``VmHWM``) after the sync and after ``--updates`` node changes arrive by the watch
(each a new public IP, waited for as its FDB entry in the kernel).

``--churn-seconds S`` then changes nodes at ``--rate`` per second for S seconds and times each change from
its API write to its kernel entry (``kube_churn``: percentiles, per-10-s windows with flanneld's VmRSS, the
writer's lag, CPU); ``--relist`` ends each run with a full re-list forced by a compacted history (410
Expired) and reads the peak RSS after it: together, the memory target of issue #16 in kube mode.

flanneld runs as deployed (``tests/deployed.py``: ``PYTHONOPTIMIZE=2``, ``GLIBC_TUNABLES``); with
``BENCH_AS_DEPLOYED=0`` it runs without them.

Runs in one fresh network namespace (a veth ``eth0`` with 198.18.0.1/24), with the fake API server
(``tests/kube_fake``, HTTPS with its own CA and a bearer token, as a real cluster) on the namespace's loopback;
nothing touches the root namespace. The script re-executes itself inside the namespace. Bounded: one
flanneld start (and one fake) per repeat, and every process is stopped by PID.

Usage: .venv/bin/python bench/bench_kube.py [--nodes 5000] [--repeat 3] [--updates 200] [--relist]
       [--churn-seconds 600 [--rate 100] [--steady 50] [--py-spy FILE]] [--yaml-kubeconfig]
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.kube_fake.objects import make_node  # noqa: E402
from tests.kube_fake.process import FakeKubeProcess, start_fake_process  # noqa: E402

from churn_report import Observer, RssSampler, print_latencies, print_writer  # noqa: E402
from kernel_watch import cpu_seconds, loadavg, vm_kib  # noqa: E402
from kube_churn import RELIST_ADDED, Api, Writer, last_index, log_problems, peer_node, relist, wait_seen  # noqa: E402
from one_host_netns import flanneld_env, run_inside  # noqa: E402

FLANNELD = os.environ.get("BENCH_FLANNELD") or str(REPO / ".venv" / "bin" / "flanneld")
"""``BENCH_FLANNELD``: another flanneld command (a profiling wrapper), for finding where memory goes."""
TOKEN = "bench-token"
YAML_KUBECONFIG = False
"""``--yaml-kubeconfig``: the kubeconfig written as YAML (flanneld then loads PyYAML, +1.2 MiB) instead of JSON."""


def routes() -> int:
    out = subprocess.run(["ip", "route", "show", "dev", "flannel.1"], capture_output=True, text=True).stdout
    return out.count("\n")


def hwm_mib(pid: int) -> float:
    return vm_kib(pid) / 1024


def update_ip(i: int) -> bytes:
    return bytes([198, 20, i >> 8, i & 255])


def write_kubeconfig(path: Path, api: FakeKubeProcess, tls: Path) -> None:
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "b",
        "clusters": [{"name": "b", "cluster": {"server": api.url, "certificate-authority": str(tls / "ca.crt")}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "b", "context": {"cluster": "b", "user": "u"}}]}
    if YAML_KUBECONFIG:
        import yaml

        path.write_text(yaml.safe_dump(doc))
    else:
        path.write_text(json.dumps(doc))


def one_run(tmp: Path, args: argparse.Namespace, run: int) -> dict[str, float]:
    """One flanneld against a fresh fake (so that every run starts from the same cluster): sync, updates, then
    churn and a re-list when asked."""
    tls = tmp / "tls"
    api = start_fake_process("127.0.0.1:6443", args=["--tls-dir", str(tls), "--token", TOKEN,
                                                      "--nodes-file", str(tmp / "nodes.json")], timeout=120)
    client = Api(api.url, tls / "ca.crt", TOKEN)
    write_kubeconfig(tmp / "kubeconfig", api, tls)
    subnet_file = tmp / f"subnet-{run}.env"
    log_path = tmp / f"flanneld-{run}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - closed below
    obs = Observer()
    obs.start()
    started = time.monotonic()
    proc = subprocess.Popen([FLANNELD, "--kube-subnet-mgr", f"--kubeconfig-file={tmp / 'kubeconfig'}",
                             f"--net-config-path={tmp / 'net-conf.json'}", f"--subnet-file={subnet_file}",
                             "--iface=eth0"], env=flanneld_env(NODE_NAME="self"), stdout=log, stderr=log)
    try:
        while not subnet_file.exists():
            if proc.poll() is not None or time.monotonic() - started > 60:
                raise RuntimeError(f"flanneld not ready; see {log_path}")
            time.sleep(0.005)
        r = {"ready_s": time.monotonic() - started}
        while routes() < args.nodes:
            if proc.poll() is not None or time.monotonic() - started > 300:
                raise RuntimeError(f"only {routes()} of {args.nodes} routes; see {log_path}")
            time.sleep(0.02)
        r["sync_s"] = time.monotonic() - started
        r["rss_sync"] = hwm_mib(proc.pid)
        for i in range(args.updates):  # a public IP moves: the watch carries it, the FDB entry changes
            client.move(i, update_ip(i))
        deadline = time.monotonic() + 60
        while any(update_ip(i) not in obs.fdb_seen for i in range(args.updates)) and time.monotonic() < deadline:
            time.sleep(0.05)
        r["rss_end"] = hwm_mib(proc.pid)
        count = int(args.churn_seconds * args.rate)
        if count:
            r.update(churn(args, count, proc, api, client, obs))
        if args.relist:
            print(f"# re-list: {relist(client, proc, obs, last_index(args.nodes, count, args.steady))}", flush=True)
            time.sleep(2)  # the reconcile that follows a list
            r["rss_relist"] = hwm_mib(proc.pid)
        return r
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        obs.stop()
        client.close()
        api.stop()
        subprocess.run(["ip", "link", "del", "flannel.1"], check=False)
        for line in log_problems(log_path):
            print(f"# flanneld log: {line}", flush=True)


def churn(args: argparse.Namespace, count: int, proc: subprocess.Popen[bytes], api: FakeKubeProcess, client: Api,
          obs: Observer) -> dict[str, float]:
    """``count`` changes at ``args.rate`` per second through the API; print their report."""
    cpu0, api_cpu0, t_run = cpu_seconds(proc.pid), cpu_seconds(api.pid), time.monotonic()
    spy = None
    if args.py_spy:  # sample flanneld over the churn: where its time goes
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200", "-f", "raw",
                                "-o", args.py_spy, "-d", str(int(args.churn_seconds)), "-p", str(proc.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rss = RssSampler(proc.pid)
    rss.start()
    writer = Writer(lambda: Api(client.url, client.cafile, TOKEN), count, args.rate, args.nodes, args.steady)
    writer.run()
    rss.done.set()
    if spy is not None:
        spy.wait(30)
    wait_seen(obs, count, 10)
    run_s = time.monotonic() - t_run
    cpu, api_cpu = cpu_seconds(proc.pid) - cpu0, cpu_seconds(api.pid) - api_cpu0
    hwm = hwm_mib(proc.pid)
    samples = [mib for _, mib in rss.samples]
    print(f"# churn: {count} changes at {args.rate:g}/s over {args.churn_seconds:g} s, {args.nodes} nodes present"
          f"{f' (steady {args.steady}: every other change adds a node and deletes one)' if args.steady else ''}; "
          f"load average after: {loadavg()}")
    print(f"# flanneld CPU over the run {cpu:.1f} s ({cpu / run_s * 100:.0f}% of one core), the fake API server's "
          f"{api_cpu:.1f} s; flanneld VmRSS {min(samples):.1f}-{max(samples):.1f} MiB, peak RSS {hwm:.1f} MiB; "
          f"{len(writer.errors)} failed writes{': ' + writer.errors[0] if writer.errors else ''}\n")
    print_writer(writer.late, [a for a in writer.acked if a == a], "the API server's answer to a write")
    print_latencies(writer.delays(obs), args.rate, rss, "p99 ≤ 50 ms (etcd mode's)", writer.acked)
    return {"rss_churn": hwm}


def inner(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="flannel-bench-kube-"))
    nodes_file = tmp / "nodes.json"
    own = make_node("self", 0, pod_cidr="10.0.0.0/24", internal_ip="198.18.0.1")
    nodes_file.write_text(json.dumps([own, *(peer_node(i) for i in range(args.nodes))]))
    (tmp / "net-conf.json").write_text('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}')
    print(f"# command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}; PYTHONOPTIMIZE="
          f"{os.environ.get('PYTHONOPTIMIZE', '')!r}; load average before: {loadavg()}")
    print(f"# fake API: {args.nodes} flannel nodes of ~{nodes_file.stat().st_size // (args.nodes + 1)} bytes "
          "of JSON each", flush=True)
    results = [one_run(tmp, args, r) for r in range(args.repeat)]
    shutil.rmtree(tmp, ignore_errors=True)  # kept when a run failed: its error names the log in it
    names = {"rss_sync": "after sync", "rss_end": f"after {args.updates} updates",
             "rss_churn": f"after {args.churn_seconds:g} s of churn", "rss_relist": "after the re-list"}
    for r in results:
        print(f"# run: ready {r['ready_s']:.2f} s, sync {r['sync_s']:.2f} s; peak RSS "
              + ", ".join(f"{r[k]:.1f} MiB {name}" for k, name in names.items() if k in r), flush=True)
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    cols = [name for k, name in names.items() if k in med]
    print(f"# load average after: {loadavg()}")
    print("| nodes | start to ready | start to initial sync (all routes) | "
          + " | ".join(f"peak RSS {c}" for c in cols) + " |")
    print("|---:|---:|---:|" + "---:|" * len(cols))
    print(f"| {args.nodes} | {med['ready_s']:.2f} s | {med['sync_s']:.2f} s | "
          + " | ".join(f"{med[k]:.1f} MiB" for k in names if k in med) + " |")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--relist", action="store_true", help="end each run with a full re-list after compaction")
    ap.add_argument("--churn-seconds", type=float, default=0, metavar="S", help="change nodes for S seconds")
    ap.add_argument("--rate", type=float, default=100, help="changes per second of the churn")
    ap.add_argument("--steady", type=int, default=0, metavar="W",
                    help="churn: every other change adds a node and deletes the one added W additions earlier")
    ap.add_argument("--py-spy", metavar="FILE", help="churn: sample flanneld with py-spy, raw output to FILE")
    ap.add_argument("--yaml-kubeconfig", action="store_true", help="write the kubeconfig as YAML, not JSON")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global YAML_KUBECONFIG
    YAML_KUBECONFIG = args.yaml_kubeconfig
    count = args.churn_seconds * args.rate
    if (not 0 < args.nodes <= 20000 or not 0 <= count <= 60000 or not 0 <= args.updates <= min(args.nodes, 65536)
            or last_index(args.nodes, int(count), args.steady) + RELIST_ADDED >= 39000):
        # node i's pod CIDR is 10.<100 + (i + 1) / 256>.<(i + 1) % 256>.0/24: the plan ends near node 39000
        print("at most 20000 nodes, 60000 changes, one update per node, and nodes + changes / 2 (with --steady) "
              "below 39000", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    return inner(args) if args.inner else run_inside(__file__, "fbenchk")


if __name__ == "__main__":
    sys.exit(main())
