"""A bad or hostile lease record written by hand into etcd never takes a working peer down (issue 15, item 3).

Both attacks were seen in a real cluster: a record ``<peer>-25`` inside a live peer's /24 replaced that peer's
neighbour entry (48 of 49 pings between two real pods lost), and a record copying a node's VtepMAC with another
public IP redirected that node's traffic (4 of 6 pod pairs failed). Here real pods, attached by the CNI plugin,
ping each other continuously while the record is written; not one packet may be lost, and the kernel entries
for the real peer must read back unchanged.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, Host, eventually, in_ns, subnet_of
from tests.e2e.conftest import _cluster

pytestmark = [pytest.mark.e2e, pytest.mark.root]

RECONCILE = "--reconcile-interval=2"
PINGS = 50
"""Packets per continuous run, one per 0.1 s: the record is written and handled well inside the run."""
HOSTILE_MAC = "0a:58:de:ad:be:ef"
NOWHERE = "198.18.0.99"
"""A public IP on the underlay that nobody holds: traffic sent there is lost."""


def start_ping(c: Cluster, src: Host, dst: Host) -> subprocess.Popen[str]:
    """A continuous ping from ``src``'s first pod to ``dst``'s, started once the path answers."""
    assert eventually(lambda: c.ping(c.pod_ns(src, 1), dst.pods[0]), timeout=20)
    return subprocess.Popen(["ip", "netns", "exec", c.pod_ns(src, 1), "ping", "-n", "-i", "0.1", "-W", "1",
                             "-c", str(PINGS), dst.pods[0]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish_ping(proc: subprocess.Popen[str]) -> tuple[int, int]:
    """``(sent, received)`` of a ping run started by ``start_ping``."""
    out, _ = proc.communicate(timeout=PINGS * 0.1 + 20)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def write_while_pinging(c: Cluster, pairs: list[tuple[Host, Host]], key: str, value: str,
                        watchers: list[Host]) -> list[tuple[int, int]]:
    """Write the record during continuous pings between ``pairs``; wait until every watcher has skipped it."""
    procs = [start_ping(c, src, dst) for src, dst in pairs]
    c.etcdctl("put", f"/coreos.com/network/subnets/{key}", value)
    try:
        for h in watchers:
            seen = eventually(lambda h=h: f"skipping lease {key}" in h.log_file.read_text(), timeout=5)
            assert seen, h.log_file.read_text()[-2000:]
        assert all(p.poll() is None for p in procs), "the record must be handled while the pings still run"
    finally:
        results = [finish_ping(p) for p in procs]
    return results


def kernel_entries(h: Host, dev: str = "flannel.1") -> tuple[str, str, str]:
    """The neighbour, FDB and route tables of ``dev``, as the kernel reads them back."""
    return (in_ns(h.ns, "ip", "neigh", "show", "dev", dev).stdout,
            in_ns(h.ns, "bridge", "fdb", "show", "dev", dev).stdout,
            in_ns(h.ns, "ip", "route", "show", "dev", dev).stdout)


def vtep_mac(c: Cluster, h: Host) -> str:
    return str(json.loads(c.leases()[subnet_of(h).replace("/", "-")])["BackendData"]["VtepMAC"])


def free_subnet(c: Cluster) -> str:
    used = {subnet_of(h) for h in c.hosts.values()}
    return next(f"10.244.{i}.0/24" for i in range(200, 255) if f"10.244.{i}.0/24" not in used)


@pytest.fixture(scope="module")
def vxlan_hosts(cluster: Cluster) -> Cluster:
    for n in (1, 2, 3):
        cluster.start_flanneld(cluster.add_host(n), RECONCILE)
    for host in cluster.hosts.values():
        cluster.wait_ready(host)
        cluster.add_pod(host)
    assert eventually(lambda: all(cluster.matrix().values()), timeout=20), cluster.matrix()
    return cluster


def test_a_record_inside_a_peers_subnet_loses_no_packet_and_changes_no_entry(vxlan_hosts: Cluster) -> None:
    c = vxlan_hosts
    h1, h2, h3 = c.hosts[1], c.hosts[2], c.hosts[3]
    before = {h.n: kernel_entries(h) for h in (h1, h3)}
    key = subnet_of(h2).replace("/24", "-25")  # e.g. 10.244.84.0-25: shares its first address with h2's /24
    value = json.dumps({"PublicIP": NOWHERE, "PublicIPv6": None, "BackendType": "vxlan",
                        "BackendData": {"VNI": 1, "VtepMAC": HOSTILE_MAC}}, separators=(",", ":"))
    results = write_while_pinging(c, [(h1, h2), (h3, h2)], key, value, [h1, h2, h3])
    assert results == [(PINGS, PINGS)] * 2, results
    for h in (h1, h3):
        assert kernel_entries(h) == before[h.n]
        assert HOSTILE_MAC not in kernel_entries(h)[0] + kernel_entries(h)[1]
        assert f"{subnet_of(h2)} of lease {subnet_of(h2).replace('/', '-')}" in h.log_file.read_text()
    c.etcdctl("del", f"/coreos.com/network/subnets/{key}")
    assert eventually(lambda: f"skipped lease {key} was removed" in h1.log_file.read_text(), timeout=10)
    assert all(c.matrix().values())


def test_a_record_copying_a_peers_vtep_mac_does_not_redirect_its_traffic(vxlan_hosts: Cluster) -> None:
    c = vxlan_hosts
    h1, h2, h3 = c.hosts[1], c.hosts[2], c.hosts[3]
    mac2 = vtep_mac(c, h2)
    before = {h.n: kernel_entries(h) for h in (h1, h3)}
    key = free_subnet(c).replace("/", "-")
    value = json.dumps({"PublicIP": h3.ip, "PublicIPv6": None, "BackendType": "vxlan",
                        "BackendData": {"VNI": 1, "VtepMAC": mac2}}, separators=(",", ":"))
    results = write_while_pinging(c, [(h1, h2), (h3, h2), (h2, h1)], key, value, [h1, h3])
    assert results == [(PINGS, PINGS)] * 3, results
    for h in (h1, h3):
        assert kernel_entries(h) == before[h.n]
        assert f"{mac2} dst {h2.ip} self permanent" in kernel_entries(h)[1]
        assert f"{mac2} dst {h3.ip}" not in kernel_entries(h)[1]
    assert all(c.matrix().values()), c.matrix()
    c.etcdctl("del", f"/coreos.com/network/subnets/{key}")
    assert eventually(lambda: f"skipped lease {key} was removed" in h1.log_file.read_text(), timeout=10)


@pytest.fixture(scope="module")
def hostgw_hosts() -> Iterator[Cluster]:
    for c in _cluster(backend='{"Type":"host-gw"}'):
        for n in (1, 2):
            c.start_flanneld(c.add_host(n), RECONCILE)
        for host in c.hosts.values():
            c.wait_ready(host)
            c.add_pod(host)
        yield c


def test_host_gw_a_record_inside_a_peers_subnet_loses_no_packet(hostgw_hosts: Cluster) -> None:
    c = hostgw_hosts
    h1, h2 = c.hosts[1], c.hosts[2]
    before = in_ns(h1.ns, "ip", "route", "show").stdout
    key = subnet_of(h2).replace("/24", "-25")
    value = json.dumps({"PublicIP": NOWHERE, "PublicIPv6": None, "BackendType": "host-gw"}, separators=(",", ":"))
    results = write_while_pinging(c, [(h1, h2), (h2, h1)], key, value, [h1, h2])
    assert results == [(PINGS, PINGS)] * 2, results
    assert in_ns(h1.ns, "ip", "route", "show").stdout == before
    assert NOWHERE not in before
