"""``flannelctl status`` on a 2-host cluster: a hand-made drift is named (exit 1), its printed fix repairs it
(exit 0), a stale entry is named, and a stopped flanneld is reported.

flanneld runs with a reconcile interval of an hour, so what is broken by hand stays broken while the test looks
(its own reconcile would repair it within seconds otherwise). flannelctl is the installed console script, run
inside the host's namespace with ``ip netns exec``, as an operator would run it on the node.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.cluster import ETCD_URL, REPO, Cluster, Host, eventually, in_ns, subnet_of
from tests.e2e.conftest import _cluster

pytestmark = [pytest.mark.e2e, pytest.mark.root]

FLANNELCTL = str(REPO / ".venv" / "bin" / "flannelctl")
PORT = 10257


def status(host: Host, *extra: str) -> tuple[int, dict[str, Any], str]:
    """``flannelctl status -o json`` in the host's namespace: (exit code, report, stderr)."""
    r = in_ns(host.ns, FLANNELCTL, "status", f"--etcd-endpoints={ETCD_URL}", f"--subnet-file={host.subnet_file}",
              "--healthz-ip=127.0.0.1", f"--healthz-port={PORT}", "--timeout=5", *extra, check=False)
    return r.returncode, json.loads(r.stdout) if "-o" in extra else {"text": r.stdout}, r.stderr


def as_json(host: Host) -> tuple[int, dict[str, Any], str]:
    return status(host, "-o", "json")


@pytest.fixture(scope="module")
def hosts(cluster: Cluster) -> Iterator[tuple[Host, Host]]:
    h1, h2 = cluster.add_host(1), cluster.add_host(2)
    for h in (h1, h2):
        cluster.start_flanneld(h, "--healthz-ip=127.0.0.1", f"--healthz-port={PORT}", "--reconcile-interval=3600")
    for h in (h1, h2):
        cluster.wait_ready(h)
    assert eventually(lambda: subnet_of(h2) in cluster.routes(h1) and subnet_of(h1) in cluster.routes(h2))
    yield h1, h2


def test_a_healthy_node_exits_0(hosts: tuple[Host, Host]) -> None:
    h1, _ = hosts
    assert eventually(lambda: as_json(h1)[0] == 0), as_json(h1)
    code, doc, _ = as_json(h1)
    assert code == 0
    assert doc["healthy"] and doc["flanneld"]["ready"] and doc["drift"] == {
        "checked": True, "backend_type": "vxlan", "entries": [], "unchecked_reason": None}
    assert doc["lease"]["subnet"] == subnet_of(h1) and doc["lease"]["public_ip"] == h1.ip
    assert 86000 < doc["lease"]["ttl_seconds"] <= 86400 and doc["mtu"] == 1450


def test_a_route_deleted_by_hand_is_named_and_its_fix_repairs_it(hosts: tuple[Host, Host]) -> None:
    h1, h2 = hosts
    peer = subnet_of(h2)
    in_ns(h1.ns, "ip", "route", "del", peer, "dev", "flannel.1")
    code, doc, err = as_json(h1)
    assert code == 1, err
    assert [e["what"] for e in doc["drift"]["entries"]] == [f"route to {peer} missing"]
    fix = doc["drift"]["entries"][0]["fix"]
    assert fix.startswith(f"ip route replace {peer} via ") and fix.endswith("dev flannel.1 onlink")
    code, human, _ = status(h1)
    assert code == 1 and f"route to {peer} missing" in human["text"] and fix in human["text"]
    in_ns(h1.ns, *shlex.split(fix))
    assert as_json(h1)[0] == 0


def test_an_entry_of_no_lease_is_named_stale(cluster: Cluster, hosts: tuple[Host, Host]) -> None:
    h1, _ = hosts
    in_ns(h1.ns, "ip", "route", "add", "10.244.250.0/24", "via", "10.244.250.0", "dev", "flannel.1", "onlink")
    try:
        code, doc, _ = as_json(h1)
        assert code == 1 and [e["what"] for e in doc["drift"]["entries"]] == ["stale route to 10.244.250.0/24"]
    finally:
        in_ns(h1.ns, "ip", "route", "del", "10.244.250.0/24", "dev", "flannel.1")
    assert as_json(h1)[0] == 0


def test_a_stopped_flanneld_is_reported(cluster: Cluster, hosts: tuple[Host, Host]) -> None:
    h1, _ = hosts
    cluster.stop_flanneld(h1)
    code, doc, _ = as_json(h1)
    assert code == 1 and doc["flanneld"]["ready"] is None
    assert [f["code"] for f in doc["findings"]] == ["flanneld_not_running"]
    assert doc["drift"]["checked"]  # the other checks still ran


def test_status_without_a_store_still_checks_readiness(hosts: tuple[Host, Host]) -> None:
    h1, _ = hosts
    r = subprocess.run(["ip", "netns", "exec", h1.ns, FLANNELCTL, "status", "--etcd-endpoints=http://127.0.0.1:1",
                        f"--subnet-file={h1.subnet_file}", f"--healthz-port={PORT}", "--timeout=2", "-o", "json"],
                       capture_output=True, text=True, timeout=30, check=False)
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and {"store_unreachable", "flanneld_not_running"} <= {f["code"] for f in doc["findings"]}


@pytest.fixture(scope="module")
def hostgw_hosts() -> Iterator[tuple[Host, Host]]:
    for c in _cluster(backend='{"Type":"host-gw"}'):
        h1, h2 = c.add_host(1), c.add_host(2)
        for h in (h1, h2):
            c.start_flanneld(h, "--healthz-ip=127.0.0.1", f"--healthz-port={PORT}", "--reconcile-interval=3600")
        for h in (h1, h2):
            c.wait_ready(h)
        assert eventually(lambda: subnet_of(h2) in c.routes(h1))  # noqa: B023 (used within the iteration)
        yield h1, h2


def test_host_gw_drift_is_named_on_the_external_interface(hostgw_hosts: tuple[Host, Host]) -> None:
    h1, h2 = hostgw_hosts
    assert eventually(lambda: as_json(h1)[0] == 0), as_json(h1)
    peer = subnet_of(h2)
    in_ns(h1.ns, "ip", "route", "del", peer, "via", h2.ip)
    code, doc, _ = as_json(h1)
    assert code == 1 and [e["what"] for e in doc["drift"]["entries"]] == [f"route to {peer} missing"]
    fix = doc["drift"]["entries"][0]["fix"]
    assert fix == f"ip route replace {peer} via {h2.ip} dev eth0 proto 70"
    in_ns(h1.ns, *shlex.split(fix))
    assert as_json(h1)[0] == 0
