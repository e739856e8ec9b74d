"""flanneld's health server and metrics, scraped over HTTP from inside the host namespaces.

The tests of this module share one cluster and run in order: host 1 starts before the network config exists
(so /readyz is 503 until the config is put), host 2 then joins and host 1's counters must move.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from tests.e2e.cluster import Cluster, Host, eventually, in_ns

pytestmark = [pytest.mark.e2e, pytest.mark.root]

PORT = 10256
CONFIG_KEY = "/coreos.com/network/config"
CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'

_SCRAPE = """
import sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=5)
    code, ctype, body = r.status, r.headers.get("Content-Type"), r.read()
except urllib.error.HTTPError as e:
    code, ctype, body = e.code, e.headers.get("Content-Type"), e.read()
sys.stdout.write(f"{code}\\n{ctype}\\n" + body.decode())
"""


def scrape(host: Host, path: str, port: int = PORT) -> tuple[int, str, str] | None:
    """GET ``path`` from inside the host's namespace: (status, content type, body), None if refused."""
    r = in_ns(host.ns, sys.executable, "-c", _SCRAPE, f"http://127.0.0.1:{port}{path}", check=False)
    if r.returncode != 0:
        return None
    code, ctype, body = r.stdout.split("\n", 2)
    return int(code), ctype, body


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in exposition text (labels must match exactly, in any order)."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if found == labels:
            return float(m.group(3))
    return None


def metrics_of(host: Host) -> str:
    got = scrape(host, "/metrics")
    assert got is not None and got[0] == 200, got
    return got[2]


@pytest.fixture(scope="module")
def h1(cluster: Cluster) -> Host:
    """Host 1, started while the network config is missing from etcd."""
    cluster.etcdctl("del", CONFIG_KEY)
    host = cluster.add_host(1)
    cluster.start_flanneld(host, f"--healthz-port={PORT}", "--reconcile-interval=2")
    return host


def test_readyz_is_503_until_the_config_arrives_then_200(cluster: Cluster, h1: Host) -> None:
    assert eventually(lambda: scrape(h1, "/healthz") is not None, timeout=15), h1.log_file.read_text()[-2000:]
    assert scrape(h1, "/healthz") == (200, "text/plain; charset=utf-8", "flanneld is running")
    # Two failed attempts at the config: flanneld has been up and retrying for a while, and still is not ready.
    assert eventually(lambda: h1.log_file.read_text().count("failed to retrieve network config") >= 2,
                      timeout=30), h1.log_file.read_text()[-2000:]
    assert scrape(h1, "/readyz") == (503, "text/plain; charset=utf-8", "flanneld is not ready yet")
    assert sample(metrics_of(h1), "flannel_ready") == 0
    cluster.put_config(CONFIG)
    cluster.wait_ready(h1)
    assert eventually(lambda: (scrape(h1, "/readyz") or (0,))[0] == 200, timeout=10)
    assert scrape(h1, "/readyz") == (200, "text/plain; charset=utf-8", "flanneld is ready")


def test_other_paths_get_404_page_not_found(h1: Host) -> None:
    assert scrape(h1, "/nope") == (404, "text/plain; charset=utf-8", "404 page not found\n")


def test_metrics_describe_the_node_once_ready(h1: Host) -> None:
    got = scrape(h1, "/metrics")
    assert got is not None and got[:2] == (200, "text/plain; version=0.0.4; charset=utf-8")
    text = got[2]
    assert sample(text, "flannel_ready") == 1
    assert sample(text, "flannel_build_info", version="0.1.0", upstream_version="v0.28.9", backend="vxlan") == 1
    expiry = sample(text, "flannel_lease_expiration_timestamp_seconds")
    assert expiry is not None and time.time() + 3600 < expiry <= time.time() + 86400 + 60  # 24 h TTL
    assert sample(text, "flannel_known_peers") == 0
    assert (sample(text, "flannel_kernel_operations_total", kind="link_add") or 0) >= 1  # flannel.1


def test_counters_move_when_a_peer_joins(cluster: Cluster, h1: Host) -> None:
    before = metrics_of(h1)
    h2 = cluster.add_host(2)
    cluster.start_flanneld(h2)
    cluster.wait_ready(h2)
    assert eventually(lambda: sample(metrics_of(h1), "flannel_known_peers") == 1, timeout=15)
    after = metrics_of(h1)

    def moved(name: str, **labels: str) -> float:
        return (sample(after, name, **labels) or 0) - (sample(before, name, **labels) or 0)

    assert moved("flannel_lease_events_total", type="added") >= 1
    # vxlan's IPv4 route names a nexthop object (docs/backends.md): both count as kernel operations
    for kind in ("neigh_replace", "fdb_replace", "nexthop_replace", "route_via_nexthop"):
        assert moved("flannel_kernel_operations_total", kind=kind) >= 1, kind
    assert moved("flannel_lease_event_to_kernel_seconds_count") >= 1
    assert moved("flannel_lease_event_to_kernel_seconds_bucket", le="+Inf") >= 1
    for kind in ("nexthop_replace", "route_via_nexthop"):
        assert (sample(after, "flannel_kernel_operation_errors_total", kind=kind) or 0) == 0


def hold_port(host: Host, port: int) -> subprocess.Popen[str]:
    """A process in the host's namespace listening on ``port`` (the caller stops it, by PID)."""
    code = ("import socket, sys, time\ns = socket.socket(); s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen()\n"
            "print('ok', flush=True)\ntime.sleep(60)")
    proc = subprocess.Popen(["ip", "netns", "exec", host.ns, sys.executable, "-c", code, str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ok"
    return proc


def test_a_busy_health_port_fails_the_start_naming_the_address(cluster: Cluster) -> None:
    h3 = cluster.add_host(3)
    listener = hold_port(h3, 10257)
    try:
        cluster.start_flanneld(h3, "--healthz-port=10257")
        assert h3.proc is not None
        code = h3.proc.wait(20)
        log = h3.log_file.read_text()
        assert code != 0, log
        assert "cannot start the healthz server on 0.0.0.0:10257: address already in use" in log
        assert not h3.subnet_file.exists()
    finally:
        listener.terminate()
        listener.wait(10)
        if listener.stdout is not None:
            listener.stdout.close()
        listener.wait(5)


def test_sigterm_closes_the_health_server_and_exits_cleanly(cluster: Cluster, h1: Host) -> None:
    assert cluster.stop_flanneld(h1) == 0
    assert "Exiting cleanly" in h1.log_file.read_text()
    assert scrape(h1, "/healthz") is None
