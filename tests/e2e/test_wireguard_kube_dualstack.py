"""wireguard in Kubernetes mode, dual stack, ``separate`` mode (spec §7.2, §10.6): two hosts against the strict
fake API server (``tests/kube_fake``), over ``wireguard-go`` (this kernel has no WireGuard). The nodes carry two
podCIDRs, one per family, as a dual-stack kube-controller-manager assigns them; flanneld makes both devices and
writes upstream's ``backend-data`` and ``backend-v6-data`` annotations.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import eventually
from tests.e2e.test_kube_cluster import PREFIX, KubeCluster
from tests.e2e.wireguard_support import kube_wg_cluster, peers, pubkey, wg
from tests.kube_fake.objects import JsonObject, make_node

pytestmark = [pytest.mark.e2e, pytest.mark.root]

NET_CONF = ('{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",'
            '"Backend":{"Type":"wireguard"}}')


def dual_stack_node(name: str, n: int) -> JsonObject:
    """A node whose controller manager allocated one podCIDR per family."""
    node = make_node(name, n, pod_cidr=f"10.244.{n}.0/24")
    spec = node["spec"]
    assert isinstance(spec, dict)
    spec["podCIDRs"] = [f"10.244.{n}.0/24", f"fd00:10:244:{n}::/64"]
    return node


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeCluster]:
    yield from kube_wg_cluster(NET_CONF, lambda k, n: k.call("POST", "/api/v1/nodes", dual_stack_node(f"h{n}", n)),
                               lambda c, host: c.wait_ready(host, timeout=30))


def test_dual_stack_pods_ping_over_both_devices(kube: KubeCluster) -> None:
    c = kube.c
    h1, h2 = c.hosts[1], c.hosts[2]
    assert h1.env()["FLANNEL_SUBNET"] == "10.244.1.1/24" and h1.env()["FLANNEL_IPV6_SUBNET"] == "fd00:10:244:1::1/64"
    assert eventually(lambda: all(c.matrix().values()), timeout=20), h1.log_file.read_text()[-2000:]
    assert eventually(lambda: all(c.matrix(v6=True).values()), timeout=20), c.matrix(v6=True)
    for local, remote in ((h1, h2), (h2, h1)):
        assert peers(local) == peers(local, "flannel-wg-v6") == {pubkey(remote)}
        dump = wg(local, "show", "flannel-wg-v6", "dump").splitlines()[1].split("\t")
        assert dump[2] == f"[{remote.ip6}]:51821" and dump[3] == f"fd00:10:244:{remote.n}::/64"


def test_annotations_carry_upstreams_backend_data_for_both_families(kube: KubeCluster) -> None:
    for n in (1, 2):
        host = kube.c.hosts[n]
        ann = kube.node(f"h{n}")["metadata"]["annotations"]  # type: ignore[index]
        key = pubkey(host)
        assert pubkey(host, "flannel-wg-v6") == key  # separate mode: one key, two devices (upstream's layout)
        assert ann[PREFIX + "backend-type"] == "wireguard"
        assert ann[PREFIX + "backend-data"] == f'{{"PublicKey":"{key}","Port":51820}}'
        assert ann[PREFIX + "backend-v6-data"] == f'{{"PublicKey":"{key}","Port":51821}}'
        assert json.loads(ann[PREFIX + "backend-v6-data"]) == {"PublicKey": key, "Port": 51821}
        assert ann[PREFIX + "public-ip"] == host.ip and ann[PREFIX + "public-ipv6"] == host.ip6
