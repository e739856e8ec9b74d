"""Three simulated hosts running flanneld with the alloc backend: subnets are handed out, nothing is programmed.

alloc programs no routes (spec §10.9: something else, a cloud route table or a router, moves the packets), so
the route checks the other backends' end-to-end tests make (pods ping across every pair, a host leaving
removes its routes, a route deleted by hand is restored) do not apply. What is checked instead: every host
gets its own lease and ``subnet.env``, no host has a route to another's subnet or a flannel device, and a
host leaving changes nothing on the others.
"""

from __future__ import annotations

import ipaddress
import json
import signal
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, Host, in_ns, subnet_of
from tests.e2e.conftest import _cluster

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def three_hosts() -> Iterator[Cluster]:
    for c in _cluster(backend='{"Type":"alloc"}'):
        for n in (1, 2, 3):
            c.start_flanneld(c.add_host(n))
        for host in c.hosts.values():
            c.wait_ready(host)
        yield c


def flannel_state(c: Cluster, host: Host) -> tuple[str, str]:
    """The host's routes and links, as ``ip`` prints them."""
    return c.routes(host), in_ns(host.ns, "ip", "-o", "link", "show").stdout


def test_every_host_gets_a_distinct_lease_and_subnet_env(three_hosts: Cluster) -> None:
    c = three_hosts
    subnets = {subnet_of(h) for h in c.hosts.values()}
    assert len(subnets) == 3
    assert len(c.leases()) == 3
    for host in c.hosts.values():
        env = host.env()
        assert env["FLANNEL_NETWORK"] == "10.244.0.0/16" and env["FLANNEL_MTU"] == "1500"
        assert env["FLANNEL_IPMASQ"] == "false"
        assert ipaddress.IPv4Interface(env["FLANNEL_SUBNET"]).network.subnet_of(ipaddress.IPv4Network(c.network))
        value = c.leases()[subnet_of(host).replace("/", "-")]
        assert value == json.dumps({"PublicIP": host.ip, "PublicIPv6": None}, separators=(",", ":"))


def test_alloc_programs_no_route_and_no_device(three_hosts: Cluster) -> None:
    c = three_hosts
    for host in c.hosts.values():
        routes, links = flannel_state(c, host)
        for other in c.hosts.values():
            assert subnet_of(other) not in routes, routes
        assert "flannel" not in routes + links
        assert host.proc is not None and host.proc.poll() is None


def test_a_host_leaving_changes_nothing_on_the_others(three_hosts: Cluster) -> None:
    c = three_hosts
    h3 = c.hosts[3]
    before = {n: flannel_state(c, c.hosts[n]) for n in (1, 2)}
    assert c.stop_flanneld(h3, signal.SIGTERM) == 0
    c.delete_lease(h3)
    assert len(c.leases()) == 2
    for n in (1, 2):
        assert flannel_state(c, c.hosts[n]) == before[n]
        assert c.hosts[n].proc is not None and c.hosts[n].proc.poll() is None  # type: ignore[union-attr]
