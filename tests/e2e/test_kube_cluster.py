"""Three simulated hosts running flanneld in Kubernetes mode against the strict fake API server.

No kube-apiserver can run here, so ``tests/kube_fake`` stands in for it: a process in the underlay's "etcd"
namespace (198.18.0.2:6443), serving HTTPS with its own CA and requiring a bearer token, which flanneld gets
from a kubeconfig file as it would on a real node. The test plays the controller manager: it creates the nodes
and assigns their podCIDRs. The tests share one cluster and run in order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import ETCD_IP, Cluster, Host, eventually, in_ns
from tests.e2e.conftest import _cluster
from tests.kube_fake.objects import make_node
from tests.kube_fake.process import FakeKubeProcess, start_fake_process

pytestmark = [pytest.mark.e2e, pytest.mark.root]

TOKEN = "e2e-token"
API = f"https://{ETCD_IP}:6443"
NET_CONF = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
PREFIX = "flannel.alpha.coreos.com/"


class KubeCluster:
    """The namespace cluster plus the fake API server and one kubeconfig shared by every host."""

    def __init__(self, c: Cluster, api: FakeKubeProcess, tls: Path) -> None:
        self.c = c
        self.api = api
        self.kubeconfig = c.tmp / "kubeconfig"
        self.kubeconfig.write_text(json.dumps({  # JSON is YAML: no YAML writer needed
            "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
            "clusters": [{"name": "e2e", "cluster": {"server": API, "certificate-authority": str(tls / "ca.crt")}}],
            "users": [{"name": "flannel", "user": {"token": TOKEN}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "flannel"}}],
        }))
        self.net_conf = c.tmp / "net-conf.json"
        self.net_conf.write_text(NET_CONF)
        self.tls = tls

    @classmethod
    def serve(cls, c: Cluster) -> KubeCluster:
        """The fake API server started in ``c``'s etcd namespace (TLS, the shared token, a bookmark every 5 s),
        and the cluster around it; stop the server with ``api.stop()``."""
        tls = c.tmp / "tls"
        api = start_fake_process(f"{ETCD_IP}:6443", netns=f"{c.prefix}etcd",
                                 args=["--tls-dir", str(tls), "--token", TOKEN, "--bookmark-interval", "5"])
        try:
            return cls(c, api, tls)
        except BaseException:
            api.stop()
            raise

    def call(self, method: str, path: str, body: object = None, content_type: str = "application/json") -> object:
        """One API request from inside the API server's namespace (the root namespace cannot reach it)."""
        script = (
            "import json, ssl, sys, urllib.request\n"
            f"ctx = ssl.create_default_context(cafile={str(self.tls / 'ca.crt')!r})\n"
            f"req = urllib.request.Request({API!r} + sys.argv[1], method=sys.argv[2], data=sys.argv[3].encode() "
            "or None, headers={'Authorization': 'Bearer " + TOKEN + "', 'Content-Type': sys.argv[4]})\n"
            "print(urllib.request.urlopen(req, context=ctx, timeout=10).read().decode())\n")
        data = "" if body is None else json.dumps(body)
        r = in_ns(f"{self.c.prefix}etcd", "python3", "-c", script, path, method, data, content_type)
        return json.loads(r.stdout)

    def node(self, name: str) -> dict[str, object]:
        got = self.call("GET", f"/api/v1/nodes/{name}")
        assert isinstance(got, dict)
        return got

    def create_node(self, name: str, index: int, pod_cidr: str | None = None) -> None:
        self.call("POST", "/api/v1/nodes", make_node(name, index, pod_cidr=pod_cidr))

    def start(self, host: Host) -> None:
        self.c.start_flanneld(host, "--kube-subnet-mgr", f"--kubeconfig-file={self.kubeconfig}",
                              f"--net-config-path={self.net_conf}", "--reconcile-interval=2",
                              env={"NODE_NAME": f"h{host.n}"})


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeCluster]:
    for c in _cluster():
        k = KubeCluster.serve(c)
        try:
            for n in (1, 2, 3):
                k.create_node(f"h{n}", n)
                k.start(c.add_host(n))
            for host in c.hosts.values():
                c.wait_ready(host)
                c.add_pod(host)
            yield k
        finally:
            k.api.stop()


def test_every_pod_pings_every_other_pod_across_hosts(kube: KubeCluster) -> None:
    c = kube.c
    assert eventually(lambda: all(c.matrix().values()), timeout=20), c.matrix()


def test_each_host_leases_its_nodes_pod_cidr(kube: KubeCluster) -> None:
    for n, host in kube.c.hosts.items():
        env = host.env()
        assert env["FLANNEL_SUBNET"] == f"10.244.{n}.1/24" and env["FLANNEL_NETWORK"] == "10.244.0.0/16"


def test_annotations_and_condition_are_upstreams(kube: KubeCluster) -> None:
    node = kube.node("h1")
    meta = node["metadata"]
    assert isinstance(meta, dict)
    ann = meta["annotations"]
    data = json.loads(ann[PREFIX + "backend-data"])
    assert set(data) == {"VNI", "VtepMAC"} and data["VNI"] == 1
    mac = in_ns(kube.c.hosts[1].ns, "cat", "/sys/class/net/flannel.1/address").stdout.strip()
    assert data["VtepMAC"] == mac
    assert ann[PREFIX + "backend-type"] == "vxlan"
    assert ann[PREFIX + "public-ip"] == kube.c.hosts[1].ip
    assert ann[PREFIX + "kube-subnet-manager"] == "true"
    status = node["status"]
    assert isinstance(status, dict)
    conditions = {cond["type"]: cond for cond in status["conditions"]}
    assert conditions["NetworkUnavailable"]["status"] == "False"
    assert conditions["NetworkUnavailable"]["reason"] == "FlannelIsUp"
    assert conditions["Ready"]["status"] == "True", "the patch must merge, not replace the conditions"


def test_restart_keeps_the_vtep_mac_from_the_annotation(kube: KubeCluster) -> None:
    c, h2 = kube.c, kube.c.hosts[2]
    before = json.loads(kube.node("h2")["metadata"]["annotations"][PREFIX + "backend-data"])["VtepMAC"]  # type: ignore[index]
    c.stop_flanneld(h2)
    in_ns(h2.ns, "ip", "link", "del", "flannel.1")  # so that the device must be made again
    kube.start(h2)
    c.wait_ready(h2)
    assert in_ns(h2.ns, "cat", "/sys/class/net/flannel.1/address").stdout.strip() == before
    assert eventually(lambda: all(c.matrix().values()), timeout=20), c.matrix()


def test_node_added_later_waits_for_its_pod_cidr_then_becomes_reachable(kube: KubeCluster) -> None:
    c = kube.c
    kube.create_node("h4", 4, pod_cidr="")
    h4 = c.add_host(4)
    kube.start(h4)
    assert eventually(lambda: "h4 has no spec.podCIDR yet" in h4.log_file.read_text(), timeout=20)
    kube.call("PATCH", "/api/v1/nodes/h4", {"spec": {"podCIDR": "10.244.4.0/24", "podCIDRs": ["10.244.4.0/24"]}},
              "application/strategic-merge-patch+json")
    c.wait_ready(h4, timeout=30)
    pod4 = c.add_pod(h4)
    assert eventually(lambda: c.ping(c.pod_ns(c.hosts[1], 1), pod4), timeout=20)


def test_deleted_node_disappears_from_the_others_routes(kube: KubeCluster) -> None:
    c = kube.c
    h1, h3 = c.hosts[1], c.hosts[3]
    c.stop_flanneld(h3)
    kube.call("DELETE", "/api/v1/nodes/h3")
    assert eventually(lambda: "10.244.3.0/24" not in in_ns(h1.ns, "ip", "route", "show").stdout, timeout=15)
    assert "10.244.2.0/24" in in_ns(h1.ns, "ip", "route", "show").stdout


def test_malformed_annotation_on_one_node_leaves_the_others_routed(kube: KubeCluster) -> None:
    c = kube.c
    kube.create_node("bad", 9)
    kube.call("PATCH", "/api/v1/nodes/bad/status", {"metadata": {"annotations": {
        PREFIX + "kube-subnet-manager": "true", PREFIX + "backend-type": "vxlan",
        PREFIX + "public-ip": "not-an-ip", PREFIX + "backend-data": '{"VNI":1,"VtepMAC":"6e:2f:8c:8a:11:5c"}'}}},
        "application/strategic-merge-patch+json")
    h1 = c.hosts[1]
    assert eventually(lambda: "skipping node bad" in h1.log_file.read_text(), timeout=15)
    assert c.ping(c.pod_ns(h1, 1), in_ns(c.pod_ns(c.hosts[2], 1), "ip", "-4", "-o", "addr", "show", "dev",
                                         "eth0").stdout.split("inet ")[1].split("/")[0])
    assert os.path.exists(h1.subnet_file)
