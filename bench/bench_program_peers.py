"""Benchmark: program N remote VXLAN peers with ``Netlink.apply`` versus ``ip -batch`` + ``bridge -batch``.

Why: flanneld must (re)program every remote lease at start-up; with thousands of nodes that is thousands
of neighbour + FDB + route entries, and a per-request round trip would make restarts slow. The target is
to be no slower than 1.5x iproute2's batch mode, which is the fastest standard tool.

Each peer X gets, on ``flannel.1``:
    ip neigh replace 10.A.B.0 lladdr MAC_X dev flannel.1 nud permanent
    bridge fdb replace MAC_X dev flannel.1 dst PUBLIC_X self permanent
    ip route replace 10.A.B.0/24 via 10.A.B.0 dev flannel.1 onlink
where 10.A.B.0/24 is the X-th /24 of 10.64.0.0/10 (10.244.0.0/16 holds only 256 of them) and PUBLIC_X is
in 198.18.0.0/15. Every run starts in a fresh namespace; namespaces are removed in ``finally``.

Run as root:  .venv/bin/python bench/bench_program_peers.py [--sizes 1000 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.netns import NetNS, new_netns

from flannel.backend.vxlan import VXLANNetwork, _Device
from flannel.backend.vxlan_device import VXLANDeviceSpec
from flannel.backend.vxlan_plane import VXLANPlane
from flannel.config import NetworkConfig
from flannel.lease import Lease, LeaseAttrs
from flannel.netlink import FdbReplace, NeighReplace, Netlink, Op, RouteReplace
from flannel.subnet.manager import WatchResult

POD_BASE = int(IPv4Address("10.64.0.0"))
PUBLIC_BASE = int(IPv4Address("198.18.1.0"))
DEV = "flannel.1"


def peer(x: int) -> tuple[IPv4Network, IPv4Address, str, IPv4Address]:
    """(pod subnet, VTEP address, VTEP MAC, public address) of peer ``x``."""
    net = POD_BASE + (x << 8)
    mac = f"0a:58:{(x >> 16) & 0xFF:02x}:{(x >> 8) & 0xFF:02x}:{x & 0xFF:02x}:01"
    return IPv4Network((net, 24)), IPv4Address(net), mac, IPv4Address(PUBLIC_BASE + x)


def make_namespace() -> NetNS:
    ns = new_netns()
    try:
        ns.ip(
            "link",
            "add",
            DEV,
            "address",
            "0a:58:ff:00:00:01",
            "mtu",
            "1450",
            "type",
            "vxlan",
            "id",
            "1",
            "dev",
            "eth0",
            "local",
            "198.18.0.1",
            "nolearning",
            "dstport",
            "8472",
        )
        ns.ip("link", "set", DEV, "up")
    except BaseException:
        ns.delete()
        raise
    return ns


def run_ours(ns: NetNS, n: int) -> float:
    """Time opening the socket and ``apply``; building the op list is excluded, as writing the batch
    files is for iproute2 (the daemon already holds its leases as objects)."""
    link_index = ns.ifindex(DEV)
    ops: list[Op] = []
    for x in range(n):
        net, vtep, mac, public = peer(x)
        ops.append(NeighReplace(link_index, vtep, mac))
        ops.append(FdbReplace(link_index, mac, public))
        ops.append(RouteReplace(net, vtep, link_index, onlink=True))
    start = time.perf_counter()
    with Netlink(ns.name) as nl:
        results = nl.apply(ops)
    elapsed = time.perf_counter() - start
    failed = [r for r in results if r is not None]
    if failed:
        raise SystemExit(f"{len(failed)} operations failed, first: {failed[0]}")
    return elapsed


def run_backend(ns: NetNS, n: int) -> float:
    """The whole vxlan backend path: a snapshot of N leases through the lease tracker and
    ``VXLANNetwork.handle_events`` (entry computation, diffing, batching, one INFO log line per change,
    written to a file). The leases are already decoded, as the subnet manager hands them over."""
    link_index = ns.ifindex(DEV)
    cluster = IPv4Network("10.0.0.0/8")
    own = Lease(IPv4Network("10.63.255.0/24"), attrs=LeaseAttrs(public_ip=IPv4Address("198.18.0.1")))
    leases = []
    for x in range(n):
        net, _, mac, public = peer(x)
        data = f'{{"VNI":1,"VtepMAC":"{mac}"}}'
        leases.append(Lease(net, attrs=LeaseAttrs(public_ip=public, backend_type="vxlan", backend_data=data)))
    with tempfile.NamedTemporaryFile("w", suffix=".log") as logf:
        handler = logging.FileHandler(logf.name)
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            start = time.perf_counter()
            with Netlink(ns.name) as nl:
                plane = VXLANPlane(nl=nl, family=socket.AF_INET, dev_name=DEV, cluster=cluster,
                                   own_subnet=own.subnet, dev_index=link_index)  # type: ignore[arg-type]
                spec = VXLANDeviceSpec(DEV, 1, 0, None, 0, False, False, 1450)
                network = VXLANNetwork(nl, own, 1450, [_Device(spec, plane)], NetworkConfig(network=cluster), 10)
                network.handle_events(network.tracker.apply(WatchResult(snapshot=tuple(leases))))
            elapsed = time.perf_counter() - start
        finally:
            root.removeHandler(handler)
            handler.close()
        with open(logf.name) as f:
            logged = sum(1 for _ in f)
    if logged != 3 * n:
        raise SystemExit(f"expected {3 * n} log lines, got {logged}")
    return elapsed


def run_ip(ns: NetNS, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        ip_file, bridge_file = os.path.join(tmp, "ip.batch"), os.path.join(tmp, "bridge.batch")
        with open(ip_file, "w") as ipf, open(bridge_file, "w") as brf:
            for x in range(n):
                net, vtep, mac, public = peer(x)
                ipf.write(f"neigh replace {vtep} lladdr {mac} dev {DEV} nud permanent\n")
                ipf.write(f"route replace {net} via {vtep} dev {DEV} onlink\n")
                brf.write(f"fdb replace {mac} dev {DEV} dst {public} self permanent\n")
        start = time.perf_counter()
        subprocess.run(["ip", "-n", ns.name, "-batch", ip_file], check=True)
        subprocess.run(["bridge", "-n", ns.name, "-batch", bridge_file], check=True)
        return time.perf_counter() - start


def verify(ns: NetNS, n: int) -> None:
    """Both tools must leave the same number of entries behind; count them with iproute2 itself."""
    routes = ns.ip("route", "show", "dev", DEV).stdout.count("onlink")
    neighs = ns.ip("neigh", "show", "dev", DEV).stdout.count("PERMANENT")
    fdb = ns.run(["bridge", "fdb", "show", "dev", DEV]).stdout.count(" dst ")
    if (routes, neighs, fdb) != (n, n, n):
        raise SystemExit(f"expected {n} of each, found routes={routes} neigh={neighs} fdb={fdb}")


def measure(fn: Callable[[NetNS, int], float], n: int) -> float:
    ns = make_namespace()
    try:
        elapsed = fn(ns, n)
        verify(ns, n)
        return elapsed
    finally:
        ns.delete()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (creates network namespaces)", file=sys.stderr)
        return 2
    print(f"command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, {args.repeat} runs each, median seconds\n")
    rows = []
    for n in args.sizes:
        ours, backend, ip = [], [], []
        for _ in range(args.repeat):  # interleaved so that machine noise hits all alike
            ours.append(measure(run_ours, n))
            backend.append(measure(run_backend, n))
            ip.append(measure(run_ip, n))
        rows.append((n, statistics.median(ours), statistics.median(backend), statistics.median(ip)))
    print("| peers | kernel ops | Netlink.apply (s) | vxlan backend, leases → kernel (s) | ip + bridge -batch (s) "
          "| apply/ip | backend/ip |")
    print("|------:|-----------:|------------------:|-----------------------------------:|-----------------------:"
          "|---------:|-----------:|")
    for n, o, b, i in rows:
        print(f"| {n} | {3 * n} | {o:.3f} | {b:.3f} | {i:.3f} | {o / i:.2f} | {b / i:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
