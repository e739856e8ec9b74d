"""The network map in Kubernetes mode: two hosts' flanneld against the strict fake API server
(``tests/kube_fake``, as in test_kube_cluster.py); h1 serves the map. ``/map.json`` lists both nodes with their
pod CIDRs and public IPs, the edge to the peer is probed over the overlay, the drift check runs, and lease
expiry is "n/a" (a pod CIDR lasts as long as its node; nothing expires). No browser: the page is the same one
test_network_map.py drives in Chromium.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.cluster import Host, eventually, in_ns
from tests.e2e.conftest import _cluster
from tests.e2e.test_kube_cluster import KubeCluster

pytestmark = [pytest.mark.e2e, pytest.mark.root]

MAP_PORT = 10261


def map_json(host: Host) -> dict[str, Any]:
    r = in_ns(host.ns, "curl", "-s", "--max-time", "5", f"http://127.0.0.1:{MAP_PORT}/map.json", check=False,
              timeout=15)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout else {}


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeCluster]:
    for c in _cluster():
        k = KubeCluster.serve(c)
        try:
            for n in (1, 2):
                k.create_node(f"h{n}", n)
                host = c.add_host(n)
                c.start_flanneld(host, "--kube-subnet-mgr", f"--kubeconfig-file={k.kubeconfig}",
                                 f"--net-config-path={k.net_conf}", "--reconcile-interval=2",
                                 f"--map-port={MAP_PORT}", "--probe-interval=1", env={"NODE_NAME": f"h{n}"})
            for host in c.hosts.values():
                c.wait_ready(host)
            yield k
        finally:
            k.api.stop()


def test_map_json_lists_the_nodes_of_the_api_server(kube: KubeCluster) -> None:
    h1, h2 = kube.c.hosts[1], kube.c.hosts[2]

    def whole() -> bool:
        doc = map_json(h1)
        return len(doc.get("nodes", [])) == 2 and [e["state"] for e in doc.get("edges", [])] == ["ok"]

    assert eventually(whole, timeout=30), map_json(h1)
    doc = map_json(h1)
    assert doc["backend_type"] == "vxlan" and doc["network"] == "10.244.0.0/16" and doc["healthy"], json.dumps(doc)
    assert {n["subnet"]: (n["public_ip"], n["self"]) for n in doc["nodes"]} == {
        "10.244.1.0/24": (h1.ip, True), "10.244.2.0/24": (h2.ip, False)}
    peer = next(n for n in doc["nodes"] if not n["self"])
    assert peer["lease_expires"] is False and peer["expires_in_seconds"] is None  # "n/a" on the page
    [edge] = doc["edges"]
    assert edge["address"] == "10.244.2.0" and edge["path_mtu_bytes"] == 1450
    assert doc["drift"]["checked"] and doc["drift"]["entries"] == [] and doc["conflicts"] == []
