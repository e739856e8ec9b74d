"""Per-peer state in-process (issue #16): bytes a peer and CPU of the path from a node object to packed netlink
messages, without a kernel, an API server or a daemon.

5000 nodes shaped like ``bench_kube.py``'s go through ``kube_nodes.node_to_lease`` (the manager's leases), a
``LeaseTracker`` snapshot with its ``LeaseGuard`` (VtepMACs on), and an IPv4 ``VXLANPlane``'s ``entries_for``
and ``ops_for_change`` (nexthop objects on), the operations then packed. Memory: ``tracemalloc``, what stays
held after each stage (the manager's dict by node name included), divided by the peers. CPU: best of
``--rounds`` for each stage. To compare two trees, run it under ``PYTHONPATH=<other tree>/src``.

``--reconcile`` (root) also programs the peers into a real kernel and times the vxlan plane's full comparison
(``drift_ops``: neighbours, FDB, nexthop objects, routes) with everything in sync, and its ``tracemalloc`` peak. It
runs in a private network namespace of its own (``unshare -n``: a veth ``eth0`` and ``flannel.1``, gone when the
process ends); nothing touches the root namespace.

Usage: .venv/bin/python bench/peer_state.py [--peers 5000] [--rounds 7] [--reconcile]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import subprocess
import sys
import time
import tracemalloc
from ipaddress import IPv4Network
from typing import Any

from flannel.backend.vxlan_plane import VXLANPlane
from flannel.config import parse_network_config
from flannel.lease import Lease
from flannel.subnet.kube_annotations import annotation_names
from flannel.subnet.kube_nodes import node_to_lease
from flannel.subnet.lease_guard import Family, LeaseGuard
from flannel.subnet.lease_tracker import LeaseTracker
from flannel.subnet.manager import WatchResult

PREFIX = "flannel.alpha.coreos.com/"
CLUSTER = IPv4Network("10.0.0.0/8")
OWN = Lease(IPv4Network("10.1.1.0/24"))


def node(i: int) -> dict[str, Any]:
    a, b = divmod(i + 1, 256)
    mac = f"02:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:00:01"
    return {"metadata": {"name": f"node-{i:05d}", "annotations": {
        PREFIX + "kube-subnet-manager": "true", PREFIX + "backend-type": "vxlan",
        PREFIX + "backend-data": json.dumps({"VNI": 1, "VtepMAC": mac}, separators=(",", ":")),
        PREFIX + "public-ip": f"198.19.{(i >> 8) & 255}.{i & 255}"}},
        "spec": {"podCIDR": f"10.{100 + a}.{b}.0/24"}}


def stages(nodes: list[dict[str, Any]]) -> tuple[list[tuple[str, float]], list[object]]:
    """Run every stage once; ``[(stage, seconds)]`` and what must stay alive (the state)."""
    cfg = parse_network_config(json.dumps({"Network": str(CLUSTER), "Backend": {"Type": "vxlan"}}))
    names = annotation_names(PREFIX.rstrip("/"))
    t0 = time.perf_counter()
    leases = {n["metadata"]["name"]: node_to_lease(n, names, cfg) for n in nodes}
    t1 = time.perf_counter()
    guard = LeaseGuard([Family(v6=False, network=CLUSTER, own=OWN.subnet)], "vxlan", vtep_macs=True)
    tracker = LeaseTracker(OWN, guard)
    events = tracker.apply(WatchResult(snapshot=tuple(leases.values())))
    t2 = time.perf_counter()
    plane = VXLANPlane(nl=None, family=socket.AF_INET, dev_name="flannel.1",  # type: ignore[arg-type]
                       cluster=CLUSTER, own_subnet=OWN.subnet, dev_index=7, nexthops=True)  # type: ignore[arg-type]
    ops: list[object] = []
    for ev in events:
        e = plane.entries_for(ev.lease)
        ops.extend(plane.ops_for_change(None, e))
        plane.desired[ev.lease.key] = e  # type: ignore[assignment]
    t3 = time.perf_counter()
    for op in ops:
        op.pack(1)  # type: ignore[attr-defined]
    t4 = time.perf_counter()
    return ([("node_to_lease", t1 - t0), ("tracker + guard", t2 - t1), ("plane entries + ops", t3 - t2),
             ("pack", t4 - t3)], [leases, tracker, plane])


def reconcile(peers: int, rounds: int) -> None:
    """Inside a private namespace: program ``peers`` peers, then time ``drift_ops`` (see the module docstring)."""
    from flannel.backend.peer_events import apply_lease_events
    from flannel.lease import EventType, LeaseEvent
    from flannel.netlink import Netlink

    for cmd in ("ip link add eth0 type veth peer name eth1", "ip link set eth1 up",
                "ip addr add 198.18.0.1/24 dev eth0", "ip link set eth0 up",
                "ip link add flannel.1 type vxlan id 1 local 198.18.0.1 dev eth0 nolearning dstport 8472",
                "ip link set flannel.1 up", "ip addr add 10.1.1.0/32 dev flannel.1"):
        subprocess.run(cmd.split(), check=True)
    cfg = parse_network_config(json.dumps({"Network": str(CLUSTER), "Backend": {"Type": "vxlan"}}))
    names = annotation_names(PREFIX.rstrip("/"))
    leases = [node_to_lease(node(i), names, cfg) for i in range(peers)]
    with Netlink() as nl:
        link = nl.link_by_name("flannel.1")
        assert link is not None
        plane = VXLANPlane(nl=nl, family=socket.AF_INET, dev_name="flannel.1", cluster=CLUSTER,
                           own_subnet=OWN.subnet, dev_index=link.index)  # type: ignore[arg-type]
        plane.use_nexthops()
        apply_lease_events(nl, [LeaseEvent(EventType.ADDED, lease) for lease in leases], "vxlan", [plane],
                           {link.index: "flannel.1"})
        best = float("inf")
        for _ in range(rounds):
            t = time.process_time()
            repairs = plane.drift_ops()
            best = min(best, time.process_time() - t)
            assert repairs == [], repairs[:3]
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        plane.drift_ops()
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    print(f"reconcile of {peers} peers in sync (nexthop objects: {plane.nexthops}): CPU {best * 1e3:.1f} ms, best "
          f"of {rounds}; traced peak {peak / 2**20:.2f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reconcile", action="store_true", help="also time a reconcile against a real kernel (root)")
    ap.add_argument("--reconcile-inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reconcile_inner:
        reconcile(args.peers, args.rounds)
        return
    nodes = [node(i) for i in range(args.peers)]
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        times, _state = stages(nodes)
        for name, dt in times:
            best[name] = min(best.get(name, float("inf")), dt)
    del _state
    gc.collect()
    cfg = parse_network_config(json.dumps({"Network": str(CLUSTER), "Backend": {"Type": "vxlan"}}))
    names = annotation_names(PREFIX.rstrip("/"))
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    leases = {n["metadata"]["name"]: node_to_lease(n, names, cfg) for n in nodes}
    gc.collect()
    held_leases = tracemalloc.get_traced_memory()[0]
    guard = LeaseGuard([Family(v6=False, network=CLUSTER, own=OWN.subnet)], "vxlan", vtep_macs=True)
    tracker = LeaseTracker(OWN, guard)
    events = tracker.apply(WatchResult(snapshot=tuple(leases.values())))
    plane = VXLANPlane(nl=None, family=socket.AF_INET, dev_name="flannel.1",  # type: ignore[arg-type]
                       cluster=CLUSTER, own_subnet=OWN.subnet, dev_index=7)  # type: ignore[arg-type]
    for ev in events:
        plane.desired[ev.lease.key] = plane.entries_for(ev.lease)  # type: ignore[assignment]
    del events
    gc.collect()
    held_all = tracemalloc.get_traced_memory()[0]
    n, total = args.peers, held_all - base
    print(f"{n} peers, bytes a peer held: manager's leases {(held_leases - base) / n:.0f}, tracker + guard + plane "
          f"{(held_all - held_leases) / n:.0f}, total {total / n:.0f} ({total / 2**20:.2f} MiB)")
    print(f"CPU, best of {args.rounds}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in best.items())
          + f"; total {sum(best.values()) * 1e3:.1f} ms")
    if args.reconcile:
        if os.geteuid() != 0:
            sys.exit("--reconcile needs root (a private network namespace)")
        subprocess.run(["unshare", "-n", sys.executable, os.path.abspath(__file__), "--reconcile-inner",
                        "--peers", str(args.peers), "--rounds", str(args.rounds)], check=True)


if __name__ == "__main__":
    main()
