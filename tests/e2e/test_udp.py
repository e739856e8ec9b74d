"""Three simulated hosts with the udp backend: TUN ``flannel0`` and the forwarder on port 8285.

Hosts 1 and 2 run flanneld and exchange super-packets (the offload format). Host 3 runs
``tests/udp_plain_peer.py`` instead: a minimal forwarder that speaks only upstream's plain format, with a lease
in upstream's JSON written to etcd by the test, standing in for a Go node. Every pair that includes host 3
proves that a plain peer and an offload node interoperate. The tests of this module share one cluster and run
in order; each leaves it working, except the last, in which a host leaves for good.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster, Host, eventually, in_ns, subnet_of
from tests.e2e.conftest import _cluster

pytestmark = [pytest.mark.e2e, pytest.mark.root]

RECONCILE = "--reconcile-interval=2"
PLAIN_PEER = str(Path(__file__).resolve().parents[1] / "udp_plain_peer.py")
PLAIN_SUBNET = "10.244.200.0/24"


@pytest.fixture(scope="module")
def three_hosts() -> Iterator[Cluster]:
    for c in _cluster(backend='{"Type":"udp"}'):
        h3 = c.add_host(3)  # before the others start, so that they find its lease in their first snapshot
        c.etcdctl("put", f"/coreos.com/network/subnets/{PLAIN_SUBNET.replace('/', '-')}",
                  json.dumps({"PublicIP": h3.ip, "PublicIPv6": None}, separators=(",", ":")))
        for n in (1, 2):
            host = c.add_host(n)
            c.start_flanneld(host, RECONCILE)
            c.wait_ready(host)
        peers = [f"{subnet_of(c.hosts[n])}={c.hosts[n].ip}" for n in (1, 2)]
        plain = start_plain_peer(h3, peers)
        try:
            yield c
        finally:
            plain.send_signal(signal.SIGTERM)
            try:
                plain.wait(5)
            except subprocess.TimeoutExpired:
                plain.kill()
                plain.wait(5)
            if plain.stdout is not None:
                plain.stdout.close()


def start_plain_peer(h3: Host, peers: list[str]) -> subprocess.Popen[str]:
    """Run the plain peer in h3 and write the subnet.env the CNI plugin reads there, as flanneld would."""
    h3.subnet_file.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.200.1/24\n"
                              "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")
    proc = subprocess.Popen(["ip", "netns", "exec", h3.ns, sys.executable, PLAIN_PEER, PLAIN_SUBNET, h3.ip, "8285",
                             "10.244.0.0/16", *peers], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_leases_are_upstreams_plus_the_offload_advert(three_hosts: Cluster) -> None:
    c = three_hosts
    for host in (c.hosts[1], c.hosts[2]):
        value = json.loads(c.leases()[subnet_of(host).replace("/", "-")])
        assert value["PublicIP"] == host.ip and "BackendType" not in value
        assert value["BackendData"] == {"Offload": 1}
        assert host.env()["FLANNEL_MTU"] == "1472"


def test_tun_device_address_mtu_and_route(three_hosts: Cluster) -> None:
    c = three_hosts
    h1 = c.hosts[1]
    sub = subnet_of(h1)
    link = in_ns(h1.ns, "ip", "-d", "link", "show", "flannel0").stdout
    assert "mtu 1472" in link and "tun" in link
    addr = in_ns(h1.ns, "ip", "-4", "addr", "show", "dev", "flannel0").stdout
    assert f"inet {sub.split('/')[0]}/32" in addr
    assert "10.244.0.0/16 dev flannel0" in in_ns(h1.ns, "ip", "route", "show", "10.244.0.0/16").stdout


def test_every_pod_pings_every_other_pod_across_hosts(three_hosts: Cluster) -> None:
    c = three_hosts
    for host in c.hosts.values():
        c.add_pod(host)
    assert eventually(lambda: all(c.matrix().values()), timeout=20), c.matrix()


def test_large_tcp_transfer_crosses_offload_and_plain_pairs(three_hosts: Cluster) -> None:
    """A few MiB over TCP pod to pod: super-packets between offload nodes, segments towards the plain one."""
    c = three_hosts
    for src, dst in ((1, 2), (1, 3), (3, 2)):
        server_ns, client_ns = c.pod_ns(c.hosts[dst], 1), c.pod_ns(c.hosts[src], 1)
        server_ip = pod_ip(c, dst)
        assert transfer(server_ns, server_ip, client_ns, 4 << 20) == 4 << 20, (src, dst)


def test_route_deleted_by_hand_is_restored_by_reconcile(three_hosts: Cluster) -> None:
    c = three_hosts
    h1 = c.hosts[1]
    in_ns(h1.ns, "ip", "route", "del", "10.244.0.0/16", "dev", "flannel0")
    assert eventually(lambda: "flannel0" in in_ns(h1.ns, "ip", "route", "show", "10.244.0.0/16").stdout,
                      timeout=15)
    assert eventually(lambda: c.ping(c.pod_ns(h1, 1), pod_ip(c, 2)), timeout=10)


def test_deleted_tun_device_is_recreated(three_hosts: Cluster) -> None:
    c = three_hosts
    h1 = c.hosts[1]
    in_ns(h1.ns, "ip", "link", "del", "flannel0")
    assert eventually(lambda: in_ns(h1.ns, "ip", "link", "show", "flannel0", check=False).returncode == 0,
                      timeout=15)
    assert eventually(lambda: c.ping(c.pod_ns(h1, 1), pod_ip(c, 2)), timeout=15)
    assert "TUN device flannel0" in h1.log_file.read_text()


def test_tun_device_set_down_is_brought_back_up_and_forwards_again(three_hosts: Cluster) -> None:
    """A down TUN refuses writes with EIO; that must not stop the forwarder reading it once it is up again."""
    c = three_hosts
    h1 = c.hosts[1]
    in_ns(h1.ns, "ip", "link", "set", "flannel0", "down")
    c.ping(c.pod_ns(c.hosts[2], 1), pod_ip(c, 1))  # a datagram for h1 arrives while flannel0 is down
    assert eventually(lambda: "UP" in in_ns(h1.ns, "ip", "link", "show", "flannel0").stdout.split(">")[0],
                      timeout=15)
    assert eventually(lambda: c.ping(c.pod_ns(h1, 1), pod_ip(c, 2)), timeout=15)
    assert eventually(lambda: c.ping(c.pod_ns(c.hosts[2], 1), pod_ip(c, 1)), timeout=15)


def test_datagram_from_unknown_source_is_dropped(three_hosts: Cluster) -> None:
    """A packet for h1's pod, sent to h1:8285 from an address that is no lease's public IP, never arrives; the
    same bytes sent from a peer host's address do (the control that shows the drop is the filter's doing)."""
    c = three_hosts
    h1, h2 = c.hosts[1], c.hosts[2]
    outsider = c._add_ns(f"{c.prefix}x")  # a host on the underlay without flanneld or a lease
    c._plug(outsider, "eth0", "198.18.0.99/24")
    assert inject(c, outsider, h1) == "nothing"
    assert inject(c, h2.ns, h1) == "hello"


def test_host_leaving_is_removed_from_the_others_peer_tables(three_hosts: Cluster) -> None:
    c = three_hosts
    h1 = c.hosts[1]
    pod3 = pod_ip(c, 3)
    c.etcdctl("del", f"/coreos.com/network/subnets/{PLAIN_SUBNET.replace('/', '-')}")
    assert eventually(lambda: f"udp peer del {PLAIN_SUBNET}" in h1.log_file.read_text(), timeout=15)
    assert not c.ping(c.pod_ns(h1, 1), pod3)


# -- helpers ---------------------------------------------------------------------------------------------

RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
s.settimeout(3)
try:
    print(s.recv(100).decode())
except TimeoutError:
    print("nothing")
"""

SINK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); s.settimeout(20)
c, _ = s.accept(); c.settimeout(20); total = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    total += len(b)
print(total)
"""


def inject(c: Cluster, sender_ns: str, target: Host) -> str:
    """Send a UDP packet for the target's pod, wrapped as a plain datagram to target:8285, from ``sender_ns``;
    return what a receiver in the pod got ("nothing" after 3 s)."""
    pod = pod_ip(c, target.n)
    receiver = subprocess.Popen(["ip", "netns", "exec", c.pod_ns(target, 1), "python3", "-c", RECEIVER, pod],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert eventually(lambda: bool(in_ns(c.pod_ns(target, 1), "ss", "-Hlun", "sport = :9999").stdout.strip()),
                          timeout=10)
        packet = udp_packet(src="10.244.250.1", dst=pod, dport=9999, payload=b"hello")
        script = ("import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                  f"[s.sendto(bytes.fromhex({packet.hex()!r}), ('{target.ip}', 8285)) for _ in range(3)]")
        in_ns(sender_ns, "python3", "-c", script)
        out, _ = receiver.communicate(timeout=10)
        return out.strip()
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait(5)


def pod_ip(c: Cluster, n: int) -> str:
    out = in_ns(c.pod_ns(c.hosts[n], 1), "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    return out.split("inet ")[1].split("/")[0]


def transfer(server_ns: str, server_ip: str, client_ns: str, size: int) -> int:
    """Bytes a TCP sink in ``server_ns`` received when ``client_ns`` sent ``size`` bytes to it."""
    sink = subprocess.Popen(["ip", "netns", "exec", server_ns, "python3", "-c", SINK, server_ip],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert eventually(lambda: bool(in_ns(server_ns, "ss", "-Hltn", "sport = :5001").stdout.strip()), timeout=10)
        send = f"import socket; s=socket.create_connection(('{server_ip}', 5001), 20); " \
               f"s.sendall(bytes({size})); s.close()"
        in_ns(client_ns, "python3", "-c", send, timeout=30)
        out, _ = sink.communicate(timeout=30)
        return int(out.strip())
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait(5)


def udp_packet(src: str, dst: str, dport: int, payload: bytes) -> bytes:
    """A well-formed IPv4/UDP packet (UDP checksum 0: none), TTL 64."""
    total = 28 + len(payload)
    header = bytearray(b"\x45\x00" + total.to_bytes(2, "big") + b"\x00\x00\x00\x00\x40\x11\x00\x00"
                       + socket.inet_aton(src) + socket.inet_aton(dst))
    s = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, 20, 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    header[10:12] = (~s & 0xFFFF).to_bytes(2, "big")
    return bytes(header) + (40000).to_bytes(2, "big") + dport.to_bytes(2, "big") + \
        (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload
