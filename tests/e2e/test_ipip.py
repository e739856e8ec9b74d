"""Three simulated hosts running flanneld with the ipip backend.

This machine's kernel has no ipip (``CONFIG_NET_IPIP`` is not set): there flanneld must refuse to start
with an error naming the missing support, and the data-path tests skip with that reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, eventually, in_ns, subnet_of
from tests.e2e.conftest import _cluster
from tests.ipip_support import IPIP_MISSING, ipip_unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def ipip_cluster() -> Iterator[Cluster]:
    yield from _cluster(backend='{"Type":"ipip"}')


def test_flanneld_exits_naming_the_missing_kernel_support(ipip_cluster: Cluster) -> None:
    if ipip_unavailable() != IPIP_MISSING:
        pytest.skip("the kernel has ipip support")
    c = ipip_cluster
    h9 = c.add_host(9)
    c.start_flanneld(h9)
    assert h9.proc is not None
    assert h9.proc.wait(20) == 1
    h9.proc = None
    text = h9.log_file.read_text()
    assert "the kernel has no ipip support (CONFIG_NET_IPIP / module ipip)" in text, text
    assert c.leases() == {}, "no lease is taken when the device cannot be made"


def test_every_pod_pings_every_other_pod_over_ipip(ipip_cluster: Cluster) -> None:
    reason = ipip_unavailable()
    if reason:
        pytest.skip(reason)
    c = ipip_cluster
    for n in (1, 2, 3):
        c.start_flanneld(c.add_host(n), "--reconcile-interval=2")
    for host in c.hosts.values():
        if host.n != 9:
            c.wait_ready(host)
            c.add_pod(host)
    assert eventually(lambda: all(c.matrix().values()), timeout=20), c.matrix()
    h1, h2 = c.hosts[1], c.hosts[2]
    sub2 = subnet_of(h2)
    assert f"via {h2.ip} dev flannel.ipip" in in_ns(h1.ns, "ip", "route", "show", sub2).stdout
    assert h1.env()["FLANNEL_MTU"] == "1480"
