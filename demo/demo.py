"""The README's demo: three simulated hosts in network namespaces, flanneld with vxlan on each, pods pinging,
then the operator's view of one host: ``flannelctl status`` and ``flannelctl probe``.

Everything lives in namespaces created here and is removed at the end (KEEP=1 keeps it for exploring).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.cluster import ETCD_URL, REPO, Cluster, in_ns

FLANNELCTL = str(REPO / ".venv" / "bin" / "flannelctl")
HEALTHZ_PORT = "8471"


def main() -> int:
    if os.geteuid() != 0:
        print("the demo needs root: it creates network namespaces", file=sys.stderr)
        return 1
    keep = os.environ.get("KEEP") == "1"
    cluster = Cluster()
    ok = False
    try:
        print(f"building 3 hosts in namespaces {cluster.prefix}* (underlay 198.18.0.0/24, etcd at 198.18.0.2)")
        cluster.start()
        for n in (1, 2, 3):
            cluster.start_flanneld(cluster.add_host(n), f"--healthz-port={HEALTHZ_PORT}")
        for host in cluster.hosts.values():
            env = cluster.wait_ready(host)
            pod = cluster.add_pod(host)
            print(f"  host h{host.n} {host.ip}: FLANNEL_SUBNET={env['FLANNEL_SUBNET']} MTU={env['FLANNEL_MTU']}"
                  f"  pod {pod}")
        print("\nleases in etcd (/coreos.com/network/subnets/):")
        for key, value in sorted(cluster.leases().items()):
            attrs = json.loads(value)
            print(f"  {key:<16} PublicIP={attrs['PublicIP']:<13} VtepMAC={attrs['BackendData']['VtepMAC']}")
        matrix = cluster.matrix()
        pods = sorted({s for s, _ in matrix})
        print("\npod-to-pod reachability (ping, rows = source):")
        print(" " * 14 + "".join(f"{p:>14}" for p in pods))
        for s in pods:
            print(f"{s:>14}" + "".join(f"{'-' if s == d else ('ok' if matrix[(s, d)] else 'FAIL'):>14}" for d in pods))
        ok = all(matrix.values())
        print(f"\n{'all pods reach each other' if ok else 'SOME PODS ARE UNREACHABLE'}"
              f" ({sum(matrix.values())}/{len(matrix)} pairs)")
        h1 = cluster.hosts[1]
        for command in ("status", "probe"):
            print(f"\nflannelctl {command}, on h1 (docs/flannelctl.md):")
            out = in_ns(h1.ns, FLANNELCTL, command, f"--etcd-endpoints={ETCD_URL}", f"--subnet-file={h1.subnet_file}",
                        "--healthz-ip=127.0.0.1", f"--healthz-port={HEALTHZ_PORT}", check=False, timeout=60)
            print("  " + (out.stdout + out.stderr).strip().replace("\n", "\n  "))
            ok = ok and out.returncode == 0
        if keep:
            print(f"\nKEEP=1: left running. Explore with: ip netns exec {cluster.prefix}h1 ip route")
            print(f"Logs and subnet files: {cluster.tmp}")
            print("Remove everything with: make demo-clean")
    finally:
        if not keep:
            cluster.close()
            print("removed every namespace and process the demo made")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
