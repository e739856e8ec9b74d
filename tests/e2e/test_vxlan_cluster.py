"""Three simulated hosts running flanneld with the vxlan backend: pods reach each other across hosts.

The tests of this module share one cluster and run in order; each leaves it in a working state.
"""

from __future__ import annotations

import json
import signal
from ipaddress import ip_address

import pytest

from tests.e2e.cluster import Cluster, Host, eventually, in_ns, sh, subnet_of

pytestmark = [pytest.mark.e2e, pytest.mark.root]

RECONCILE = "--reconcile-interval=2"






@pytest.fixture(scope="module")
def three_hosts(cluster: Cluster) -> Cluster:
    for n in (1, 2, 3):
        host = cluster.add_host(n)
        cluster.start_flanneld(host, RECONCILE)
    for host in cluster.hosts.values():
        cluster.wait_ready(host)
        cluster.add_pod(host)
    return cluster


def all_reachable(cluster: Cluster) -> bool:
    return all(cluster.matrix().values())


def logged(host: Host, text: str, times: int = 1) -> bool:
    """``text`` is in the host's flanneld log at least ``times`` times (twice: the error was retried)."""
    return host.log_file.read_text().count(text) >= times


def test_every_pod_pings_every_other_pod_across_hosts(three_hosts: Cluster) -> None:
    c = three_hosts
    assert eventually(lambda: all_reachable(c), timeout=20), c.matrix()
    subnets = {subnet_of(h) for h in c.hosts.values()}
    assert len(subnets) == 3


def test_leases_in_etcd_are_upstream_vxlan_json(three_hosts: Cluster) -> None:
    leases = three_hosts.leases()
    assert len(leases) == 3
    for key, value in leases.items():
        attrs = json.loads(value)
        assert list(attrs) == ["PublicIP", "PublicIPv6", "BackendType", "BackendData"], value
        assert attrs["BackendType"] == "vxlan" and attrs["PublicIPv6"] is None
        assert list(attrs["BackendData"]) == ["VNI", "VtepMAC"] and attrs["BackendData"]["VNI"] == 1
        assert value == json.dumps(attrs, separators=(",", ":")), "must be Go's compact encoding"
        assert key.endswith("-24")


def test_subnet_env_has_upstream_format(three_hosts: Cluster) -> None:
    host = three_hosts.hosts[1]
    lines = host.subnet_file.read_text().splitlines()
    assert [line.split("=")[0] for line in lines] == [
        "FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"]
    assert lines[0] == "FLANNEL_NETWORK=10.244.0.0/16"
    assert lines[2] == "FLANNEL_MTU=1450" and lines[3] == "FLANNEL_IPMASQ=false"


def test_kernel_entries_match_upstream_layout(three_hosts: Cluster) -> None:
    c = three_hosts
    h1, h2 = c.hosts[1], c.hosts[2]
    sub2 = subnet_of(h2)
    route = in_ns(h1.ns, "ip", "route", "show", sub2).stdout
    gw = sub2.split("/")[0]  # through a nexthop object (Backend.NexthopObjects), otherwise as upstream's
    assert f"{sub2} nhid {int(ip_address(gw))} via {gw} dev flannel.1 onlink" in route
    mac2 = json.loads(c.leases()[sub2.replace("/", "-")])["BackendData"]["VtepMAC"]
    neigh = in_ns(h1.ns, "ip", "neigh", "show", "dev", "flannel.1").stdout
    assert f"{sub2.split('/')[0]} lladdr {mac2} PERMANENT" in neigh
    fdb = in_ns(h1.ns, "bridge", "fdb", "show", "dev", "flannel.1").stdout
    assert f"{mac2} dst {h2.ip} self permanent" in fdb
    link = in_ns(h1.ns, "ip", "-d", "link", "show", "flannel.1").stdout
    assert "vxlan id 1" in link and "mtu 1450" in link and "nolearning" in link
    addr = in_ns(h1.ns, "ip", "-4", "addr", "show", "dev", "flannel.1").stdout
    assert f"inet {subnet_of(h1).split('/')[0]}/32" in addr


def test_pods_are_attached_by_the_cni_plugin_with_flannels_mtu_and_subnet(three_hosts: Cluster) -> None:
    c = three_hosts
    h2 = c.hosts[2]
    ip = c.add_pod(h2)  # a second pod on h2, through `flannel` → bridge + host-local
    m = len(h2.pods)
    ns = c.pod_ns(h2, m)
    assert ip.startswith(subnet_of(h2).rsplit(".", 1)[0] + ".")
    assert "mtu 1450" in in_ns(ns, "ip", "link", "show", "eth0").stdout
    assert eventually(lambda: all(c.ping(ns, other) for h in c.hosts.values() for other in h.pods if other != ip))
    reservations = h2.workdir / "ipam" / "cbr0" / ip
    assert reservations.exists()
    c.del_pod(h2, m)
    assert not reservations.exists(), "CNI DEL must release the pod's address"
    c.del_pod(h2, m)  # a second DEL succeeds too
    h2.pods.pop()
    c.namespaces.remove(ns)
    sh("ip", "netns", "del", ns)


def test_route_deleted_by_hand_is_restored_by_reconcile(three_hosts: Cluster) -> None:
    c = three_hosts
    h1, h3 = c.hosts[1], c.hosts[3]
    sub3 = subnet_of(h3)
    in_ns(h1.ns, "ip", "route", "del", sub3)
    in_ns(h1.ns, "ip", "neigh", "del", sub3.split("/")[0], "dev", "flannel.1")
    assert eventually(lambda: sub3 in c.routes(h1), timeout=10)
    assert eventually(lambda: all_reachable(c))
    assert "repair" in h1.log_file.read_text()


def test_deleted_vxlan_device_is_recreated_with_its_entries(three_hosts: Cluster) -> None:
    c = three_hosts
    h2 = c.hosts[2]
    mac_before = in_ns(h2.ns, "cat", "/sys/class/net/flannel.1/address").stdout.strip()
    in_ns(h2.ns, "ip", "link", "del", "flannel.1")
    assert eventually(lambda: in_ns(h2.ns, "ip", "link", "show", "flannel.1", check=False).returncode == 0)
    assert in_ns(h2.ns, "cat", "/sys/class/net/flannel.1/address").stdout.strip() == mac_before
    assert eventually(lambda: all_reachable(c), timeout=20), c.matrix()


def test_malformed_lease_from_someone_else_is_skipped(three_hosts: Cluster) -> None:
    c = three_hosts
    c.etcdctl("put", "/coreos.com/network/subnets/10.244.250.0-24", "this is not json")
    c.etcdctl("put", "/coreos.com/network/subnets/10.244.251.0-24",
              '{"PublicIP":"198.18.0.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1}}')
    for h in c.hosts.values():  # both were seen, and skipped, by every host
        assert eventually(lambda h=h: logged(h, "10.244.250.0-24") and logged(h, "10.244.251.0-24")), \
            h.log_file.read_text()[-2000:]
    assert all_reachable(c), c.matrix()
    for h in c.hosts.values():
        assert h.proc is not None and h.proc.poll() is None
    c.etcdctl("del", "/coreos.com/network/subnets/10.244.250.0-24")
    c.etcdctl("del", "/coreos.com/network/subnets/10.244.251.0-24")


def test_data_plane_survives_etcd_outage(three_hosts: Cluster) -> None:
    c = three_hosts
    assert c.etcd is not None
    h1, h2 = c.hosts[1], c.hosts[2]
    sub2 = subnet_of(h2)
    c.etcd.send_signal(signal.SIGSTOP)
    try:
        assert c.etcdctl("--dial-timeout=1s", "--command-timeout=1s", "get", "/x", check=False).returncode != 0, \
            "etcd must not answer while stopped"
        # While etcd stays away, flanneld keeps the data plane from what it knows: a route deleted by hand
        # comes back at the next reconcile (--reconcile-interval=2), without a word from etcd.
        in_ns(h1.ns, "ip", "route", "del", sub2)
        assert eventually(lambda: sub2 in c.routes(h1), timeout=15), c.routes(h1)
        assert all_reachable(c), c.matrix()
        assert all(h.proc is not None and h.proc.poll() is None for h in c.hosts.values())
    finally:
        c.etcd.send_signal(signal.SIGCONT)


def test_own_lease_deleted_while_running_is_taken_back(three_hosts: Cluster) -> None:
    c = three_hosts
    h2 = c.hosts[2]
    key = subnet_of(h2).replace("/", "-")
    before = c.leases()[key]
    c.delete_lease(h2)
    assert eventually(lambda: c.leases().get(key) == before, timeout=10), c.leases()
    assert h2.proc is not None and h2.proc.poll() is None
    assert eventually(lambda: all_reachable(c)), c.matrix()
    ttl_line = c.etcdctl("get", c.lease_key(h2), "-w", "fields").stdout
    assert '"Lease" : 0' not in ttl_line, "the re-created key must hang off an etcd lease (TTL)"


def test_sigkill_and_restart_keeps_the_same_subnet(three_hosts: Cluster) -> None:
    c = three_hosts
    h1 = c.hosts[1]
    before = h1.env()["FLANNEL_SUBNET"]
    c.stop_flanneld(h1, signal.SIGKILL)
    c.start_flanneld(h1, RECONCILE)
    assert c.wait_ready(h1)["FLANNEL_SUBNET"] == before
    assert eventually(lambda: all_reachable(c)), c.matrix()


def test_sigterm_exits_zero_and_leaves_the_data_plane(three_hosts: Cluster) -> None:
    c = three_hosts
    h1 = c.hosts[1]
    assert c.stop_flanneld(h1, signal.SIGTERM) == 0
    assert all_reachable(c), c.matrix()
    c.start_flanneld(h1, RECONCILE)
    c.wait_ready(h1)


def test_new_host_joining_becomes_reachable(three_hosts: Cluster) -> None:
    c = three_hosts
    h4 = c.add_host(4)
    c.start_flanneld(h4, RECONCILE)
    c.wait_ready(h4)
    c.add_pod(h4)
    assert eventually(lambda: all_reachable(c), timeout=20), c.matrix()


def test_host_whose_lease_is_deleted_disappears_from_others_routes(three_hosts: Cluster) -> None:
    c = three_hosts
    h4 = c.hosts[4]
    sub4 = subnet_of(h4)
    assert c.stop_flanneld(h4) == 0
    c.delete_lease(h4)
    for n in (1, 2, 3):
        assert eventually(lambda n=n: sub4 not in c.routes(c.hosts[n])), c.routes(c.hosts[n])
        fdb = in_ns(c.hosts[n].ns, "bridge", "fdb", "show", "dev", "flannel.1").stdout
        assert h4.ip not in fdb


def test_invalid_config_is_reported_and_a_fix_is_picked_up_without_restart(cluster: Cluster) -> None:
    c = cluster
    h5 = c.add_host(5)
    c.etcdctl("put", "/other/network/config", '{"Network":"10.50.0.0/16","SubnetLen":31}')
    c.start_flanneld(h5, "--etcd-prefix=/other/network")
    assert eventually(lambda: logged(h5, "SubnetLen must be less than /31", times=2)), h5.log_file.read_text()
    assert h5.proc is not None and h5.proc.poll() is None, "the invalid config is retried, not fatal"
    assert not h5.subnet_file.exists()
    assert "/other/network/config" in h5.log_file.read_text()
    c.etcdctl("put", "/other/network/config", '{"Network":"10.50.0.0/16","Backend":{"Type":"vxlan"}}')
    env = c.wait_ready(h5)
    assert env["FLANNEL_NETWORK"] == "10.50.0.0/16"
    c.stop_flanneld(h5)


def test_unreachable_etcd_at_start_is_retried_and_reported(cluster: Cluster) -> None:
    c = cluster
    h6 = c.add_host(6)
    c.start_flanneld(h6, "--etcd-endpoints=http://198.18.0.250:2379")
    assert eventually(lambda: logged(h6, "datastore unavailable", times=2), timeout=40), h6.log_file.read_text()
    assert h6.proc is not None and h6.proc.poll() is None, "flanneld must keep retrying, not exit"
    assert not h6.subnet_file.exists()
    assert "198.18.0.250:2379" in h6.log_file.read_text()
    assert c.stop_flanneld(h6) == 0


def test_invalid_backend_section_waits_for_a_fix(cluster: Cluster) -> None:
    c = cluster
    h7 = c.add_host(7)
    c.etcdctl("put", "/badbackend/network/config", '{"Network":"10.70.0.0/16","Backend":{"Type":"vxlan","VNI":"1"}}')
    c.start_flanneld(h7, "--etcd-prefix=/badbackend/network")
    assert eventually(lambda: logged(h7, "Backend.VNI must be an integer", times=2)), h7.log_file.read_text()
    assert h7.proc is not None and h7.proc.poll() is None, "the invalid backend section is retried, not fatal"
    assert "/badbackend/network/config" in h7.log_file.read_text()
    c.etcdctl("put", "/badbackend/network/config", '{"Network":"10.70.0.0/16","Backend":{"Type":"vxlan","VNI":7}}')
    assert c.wait_ready(h7)["FLANNEL_NETWORK"] == "10.70.0.0/16"
    assert in_ns(h7.ns, "ip", "link", "show", "flannel.7", check=False).returncode == 0
    assert c.stop_flanneld(h7) == 0


def test_out_of_subnets_is_reported_and_waits_for_a_free_one(cluster: Cluster) -> None:
    c = cluster
    h8 = c.add_host(8)
    # A /28 with /30 subnets holds 3 allocatable subnets (the first is skipped); reserve all three.
    c.etcdctl("put", "/tiny/network/config", '{"Network":"10.80.0.0/28","Backend":{"Type":"vxlan"}}')
    for n, sub in enumerate(("10.80.0.4-30", "10.80.0.8-30", "10.80.0.12-30")):
        c.etcdctl("put", f"/tiny/network/subnets/{sub}", f'{{"PublicIP":"198.18.1.{n + 1}","PublicIPv6":null}}')
    c.start_flanneld(h8, "--etcd-prefix=/tiny/network")
    assert eventually(lambda: logged(h8, "out of subnets in 10.80.0.4-10.80.0.12 (/30)", times=2)), \
        h8.log_file.read_text()
    assert h8.proc is not None and h8.proc.poll() is None, "a full range must not crash-loop flanneld"
    c.etcdctl("del", "/tiny/network/subnets/10.80.0.8-30")
    assert c.wait_ready(h8, timeout=40)["FLANNEL_SUBNET"] == "10.80.0.9/30"
    assert c.stop_flanneld(h8) == 0
