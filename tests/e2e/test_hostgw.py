"""Three simulated hosts on one underlay L2 segment running flanneld with the host-gw backend.

The tests of this module share one cluster and run in order; each leaves it in a working state, except the
last, in which a host leaves for good.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, eventually, in_ns, subnet_of
from tests.e2e.conftest import _cluster

pytestmark = [pytest.mark.e2e, pytest.mark.root]

RECONCILE = "--reconcile-interval=2"


@pytest.fixture(scope="module")
def three_hosts() -> Iterator[Cluster]:
    for c in _cluster(backend='{"Type":"host-gw"}'):
        for n in (1, 2, 3):
            c.start_flanneld(c.add_host(n), RECONCILE)
        for host in c.hosts.values():
            c.wait_ready(host)
            c.add_pod(host)
        yield c


def all_reachable(c: Cluster) -> bool:
    return all(c.matrix().values())


def test_every_pod_pings_every_other_pod_across_hosts(three_hosts: Cluster) -> None:
    c = three_hosts
    assert eventually(lambda: all_reachable(c), timeout=20), c.matrix()
    assert len({subnet_of(h) for h in c.hosts.values()}) == 3


def test_routes_go_via_the_peers_public_ip_on_eth0(three_hosts: Cluster) -> None:
    c = three_hosts
    h1 = c.hosts[1]
    for n in (2, 3):
        sub = subnet_of(c.hosts[n])
        assert f"{sub} via {c.hosts[n].ip} dev eth0 proto 70" in in_ns(h1.ns, "ip", "route", "show", sub).stdout
    assert in_ns(h1.ns, "ip", "link", "show", "flannel.1", check=False).returncode != 0, "host-gw makes no device"


def test_leases_and_subnet_env_are_upstreams(three_hosts: Cluster) -> None:
    c = three_hosts
    for host in c.hosts.values():
        value = c.leases()[subnet_of(host).replace("/", "-")]
        assert value == json.dumps({"PublicIP": host.ip, "PublicIPv6": None, "BackendType": "host-gw"},
                                   separators=(",", ":"))
        assert host.env()["FLANNEL_MTU"] == "1500"


def test_route_deleted_by_hand_is_restored_by_reconcile(three_hosts: Cluster) -> None:
    c = three_hosts
    h1, h3 = c.hosts[1], c.hosts[3]
    sub3 = subnet_of(h3)
    in_ns(h1.ns, "ip", "route", "del", sub3)
    assert sub3 not in c.routes(h1)
    assert eventually(lambda: sub3 in c.routes(h1), timeout=10)
    assert f"(repair: route to {sub3} missing)" in h1.log_file.read_text()
    assert eventually(lambda: all_reachable(c)), c.matrix()


def test_blackhole_route_is_added_when_asked(three_hosts: Cluster) -> None:
    c = three_hosts
    h4 = c.add_host(4)
    c.start_flanneld(h4, RECONCILE, "--ip-blackhole-route", "--iptables-resync=1")
    c.wait_ready(h4)
    sub4 = subnet_of(h4)
    assert eventually(lambda: f"blackhole {sub4}" in c.routes(h4), timeout=5), c.routes(h4)
    assert eventually(lambda: sub4 in c.routes(c.hosts[1]))
    assert c.stop_flanneld(h4) == 0
    c.delete_lease(h4)
    assert eventually(lambda: all(sub4 not in c.routes(c.hosts[n]) for n in (1, 2, 3)))


def test_host_leaving_is_removed_from_the_others_routes(three_hosts: Cluster) -> None:
    c = three_hosts
    h3 = c.hosts[3]
    sub3 = subnet_of(h3)
    assert c.stop_flanneld(h3, signal.SIGTERM) == 0
    c.delete_lease(h3)
    for n in (1, 2):
        assert eventually(lambda n=n: sub3 not in c.routes(c.hosts[n])), c.routes(c.hosts[n])
    h1, h2 = c.hosts[1], c.hosts[2]
    assert c.ping(c.pod_ns(h1, 1), h2.pods[0]) and c.ping(c.pod_ns(h2, 1), h1.pods[0])
