"""``flannelctl status`` on a 2-host cluster: a hand-made drift is named (exit 1), its printed fix repairs it
(exit 0), a stale entry is named, and a stopped flanneld is reported.

flanneld runs with a reconcile interval of an hour, so what is broken by hand stays broken while the test looks
(its own reconcile would repair it within seconds otherwise). flannelctl is the installed console script, run
inside the host's namespace with ``ip netns exec``, as an operator would run it on the node.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
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


def quiet_underlay(host: Host) -> None:
    """No IPv6 on eth0: its link-local address finishing DAD seconds later is an address event that kicks
    flanneld's reconcile, which would repair a hand-made drift before the test has looked at it."""
    in_ns(host.ns, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")


@pytest.fixture(scope="module")
def hosts(cluster: Cluster) -> Iterator[tuple[Host, Host]]:
    h1, h2 = cluster.add_host(1), cluster.add_host(2)
    for h in (h1, h2):
        quiet_underlay(h)
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
    # Without "dev": the kernel matches a route naming a nexthop object only when no device or gateway is given.
    in_ns(h1.ns, "ip", "route", "del", peer)
    code, doc, _ = as_json(h1)
    assert code == 1, h1.log_file.read_text()[-2000:]
    assert [e["what"] for e in doc["drift"]["entries"]] == [f"route to {peer} missing"]
    fix = doc["drift"]["entries"][0]["fix"]
    assert fix == f"ip route replace {peer} nhid {int(ip_address(peer.split('/')[0]))}"  # its nexthop object
    code, human, _ = status(h1)
    assert code == 1 and f"route to {peer} missing" in human["text"] and fix in human["text"]
    in_ns(h1.ns, *shlex.split(fix))
    assert as_json(h1)[0] == 0


def test_missing_neighbour_and_fdb_entries_are_named(hosts: tuple[Host, Host]) -> None:
    h1, h2 = hosts
    gateway = subnet_of(h2).split("/")[0]
    fdb = next(f for f in json.loads(in_ns(h1.ns, "bridge", "-j", "fdb", "show", "dev", "flannel.1").stdout)
           if f.get("dst") == h2.ip)
    in_ns(h1.ns, "ip", "neigh", "del", gateway, "dev", "flannel.1")
    in_ns(h1.ns, "bridge", "fdb", "del", fdb["mac"], "dev", "flannel.1", "dst", h2.ip)
    code, doc, _ = as_json(h1)
    entries = {e["what"]: e["fix"] for e in doc["drift"]["entries"]}
    assert code == 1 and set(entries) == {f"neighbour {gateway} missing", f"fdb entry {fdb['mac']} missing"}
    assert entries[f"fdb entry {fdb['mac']} missing"].startswith("bridge fdb replace ")
    for fix in entries.values():
        in_ns(h1.ns, *shlex.split(fix))
    assert as_json(h1)[0] == 0


def test_status_runs_without_root(hosts: tuple[Host, Host]) -> None:
    h1, _ = hosts
    readable = Path(tempfile.mkdtemp(prefix="flannelctl-"))  # the cluster's work directory is root's alone
    try:
        readable.chmod(0o755)
        shutil.copy(h1.subnet_file, readable / "subnet.env")
        (readable / "subnet.env").chmod(0o644)

        def as_nobody(subnet_file: Path) -> tuple[int, dict[str, Any]]:
            r = in_ns(h1.ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", FLANNELCTL, "status",
                      f"--etcd-endpoints={ETCD_URL}", f"--subnet-file={subnet_file}", "--healthz-ip=127.0.0.1",
                      f"--healthz-port={PORT}", "-o", "json", check=False)
            return r.returncode, json.loads(r.stdout)

        code, doc = as_nobody(readable / "subnet.env")
        assert code == 0 and doc["drift"]["checked"], doc
        code, doc = as_nobody(h1.subnet_file)  # unreadable: said so, with what it takes
        assert code == 1 and "Permission denied (run as root" in doc["findings"][0]["message"]
    finally:
        shutil.rmtree(readable)


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
def hostgw_cluster() -> Iterator[Cluster]:
    for c in _cluster(backend='{"Type":"host-gw"}'):
        h1, h2 = c.add_host(1), c.add_host(2)
        for h in (h1, h2):
            quiet_underlay(h)
            probing = ("--probe-interval=1",) if h is h1 else ()
            c.start_flanneld(h, "--healthz-ip=127.0.0.1", f"--healthz-port={PORT}", "--reconcile-interval=3600",
                             *probing)
        for h in (h1, h2):
            c.wait_ready(h)
        assert eventually(lambda: subnet_of(h2) in c.routes(h1))  # noqa: B023 (used within the iteration)
        yield c


@pytest.fixture(scope="module")
def hostgw_hosts(hostgw_cluster: Cluster) -> tuple[Host, Host]:
    return hostgw_cluster.hosts[1], hostgw_cluster.hosts[2]


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


def metrics_text(host: Host) -> str:
    r = in_ns(host.ns, "curl", "-s", "--max-time", "5", f"http://127.0.0.1:{PORT}/metrics", check=False, timeout=15)
    return r.stdout


def test_a_host_gw_peer_without_pods_raises_no_unreachable_sample(hostgw_cluster: Cluster,
                                                                  hostgw_hosts: tuple[Host, Host]) -> None:
    """h2 has no pod, so no cni0 and nothing at <subnet>.1: flanneld's probes count it as no_target and its
    metrics carry no flannel_probe_reachable sample for it (FlannelPeerUnreachable stays quiet); with a pod, the
    same peer is reachable (``flannelctl probe``'s side is in test_network_map.py)."""
    h1, h2 = hostgw_hosts
    key = subnet_of(h2).replace("/", "-")
    assert eventually(lambda: 'flannel_probes_total{result="no_target"}' in metrics_text(h1), timeout=15)
    assert f'flannel_probe_reachable{{peer="{key}"' not in metrics_text(h1)
    hostgw_cluster.add_pod(h2)
    assert eventually(lambda: f'flannel_probe_reachable{{peer="{key}",family="ipv4"}} 1' in metrics_text(h1),
                      timeout=15), metrics_text(h1)
