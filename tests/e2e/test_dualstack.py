"""Dual stack (IPv4 + IPv6) vxlan across three simulated hosts (spec §3, §5.1, §8.1, §10.2).

The underlay carries both families; the config has ``EnableIPv6`` and ``IPv6Network``; every pod has an
address of each family. The tests of this module share one cluster and run in order.
"""

from __future__ import annotations

import ipaddress
import json
import re
import signal

import pytest

from tests.e2e.cluster import Cluster, Host, eventually, in_ns, subnet_of

pytestmark = [pytest.mark.e2e, pytest.mark.root]

RECONCILE = "--reconcile-interval=2"
V6_DEV = "flannel-v6.1"
KEY_RE = re.compile(r"^10\.244\.\d{1,3}\.0-24&fd00:10:244:[0-9a-f]{1,4}::-64$")






def subnet6_of(host: Host) -> str:
    """The host's IPv6 lease subnet, e.g. ``fd00:10:244:7::/64``."""
    return str(ipaddress.IPv6Interface(host.env()["FLANNEL_IPV6_SUBNET"]).network)


def lease_key(host: Host) -> str:
    return f"{subnet_of(host).replace('/', '-')}&{subnet6_of(host).replace('/', '-')}"


def mac_of(host: Host, dev: str) -> str:
    return in_ns(host.ns, "cat", f"/sys/class/net/{dev}/address").stdout.strip()


@pytest.fixture(scope="module")
def three_hosts(dual_stack_cluster: Cluster) -> Cluster:
    c = dual_stack_cluster
    for n in (1, 2, 3):
        host = c.add_host(n)
        c.start_flanneld(host, RECONCILE)
    for host in c.hosts.values():
        env = c.wait_ready(host)
        assert "FLANNEL_IPV6_SUBNET" in env, host.subnet_file.read_text()
        c.add_pod(host)
    return c


def all_reachable(c: Cluster) -> bool:
    return all(c.matrix().values()) and all(c.matrix(v6=True).values())


def test_every_pod_pings_every_other_pod_over_ipv4_and_ipv6(three_hosts: Cluster) -> None:
    c = three_hosts
    assert eventually(lambda: all_reachable(c), timeout=20), (c.matrix(), c.matrix(v6=True))
    m4, m6 = c.matrix(), c.matrix(v6=True)
    assert len(m4) == len(m6) == 6
    assert all(":" in s and ":" in d for s, d in m6)
    assert len({subnet_of(h) for h in c.hosts.values()}) == 3
    assert len({subnet6_of(h) for h in c.hosts.values()}) == 3


def test_leases_in_etcd_are_upstream_dual_stack_vxlan_json(three_hosts: Cluster) -> None:
    c = three_hosts
    leases = c.leases()
    assert sorted(leases) == sorted(lease_key(h) for h in c.hosts.values())
    for host in c.hosts.values():
        key = lease_key(host)
        assert KEY_RE.match(key), key
        value = leases[key]
        attrs = json.loads(value)
        assert list(attrs) == ["PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data"], value
        assert value == json.dumps(attrs, separators=(",", ":")), "must be Go's compact encoding"
        assert attrs["PublicIP"] == host.ip and attrs["PublicIPv6"] == host.ip6
        assert attrs["BackendType"] == "vxlan"
        assert list(attrs["BackendData"]) == ["VNI", "VtepMAC"] and attrs["BackendData"]["VNI"] == 1
        assert list(attrs["BackendV6Data"]) == ["VNI", "VtepMAC"] and attrs["BackendV6Data"]["VNI"] == 1
        assert attrs["BackendData"]["VtepMAC"] == mac_of(host, "flannel.1")
        assert attrs["BackendV6Data"]["VtepMAC"] == mac_of(host, V6_DEV)


def test_subnet_env_has_the_dual_stack_lines_in_order(three_hosts: Cluster) -> None:
    for host in three_hosts.hosts.values():
        v4 = ipaddress.IPv4Network(subnet_of(host))
        v6 = ipaddress.IPv6Network(subnet6_of(host))
        assert host.subnet_file.read_text() == (
            "FLANNEL_NETWORK=10.244.0.0/16\n"
            f"FLANNEL_SUBNET={v4.network_address + 1}/24\n"
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n"
            f"FLANNEL_IPV6_SUBNET={v6.network_address + 1}/64\n"
            "FLANNEL_MTU=1450\n"
            "FLANNEL_IPMASQ=false\n"
        )


def test_v6_device_and_peer_entries_match_upstream_layout(three_hosts: Cluster) -> None:
    c = three_hosts
    h1, h2 = c.hosts[1], c.hosts[2]
    own6 = subnet6_of(h1).split("/")[0]
    addr = in_ns(h1.ns, "ip", "-6", "addr", "show", "dev", V6_DEV, "scope", "global").stdout
    assert re.findall(r"inet6 (\S+)", addr) == [f"{own6}/128"], addr
    link = in_ns(h1.ns, "ip", "-d", "link", "show", V6_DEV).stdout
    # The kernel caps an IPv6-underlay vxlan device at underlay MTU - 70 (upstream asks for 1450 too).
    assert "vxlan id 1" in link and "mtu 1430" in link and "nolearning" in link
    assert f"local {h1.ip6}" in link and "dev eth0" in link
    sub2 = subnet6_of(h2)
    gw2 = sub2.split("/")[0]
    route = in_ns(h1.ns, "ip", "-6", "route", "show", sub2).stdout
    assert f"{sub2} via {gw2} dev {V6_DEV}" in route and "onlink" in route, route
    mac2 = json.loads(c.leases()[lease_key(h2)])["BackendV6Data"]["VtepMAC"]
    neigh = in_ns(h1.ns, "ip", "-6", "neigh", "show", "dev", V6_DEV).stdout
    assert f"{gw2} lladdr {mac2} PERMANENT" in neigh, neigh
    fdb = in_ns(h1.ns, "bridge", "fdb", "show", "dev", V6_DEV).stdout
    assert f"{mac2} dst {h2.ip6} self permanent" in fdb, fdb
    assert sub2 not in in_ns(h1.ns, "ip", "-6", "route", "show", "dev", "flannel.1").stdout


def test_v6_route_deleted_by_hand_is_restored_by_reconcile(three_hosts: Cluster) -> None:
    c = three_hosts
    h1, h3 = c.hosts[1], c.hosts[3]
    sub3 = subnet6_of(h3)
    in_ns(h1.ns, "ip", "-6", "route", "del", sub3, "dev", V6_DEV)
    assert sub3 not in c.routes6(h1)
    assert eventually(lambda: sub3 in c.routes6(h1), timeout=10), c.routes6(h1)
    assert f"{sub3} via {sub3.split('/')[0]} dev {V6_DEV}" in c.routes6(h1)
    assert eventually(lambda: all_reachable(c)), (c.matrix(), c.matrix(v6=True))
    assert re.search(rf"route to {re.escape(sub3)} missing", h1.log_file.read_text())


def test_restart_adopts_both_devices_and_keeps_both_subnets(three_hosts: Cluster) -> None:
    c = three_hosts
    h2 = c.hosts[2]
    before = (h2.env()["FLANNEL_SUBNET"], h2.env()["FLANNEL_IPV6_SUBNET"], mac_of(h2, V6_DEV))
    c.stop_flanneld(h2, signal.SIGKILL)
    c.start_flanneld(h2, RECONCILE)
    env = c.wait_ready(h2)
    assert (env["FLANNEL_SUBNET"], env["FLANNEL_IPV6_SUBNET"], mac_of(h2, V6_DEV)) == before
    assert "adopting existing vxlan device flannel-v6.1" in h2.log_file.read_text()
    assert eventually(lambda: all_reachable(c)), (c.matrix(), c.matrix(v6=True))
