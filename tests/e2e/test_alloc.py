"""Two simulated hosts running flanneld with the alloc backend: subnets are handed out, nothing is programmed."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, subnet_of
from tests.e2e.conftest import _cluster

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def two_hosts() -> Iterator[Cluster]:
    for c in _cluster(backend='{"Type":"alloc"}'):
        for n in (1, 2):
            c.start_flanneld(c.add_host(n))
        for host in c.hosts.values():
            c.wait_ready(host)
        yield c


def test_alloc_writes_subnet_env_and_a_lease_without_backend_type(two_hosts: Cluster) -> None:
    c = two_hosts
    subnets = {subnet_of(h) for h in c.hosts.values()}
    assert len(subnets) == 2
    for host in c.hosts.values():
        env = host.env()
        assert env["FLANNEL_NETWORK"] == "10.244.0.0/16" and env["FLANNEL_MTU"] == "1500"
        assert ipaddress.IPv4Interface(env["FLANNEL_SUBNET"]).network.subnet_of(ipaddress.IPv4Network(c.network))
        value = c.leases()[subnet_of(host).replace("/", "-")]
        assert value == json.dumps({"PublicIP": host.ip, "PublicIPv6": None}, separators=(",", ":"))


def test_alloc_programs_nothing(two_hosts: Cluster) -> None:
    c = two_hosts
    h1, h2 = c.hosts[1], c.hosts[2]
    assert subnet_of(h2) not in c.routes(h1) and subnet_of(h1) not in c.routes(h2)
    assert "flannel" not in "".join(c.routes(h) for h in (h1, h2))
    for h in (h1, h2):
        assert h.proc is not None and h.proc.poll() is None
