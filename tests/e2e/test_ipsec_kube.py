"""The ipsec backend in Kubernetes mode (spec §7.2, §10.7): two hosts against the strict fake API server
(``tests/kube_fake``), each with its own mount namespace, hence its own charon and VICI socket.

The leases come from the nodes' podCIDRs and annotations instead of etcd; what follows from them is the same as
in etcd mode: charon has the connections of upstream's table loaded (read back over VICI), the IKE_SA comes up
between the hosts, and the three XFRM policies per peer are in the kernel. As in test_ipsec.py, the kernel's
ESP data path is tested only where the kernel has ESP, and skips here with that reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, eventually, subnet_of
from tests.e2e.test_ipsec import conn_name, conns, has_tunnel_policies, ike_established, policies
from tests.e2e.test_kube_cluster import PREFIX, KubeCluster
from tests.ipsec_support import PSK, esp_unavailable, require_charon, write_strongswan_conf

pytestmark = [pytest.mark.e2e, pytest.mark.root]

NET_CONF = json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "ipsec", "PSK": PSK}})


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeCluster]:
    require_charon()
    c = Cluster(private_mounts=True)
    try:
        c.start()
        conf = write_strongswan_conf(c.tmp)
        k = KubeCluster.serve(c)
        try:
            k.net_conf.write_text(NET_CONF)
            for n in (1, 2):
                k.create_node(f"h{n}", n)
                host = c.add_host(n)
                # --ip-masq as kube-flannel.yml runs it (see test_ipsec.py)
                c.start_flanneld(host, "--kube-subnet-mgr", f"--kubeconfig-file={k.kubeconfig}",
                                 f"--net-config-path={k.net_conf}", "--reconcile-interval=1", "--ip-masq",
                                 env={"NODE_NAME": f"h{n}", "STRONGSWAN_CONF": str(conf)})
            for host in c.hosts.values():
                c.wait_ready(host, timeout=30)
            yield k
        finally:
            k.api.stop()
    finally:
        c.close()


def test_annotations_are_upstreams_for_ipsec(kube: KubeCluster) -> None:
    for n in (1, 2):
        host = kube.c.hosts[n]
        assert host.env()["FLANNEL_SUBNET"] == f"10.244.{n}.1/24" and host.env()["FLANNEL_MTU"] == "1423"
        ann = kube.node(f"h{n}")["metadata"]["annotations"]  # type: ignore[index]
        assert ann[PREFIX + "backend-type"] == "ipsec"
        assert ann[PREFIX + "backend-data"] == "null"
        assert ann[PREFIX + "public-ip"] == host.ip
        assert ann[PREFIX + "kube-subnet-manager"] == "true"


def test_connections_loaded_ike_established_and_policies_in_the_kernel(kube: KubeCluster) -> None:
    c = kube.c
    h1, h2 = c.hosts[1], c.hosts[2]
    for local, remote in ((h1, h2), (h2, h1)):
        name = conn_name(local, remote)
        assert eventually(lambda local=local, name=name: name in conns(local), timeout=20), \
            local.log_file.read_text()[-2000:]
        child = conns(local)[name]["children"][f"{subnet_of(local)}-{subnet_of(remote)}"]  # type: ignore[index]
        assert child["local-ts"] == [subnet_of(local)] and child["remote-ts"] == [subnet_of(remote)]
        assert eventually(lambda local=local, remote=remote: has_tunnel_policies(local, remote)), policies(local)
    assert eventually(lambda: ike_established(h1, h2.ip), timeout=20), h1.log_file.read_text()[-2000:]


def test_pods_ping_across_hosts_over_esp(kube: KubeCluster) -> None:
    c = kube.c
    reason = esp_unavailable(c.hosts[1].ns)
    if reason:
        pytest.skip(reason)
    h1, h2 = c.hosts[1], c.hosts[2]
    c.add_pod(h1)
    pod2 = c.add_pod(h2)
    assert eventually(lambda: c.ping(c.pod_ns(h1, 1), pod2), timeout=30), h1.log_file.read_text()[-2000:]
