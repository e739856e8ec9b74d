"""Real flanneld processes in Kubernetes mode ride out an API server that is down or hanging, and a node re-created.

The cluster of ``test_kube_cluster`` (three hosts, the fake API server as a process in the underlay's "etcd"
namespace); the outages are put on through the fake's ``/_fake/`` hooks. Each test checks that every flanneld
keeps running and keeps its routes during the outage, logs the datastore problem, and follows the cluster
again after it: a node added during (or right after) the outage gets its route. The time from the end of the
outage to that route is printed (``-s``), not asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.e2e.cluster import eventually, in_ns
from tests.e2e.test_kube_cluster import PREFIX, KubeCluster, kube  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.root]

OUTAGE = float(os.environ.get("FLANNEL_KUBE_OUTAGE", "60"))
"""Seconds the API server stays down: the minute of the reliability figures (docs/reliability.md)."""
HANG = max(OUTAGE, 25.0)
"""A hang must outlast flanneld's own-node check (every 10 s, 10 s time limit) to be noticed at all."""


def hook(k: KubeCluster, name: str, body: object = None, **params: object) -> object:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return k.call("POST", f"/_fake/{name}?{query}", body)


def add_flannel_node(k: KubeCluster, name: str, n: int, public_ip: str) -> str:
    """A node that another flanneld has annotated (via hooks, so that it works while the API hangs)."""
    cidr = f"10.244.{n}.0/24"
    hook(k, "create-node", node=name, podCIDR=cidr)
    hook(k, "patch-node", {"metadata": {"annotations": {
        PREFIX + "kube-subnet-manager": "true", PREFIX + "backend-type": "vxlan", PREFIX + "public-ip": public_ip,
        PREFIX + "backend-data": json.dumps({"VNI": 1, "VtepMAC": f"6e:2f:8c:8a:11:{n:02x}"}, separators=(",", ":")),
    }}}, node=name)
    return cidr


def routed_everywhere(k: KubeCluster, cidr: str) -> Callable[[], bool]:
    return lambda: all(cidr in in_ns(h.ns, "ip", "route", "show").stdout for h in k.c.hosts.values())


def all_running(k: KubeCluster) -> None:
    for host in k.c.hosts.values():
        assert host.proc is not None and host.proc.poll() is None, host.log_file.read_text()[-3000:]


def log_sizes(k: KubeCluster) -> dict[int, int]:
    return {n: h.log_file.stat().st_size for n, h in k.c.hosts.items()}


def logged(k: KubeCluster, text: str, since: dict[int, int]) -> Callable[[], bool]:
    """Every host's flanneld has logged ``text`` after the log sizes ``since``."""
    return lambda: all(text in h.log_file.read_bytes()[since[n]:].decode() for n, h in k.c.hosts.items())


def test_api_server_down_then_back(kube: KubeCluster) -> None:  # noqa: F811
    routes_before = {n: in_ns(h.ns, "ip", "route", "show").stdout for n, h in kube.c.hosts.items()}
    since = log_sizes(kube)
    hook(kube, "down", seconds=OUTAGE)  # answered first, then nothing listens for OUTAGE seconds
    assert eventually(logged(kube, "not ready: datastore", since), timeout=OUTAGE + 10)
    all_running(kube)
    assert eventually(lambda: _answers(kube), timeout=OUTAGE + 10, every=0.1)
    back = time.monotonic()
    cidr = add_flannel_node(kube, "late", 7, "198.18.0.77")
    assert eventually(routed_everywhere(kube, cidr), timeout=60)
    print(f"\nflanneld: route to a node added right after a {OUTAGE:g}s API outage on every host after "
          f"{time.monotonic() - back:.2f}s")
    assert eventually(logged(kube, "datastore recovered", since), timeout=20)
    all_running(kube)
    for n, h in kube.c.hosts.items():  # nothing was taken down meanwhile
        now = in_ns(h.ns, "ip", "route", "show").stdout
        assert all(line in now for line in routes_before[n].splitlines() if "flannel.1" in line)


def test_api_server_hanging_then_back(kube: KubeCluster) -> None:  # noqa: F811
    since = log_sizes(kube)
    hook(kube, "hang")
    began = time.monotonic()
    try:
        cidr = add_flannel_node(kube, "during", 8, "198.18.0.88")
        assert eventually(logged(kube, "no answer within", since), timeout=HANG)  # a check of the node timed out
        all_running(kube)
        time.sleep(max(0.0, HANG - (time.monotonic() - began)))  # the outage's length, not a synchronisation
    finally:
        hook(kube, "unhang")
    back = time.monotonic()
    assert eventually(routed_everywhere(kube, cidr), timeout=60)
    print(f"\nflanneld: route to a node added during a {HANG:g}s API hang on every host after "
          f"{time.monotonic() - back:.2f}s")
    all_running(kube)


def _answers(k: KubeCluster) -> bool:
    try:
        hook(k, "state")
    except subprocess.CalledProcessError:  # refused while down
        return False
    return True


def test_a_deleted_and_recreated_node_is_annotated_again_and_routed_again(kube: KubeCluster) -> None:  # noqa: F811
    h1, h2 = kube.c.hosts[1], kube.c.hosts[2]
    cidr = "10.244.2.0/24"
    assert cidr in in_ns(h1.ns, "ip", "route", "show").stdout
    hook(kube, "delete-node", node="h2")
    assert eventually(lambda: cidr not in in_ns(h1.ns, "ip", "route", "show").stdout, timeout=20)
    hook(kube, "create-node", node="h2", podCIDR=cidr)  # the kubelet registers it again, with the same podCIDR
    began = time.monotonic()
    assert eventually(lambda: cidr in in_ns(h1.ns, "ip", "route", "show").stdout, timeout=30)
    print(f"\nflanneld: a re-created node routed again by the others after {time.monotonic() - began:.2f}s")
    node = hook(kube, "node", node="h2")
    assert isinstance(node, dict)
    assert node["metadata"]["annotations"][PREFIX + "public-ip"] == h2.ip
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["NetworkUnavailable"] == "False"
    assert "was deleted from the API server" in h2.log_file.read_text()
    all_running(kube)
