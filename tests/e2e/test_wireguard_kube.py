"""wireguard in Kubernetes mode on an IPv6-only network (spec §7.2, §10.6): two hosts, the strict fake API
server (``tests/kube_fake``), ``wireguard-go`` (this kernel has no WireGuard). etcd mode refuses IPv6-only
networks, as upstream does, so this is the only place an IPv6-only wireguard cluster can exist.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, Host, eventually
from tests.e2e.test_kube_cluster import PREFIX, KubeCluster
from tests.e2e.wireguard_support import kube_wg_cluster, peers, pubkey

pytestmark = [pytest.mark.e2e, pytest.mark.root]

NET_CONF = ('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",'
            '"Backend":{"Type":"wireguard"}}')


def _v6_ready(c: Cluster, host: Host) -> None:
    # subnet.env of an IPv6-only node has no FLANNEL_SUBNET, which Cluster.wait_ready looks for
    assert eventually(lambda: "FLANNEL_IPV6_SUBNET" in host.env(), timeout=30), host.log_file.read_text()[-3000:]


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeCluster]:
    yield from kube_wg_cluster(
        NET_CONF, lambda k, n: k.create_node(f"h{n}", n, pod_cidr=f"fd00:10:244:{n}::/64"), _v6_ready)


def test_ipv6_only_pods_ping_over_the_v6_device(kube: KubeCluster) -> None:
    c = kube.c
    h1, h2 = c.hosts[1], c.hosts[2]
    assert eventually(lambda: c.ping(c.pod_ns(h1, 1), h2.pods6[0]), timeout=20), h1.log_file.read_text()[-2000:]
    assert eventually(lambda: c.ping(c.pod_ns(h2, 1), h1.pods6[0]), timeout=20)
    assert peers(h1, "flannel-wg-v6") == {pubkey(h2, "flannel-wg-v6")}
    assert h1.run("test", "-e", "/sys/class/net/flannel-wg", check=False).returncode == 1


def test_annotations_carry_upstreams_v6_data(kube: KubeCluster) -> None:
    h1 = kube.c.hosts[1]
    ann = kube.node("h1")["metadata"]["annotations"]  # type: ignore[index]
    assert ann[PREFIX + "backend-type"] == "wireguard"
    assert ann[PREFIX + "backend-data"] == "null"
    assert json.loads(ann[PREFIX + "backend-v6-data"]) == {"PublicKey": pubkey(h1, "flannel-wg-v6"), "Port": 51821}
    assert ann[PREFIX + "backend-v6-data"] == f'{{"PublicKey":"{pubkey(h1, "flannel-wg-v6")}","Port":51821}}'
    assert ann[PREFIX + "public-ipv6"] == h1.ip6
