"""Two simulated hosts whose underlay link is pulled and plugged back while flanneld runs (issue 15).

Host 1's ``eth0`` veth is deleted (both ends go: the kernel also deletes ``flannel.1`` on top of it) and made
again, attached to the underlay bridge as ``Cluster._plug`` does: the same name and address, a new index. The
host's own default route comes back with it, as its network configuration would put it back. The reconcile
interval is 600 s, so only flanneld's link and address events can repair within the test; pods on the two
hosts must ping each other again, and flanneld must still be the process that was started.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from flannel.netlink import Netlink
from tests.e2e.cluster import Cluster, eventually, in_ns
from tests.e2e.conftest import _cluster

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(params=['{"Type":"vxlan"}', '{"Type":"host-gw"}'], ids=["vxlan", "host-gw"])
def two_hosts(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    for c in _cluster(backend=request.param):
        for n in (1, 2):
            c.start_flanneld(c.add_host(n), "--reconcile-interval=600")
        for host in c.hosts.values():
            c.wait_ready(host)
            c.add_pod(host)
        yield c


def pods_ping_each_other(c: Cluster) -> bool:
    h1, h2 = c.hosts[1], c.hosts[2]
    return c.ping(c.pod_ns(h1, 1), h2.pods[0], timeout=1) and c.ping(c.pod_ns(h2, 1), h1.pods[0], timeout=1)


def test_pods_ping_again_after_host_1s_underlay_veth_is_recreated(two_hosts: Cluster) -> None:
    c = two_hosts
    h1 = c.hosts[1]
    assert eventually(lambda: pods_ping_each_other(c), timeout=20), "pods do not reach each other at all"
    proc = h1.proc
    assert proc is not None
    with Netlink(h1.ns) as nl:
        old = nl.link_by_name("eth0")
        assert old is not None
        in_ns(h1.ns, "ip", "link", "del", "eth0")
        start = time.monotonic()
        c._plug(h1.ns, "eth0", f"{h1.ip}/24")
        in_ns(h1.ns, "ip", "route", "replace", "default", "via", "198.18.0.1")
        assert eventually(lambda: pods_ping_each_other(c), timeout=30), h1.log_file.read_text()[-3000:]
        took = time.monotonic() - start
        new = nl.link_by_name("eth0")
        assert new is not None and new.index != old.index
        if "vxlan" in c.backend:
            vx = nl.link_by_name("flannel.1")
            assert vx is not None and vx.vxlan is not None and vx.vxlan.underlay_index == new.index
    assert h1.proc is proc and proc.poll() is None, "flanneld rode it out without a restart"
    print(f"\n{c.backend}: pods ping again {took:.2f} s after the re-plug began")
    assert "following it" in h1.log_file.read_text()
