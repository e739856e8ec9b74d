"""End to end: ``--ip-masq`` on a two-host VXLAN cluster of namespaces, with an "outside" host beyond it.

A pod reaching 203.0.113.1 must arrive there with its host's underlay address as source (the outside host has
no route back to the pod network, so only a masqueraded connection is even answered), while pod-to-pod traffic
across hosts keeps the sending pod's address. A tiny TCP server in the receiving namespace answers every
connection with the peer address it saw; it is started and stopped by PID.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, Host, eventually, in_ns

pytestmark = [pytest.mark.e2e, pytest.mark.root]

PORT = 8080
SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode())
    c.close()
"""
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(c.recv(100).decode())
"""


class PeerServer:
    """The peer-reporting server, running in one namespace until ``stop``."""

    def __init__(self, ns: str) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, str(PORT)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError(f"peer server in {ns} did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def seen_as(src_ns: str, dst_ip: str) -> str | None:
    """The source address that a connection from ``src_ns`` to ``dst_ip`` arrived with; None if it failed."""
    r = in_ns(src_ns, sys.executable, "-c", CLIENT, dst_ip, str(PORT), check=False, timeout=10)
    return r.stdout.strip() if r.returncode == 0 else None


def nat_rules(host: Host) -> list[str]:
    return in_ns(host.ns, "iptables", "-w", "-t", "nat", "-S").stdout.splitlines()


@pytest.fixture(scope="module")
def masq_cluster(cluster: Cluster) -> Iterator[tuple[Cluster, Host, Host, str]]:
    h1, h2 = cluster.add_host(1), cluster.add_host(2)
    outside = cluster.add_outside(h1, h2)
    for h in (h1, h2):
        cluster.start_flanneld(h, "--ip-masq", "--iptables-resync=1")
    for h in (h1, h2):
        assert cluster.wait_ready(h)["FLANNEL_IPMASQ"] == "true"
    cluster.add_pod(h1)
    cluster.add_pod(h2)
    assert eventually(lambda: cluster.ping(cluster.pod_ns(h1, 1), h2.pods[0]), timeout=30), \
        "pods on the two hosts never reached each other"
    yield cluster, h1, h2, outside


def test_a_pod_reaches_the_outside_with_its_hosts_underlay_address(
        masq_cluster: tuple[Cluster, Host, Host, str]) -> None:
    cluster, h1, _, outside = masq_cluster
    server = PeerServer(outside)
    try:
        assert seen_as(cluster.pod_ns(h1, 1), Cluster.OUTSIDE_IP) == h1.ip
    finally:
        server.stop()


def test_pod_to_pod_across_hosts_is_not_masqueraded(masq_cluster: tuple[Cluster, Host, Host, str]) -> None:
    cluster, h1, h2, _ = masq_cluster
    server = PeerServer(cluster.pod_ns(h2, 1))
    try:
        assert seen_as(cluster.pod_ns(h1, 1), h2.pods[0]) == h1.pods[0]
    finally:
        server.stop()


def test_rules_survive_restarts_with_one_jump_and_are_repaired(
        masq_cluster: tuple[Cluster, Host, Host, str]) -> None:
    cluster, h1, _, outside = masq_cluster
    for _ in range(2):  # with the first start: three starts in all
        cluster.stop_flanneld(h1)
        assert "-N FLANNEL-POSTRTG" in nat_rules(h1)  # no teardown on exit
        cluster.start_flanneld(h1, "--ip-masq", "--iptables-resync=1")
        cluster.wait_ready(h1)
    rules = nat_rules(h1)
    assert sum(line.endswith("-j FLANNEL-POSTRTG") for line in rules) == 1
    forward = in_ns(h1.ns, "iptables", "-w", "-S", "FORWARD").stdout.splitlines()
    assert sum(line.endswith("-j FLANNEL-FWD") for line in forward) == 1

    in_ns(h1.ns, "iptables", "-w", "-t", "nat", "-F", "FLANNEL-POSTRTG")  # an operator's mistake
    assert eventually(lambda: nat_rules(h1) == rules, timeout=30), "the flushed chain was not restored"
    assert "Some iptables rules were missing or changed; repaired" in h1.log_file.read_text()
    server = PeerServer(outside)
    try:
        assert seen_as(cluster.pod_ns(h1, 1), Cluster.OUTSIDE_IP) == h1.ip
    finally:
        server.stop()


def test_switching_a_host_to_nftables_mode_replaces_its_iptables_rules(
        masq_cluster: tuple[Cluster, Host, Host, str]) -> None:
    cluster, h1, h2, outside = masq_cluster
    cluster.put_config(f'{{"Network":"{cluster.network}","EnableNFTables":true,"Backend":{cluster.backend}}}')
    cluster.stop_flanneld(h1)
    cluster.start_flanneld(h1, "--ip-masq", "--iptables-resync=1")
    cluster.wait_ready(h1)
    ipt = in_ns(h1.ns, "iptables-save").stdout
    assert "FLANNEL" not in ipt and "flanneld" not in ipt  # chains and jumps, nat and filter
    tables = in_ns(h1.ns, "nft", "list", "tables").stdout.split("\n")
    assert "table ip flannel-ipv4" in tables and "table ip6 flannel-ipv6" in tables
    server = PeerServer(outside)
    try:
        assert seen_as(cluster.pod_ns(h1, 1), Cluster.OUTSIDE_IP) == h1.ip
    finally:
        server.stop()
    server = PeerServer(cluster.pod_ns(h2, 1))
    try:
        assert seen_as(cluster.pod_ns(h1, 1), h2.pods[0]) == h1.pods[0]
    finally:
        server.stop()
