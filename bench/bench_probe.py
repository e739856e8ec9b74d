"""Overlay probe round time (``flannel.probe.probe_all``) for N peers that answer and N that never do.

Runs in a namespace of its own, made and removed here (nothing touches the root namespace): "answering" peers
are loopback addresses 127.0.i.1 (lo's MTU is 65536, so each search's first echo is a 64 KiB packet: harder
than any overlay), "silent" peers are 10.99.i.1, routed through a veth to a gateway with a permanent
neighbour entry that no one holds, so every echo leaves and nothing comes back. Target: a round over 100 peers
in seconds (the timeout bounds the silent ones: 3 echoes of 1 s each, 64 peers at a time).

Usage (root): .venv/bin/python bench/bench_probe.py [--peers 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from ipaddress import IPv4Address

from flannel import probe

SETUP = ("ip link set lo up; ip link add v0 type veth peer name v1; ip link set v0 up; ip link set v1 up; "
         "ip addr add 10.98.0.1/24 dev v0; ip neigh add 10.98.0.2 lladdr 02:00:00:00:00:02 dev v0 nud permanent; "
         "ip route add 10.99.0.0/16 via 10.98.0.2 dev v0")


async def rounds(peers: int) -> None:
    for name, pattern in (("answering", "127.0.{}.1"), ("silent", "10.99.{}.1")):
        targets = [probe.Target(str(i), IPv4Address(pattern.format(i))) for i in range(peers)]
        start = time.monotonic()
        results = await probe.probe_all(targets)
        took = time.monotonic() - start
        print(f"{name:9} {peers} peers: {took:.2f} s, {sum(r.reachable for r in results)} reachable")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        asyncio.run(rounds(args.peers))
        return 0
    ns = f"flprobebench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-ec", SETUP], check=True)
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inside",
                               f"--peers={args.peers}"], check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    sys.exit(main())
