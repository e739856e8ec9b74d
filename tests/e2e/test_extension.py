"""Three simulated hosts running flanneld with the extension backend and a host-gw-like example.

The example is the one in the docs: ``ip route replace $SUBNET via $PUBLIC_IP`` per remote lease and the
matching ``ip route del``, re-run every 2 s (``SubnetAddResyncInterval``) so that a route deleted by hand comes
back. The commands run through ``/bin/sh -c`` (see docs/backends.md), so ``$VAR`` works. The tests share one
cluster and run in order; in the last one a host leaves for good.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, eventually, in_ns, subnet_of
from tests.e2e.conftest import _cluster

pytestmark = [pytest.mark.e2e, pytest.mark.root]

BACKEND = json.dumps({
    "Type": "extension",
    "PreStartupCommand": "echo host-$(hostname -s 2>/dev/null || echo x)",
    "SubnetAddCommand": "ip route replace $SUBNET via $PUBLIC_IP",
    "SubnetRemoveCommand": "ip route del $SUBNET via $PUBLIC_IP",
    "SubnetAddResyncInterval": 2,
})


@pytest.fixture(scope="module")
def three_hosts() -> Iterator[Cluster]:
    for c in _cluster(backend=BACKEND):
        for n in (1, 2, 3):
            c.start_flanneld(c.add_host(n))
        for host in c.hosts.values():
            c.wait_ready(host)
            c.add_pod(host)
        yield c


def test_every_pod_pings_every_other_pod_across_hosts(three_hosts: Cluster) -> None:
    c = three_hosts
    assert eventually(lambda: all(c.matrix().values()), timeout=20), c.matrix()


def test_the_add_command_made_a_route_via_each_peers_public_ip(three_hosts: Cluster) -> None:
    c = three_hosts
    h1 = c.hosts[1]
    for n in (2, 3):
        sub = subnet_of(c.hosts[n])
        assert f"{sub} via {c.hosts[n].ip} dev eth0" in in_ns(h1.ns, "ip", "route", "show", sub).stdout
    text = h1.log_file.read_text()
    assert "SubnetAddCommand for lease" in text and "failed" not in text, text


def test_leases_carry_the_pre_startup_output_as_a_json_string(three_hosts: Cluster) -> None:
    c = three_hosts
    for host in c.hosts.values():
        value = json.loads(c.leases()[subnet_of(host).replace("/", "-")])
        assert value["BackendType"] == "extension" and value["PublicIP"] == host.ip
        assert isinstance(value["BackendData"], str) and value["BackendData"].startswith("host-")
        assert host.env()["FLANNEL_MTU"] == "1500"


def test_route_deleted_by_hand_is_restored_by_the_resync(three_hosts: Cluster) -> None:
    c = three_hosts
    h1, h2 = c.hosts[1], c.hosts[2]
    sub2 = subnet_of(h2)
    in_ns(h1.ns, "ip", "route", "del", sub2)
    assert sub2 not in c.routes(h1)
    assert eventually(lambda: f"{sub2} via {h2.ip} dev eth0" in c.routes(h1), timeout=15), c.routes(h1)
    assert eventually(lambda: all(c.matrix().values())), c.matrix()
    assert "failed" not in h1.log_file.read_text(), "a command (or its resync) failed"


def test_host_leaving_is_removed_from_the_others_routes(three_hosts: Cluster) -> None:
    c = three_hosts
    h3 = c.hosts[3]
    sub3 = subnet_of(h3)
    assert c.stop_flanneld(h3, signal.SIGTERM) == 0
    c.delete_lease(h3)
    for n in (1, 2):
        assert eventually(lambda n=n: sub3 not in c.routes(c.hosts[n])), c.routes(c.hosts[n])
        assert "SubnetRemoveCommand for lease" in c.hosts[n].log_file.read_text()
    h1, h2 = c.hosts[1], c.hosts[2]
    assert c.ping(c.pod_ns(h1, 1), h2.pods[0]) and c.ping(c.pod_ns(h2, 1), h1.pods[0])
