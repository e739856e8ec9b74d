"""The operator's view on 3 simulated hosts: the overlay probe (flannelctl probe), the live network map (its JSON
and its page in a real Chromium), and the Grafana dashboard's queries and the alert rules in a real Prometheus
scraping a real flanneld.

Everything runs inside the hosts' namespaces: the map and the health server listen on 127.0.0.1 there, so
Chromium is started inside h1's namespace too. Playwright drives it over a pipe (``--remote-debugging-pipe``,
its default), and the browser "executable" it launches is a two-line wrapper that ``exec``s
``ip netns exec <h1> /usr/bin/chromium``: the pipe's descriptors survive the exec, so the driver in this process
talks to a browser whose network is h1's. No browser is downloaded; Playwright gives each launch a fresh
temporary profile (user-data-dir).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import REPO, Cluster, Host, eventually, in_ns, subnet_of
from tests.e2e.conftest import _cluster
from tests.unit.test_prometheus_rules import RULES, dashboard_exprs

pytestmark = [pytest.mark.e2e, pytest.mark.root]

FLANNELCTL = str(REPO / ".venv" / "bin" / "flannelctl")
HEALTH_PORT, MAP_PORT, PROM_PORT = 10257, 10258, 19090
CHROMIUM = "/usr/bin/chromium"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ARTIFACTS = REPO / "artifacts" / "network-map"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RED = ("conflict", "drift", "unreachable", "not_ready")


def curl(host: Host, url: str) -> str:
    r = in_ns(host.ns, "curl", "-s", "--max-time", "5", url, check=False, timeout=15)
    return r.stdout if r.returncode == 0 else ""


def map_json(host: Host) -> dict[str, Any]:
    text = curl(host, f"http://127.0.0.1:{MAP_PORT}/map.json")
    return json.loads(text) if text else {}


def probe(host: Host, *extra: str) -> subprocess.CompletedProcess[str]:
    return in_ns(host.ns, FLANNELCTL, "probe", "--etcd-endpoints=http://198.18.0.2:2379",
                 f"--subnet-file={host.subnet_file}", "--timeout=5", *extra, check=False, timeout=60)


@pytest.fixture(scope="module")
def hosts(cluster: Cluster) -> Iterator[list[Host]]:
    hs = [cluster.add_host(n) for n in (1, 2, 3)]
    for h in hs:
        # No IPv6 on eth0: its link-local address finishing DAD is an address event that kicks the reconcile,
        # which would repair the hand-deleted route before the map has shown it.
        in_ns(h.ns, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")
        on_h1 = (f"--map-port={MAP_PORT}", "--probe-interval=2") if h.n == 1 else ()
        cluster.start_flanneld(h, "--healthz-ip=127.0.0.1", f"--healthz-port={HEALTH_PORT}",
                               "--reconcile-interval=3600", *on_h1)
    for h in hs:
        cluster.wait_ready(h)
    h1 = hs[0]
    assert eventually(lambda: all(subnet_of(h) in cluster.routes(h1) for h in hs[1:]))
    yield hs


def all_reachable(doc: dict[str, Any], n: int) -> bool:
    return len(doc.get("edges", [])) == n and all(e["state"] == "ok" for e in doc["edges"])


def test_the_map_json_has_every_node_and_a_probed_edge_to_each_peer(hosts: list[Host]) -> None:
    h1 = hosts[0]
    assert eventually(lambda: all_reachable(map_json(h1), 2), timeout=30), map_json(h1)
    doc = map_json(h1)
    assert doc["self"] == subnet_of(h1).replace("/", "-") and doc["backend_type"] == "vxlan" and doc["healthy"]
    assert {n["subnet"]: n["public_ip"] for n in doc["nodes"]} == {subnet_of(h): h.ip for h in hosts}
    me = next(n for n in doc["nodes"] if n["self"])
    assert 86000 < me["expires_in_seconds"] <= 86400 and me["health"] == "ok"
    # peers' expiry: from the watch's writes, or looked up once for records listed at start (etcd grants 24 h)
    assert eventually(lambda: all(n["lease_expires"] and n["expires_in_seconds"] is not None
                                  and 86000 < n["expires_in_seconds"] <= 86400 for n in map_json(h1)["nodes"]),
                      timeout=15), map_json(h1)["nodes"]
    for e in doc["edges"]:
        assert e["path_mtu_bytes"] == 1450 and e["rtt_seconds"] > 0  # flannel.1's MTU crosses with DF set
        assert e["address"] == e["to"].split("-")[0]  # the peer's flannel.1 address, <subnet>.0
    assert doc["drift"] == {"checked": True, "unchecked_reason": None, "entries": []} and doc["conflicts"] == []


def test_flannelctl_probe_reaches_every_peer(hosts: list[Host]) -> None:
    h1, h2, h3 = hosts
    r = probe(h1, "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["healthy"] and doc["mtu"] == 1450 and doc["backend_type"] == "vxlan"
    assert {p["subnet"]: (p["reachable"], p["path_mtu_bytes"], p["public_ip"]) for p in doc["peers"]} == {
        subnet_of(h2): (True, 1450, h2.ip), subnet_of(h3): (True, 1450, h3.ip)}
    table = probe(h1)
    assert table.returncode == 0 and "PATH MTU" in table.stdout and table.stdout.count(" ok ") == 2, table.stdout


@pytest.fixture(scope="module")
def prometheus(hosts: list[Host]) -> Iterator[Host]:
    """A real Prometheus in h1's namespace scraping h1's flanneld every second, with flannel's alert rules."""
    if not Path(PROMETHEUS).exists():
        pytest.fail("prometheus is missing: make deps installs Debian's prometheus package")
    h1 = hosts[0]
    tmp = Path(tempfile.mkdtemp(prefix="flannel-prometheus-"))
    config = tmp / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "flannel", "static_configs": [{"targets": [f"127.0.0.1:{HEALTH_PORT}"]}]}],
    }))
    with open(tmp / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(["ip", "netns", "exec", h1.ns, PROMETHEUS, f"--config.file={config}",
                                 f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{PROM_PORT}"],
                                stdout=log, stderr=log)
    try:
        yield h1
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if os.environ.get("KEEP_LOGS") is None:
            shutil.rmtree(tmp, ignore_errors=True)


def query(host: Host, expr: str) -> dict[str, Any]:
    text = curl(host, f"http://127.0.0.1:{PROM_PORT}/api/v1/query?query={urllib.parse.quote(expr)}")
    return json.loads(text) if text else {"status": "unreachable"}


def test_every_dashboard_query_runs_against_a_real_prometheus(prometheus: Host) -> None:
    h = prometheus
    # Three scrapes of the probe counter are in: rate() over them has two points to work with.
    assert eventually(lambda: bool((query(h, "count_over_time(flannel_probes_total[1m])").get("data") or {})
                                   .get("result")) and
                      float(query(h, "min(count_over_time(flannel_probes_total[1m]))")["data"]["result"][0]["value"][1])
                      >= 3, timeout=40), query(h, "up")
    checked = 0
    for expr in dashboard_exprs():
        promql = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        doc = query(h, promql)
        assert doc.get("status") == "success", (expr, doc)
        names = set(re.findall(r"\b(flannel_[a-z0-9_]+)", promql))
        if all(query(h, f"count({{__name__=\"{n}\"}})")["data"]["result"] for n in names):
            assert doc["data"]["result"], f"no result for {expr} although its metrics are scraped"
            checked += 1
    assert checked >= 12  # most panels have data on a healthy vxlan node


def test_the_alert_rules_evaluate_cleanly_on_real_data(prometheus: Host) -> None:
    h = prometheus

    def rules() -> list[dict[str, Any]]:
        text = curl(h, f"http://127.0.0.1:{PROM_PORT}/api/v1/rules")
        groups = json.loads(text)["data"]["groups"] if text else []
        return [r for g in groups for r in g["rules"]]

    assert eventually(lambda: bool(rules()) and all(r.get("lastEvaluation", "").startswith("20") and
                                                    r["health"] == "ok" for r in rules()), timeout=20), rules()
    assert len(rules()) == 8
    firing = [r["name"] for r in rules() if r["state"] != "inactive"]
    assert firing == [], "a healthy cluster raises no alert"


def test_the_map_page_in_chromium_shows_three_nodes_and_turns_a_broken_peer_red(hosts: list[Host]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make venv installs it)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium; make deps installs it)")
    h1, h2, _ = hosts
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    wrapper_dir = Path(tempfile.mkdtemp(prefix="flannel-chromium-"))
    wrapper = wrapper_dir / "chromium-in-h1"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {h1.ns} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    peer = subnet_of(h2)
    key = peer.replace("/", "-")
    route_deleted = False
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(wrapper), args=CHROMIUM_ARGS, timeout=60_000)
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 700})
                page.goto(f"http://127.0.0.1:{MAP_PORT}/", timeout=30_000)
                page.wait_for_function(
                    "document.querySelectorAll('g.node').length === 3 && "
                    "[...document.querySelectorAll('line.edge')].every(e => e.dataset.state === 'ok')",
                    timeout=30_000)
                healthy = ARTIFACTS / "healthy.png"
                page.screenshot(path=str(healthy))
                in_ns(h1.ns, "ip", "route", "del", peer)  # no "dev": it names a nexthop object
                route_deleted = True
                # Within a refresh period: a probe round (2 s, plus 3 unanswered echoes) and a fetch (2 s).
                page.wait_for_function(
                    """([key, red]) => {
                        const n = document.querySelector(`g.node[data-key="${key}"]`);
                        const e = document.querySelector(`line.edge[data-to="${key}"]`);
                        return n && e && red.includes(n.dataset.health) && e.dataset.state === "unreachable";
                    }""", arg=[key, list(RED)], timeout=30_000)
                broken = ARTIFACTS / "route-deleted.png"
                page.screenshot(path=str(broken))
                print(f"network map screenshots: {healthy} {broken}")
                assert page.locator("g.node").count() == 3
                assert f"route to {peer} missing" in page.locator("#drift").inner_text()
                others = page.eval_on_selector_all("g.node", "ns => ns.map(n => [n.dataset.key, n.dataset.health])")
                assert sorted(h for k, h in others if k != key) == ["ok", "ok"]
            finally:
                browser.close()
        r = probe(h1, "-o", "json")  # flannelctl sees it too, and says so with its exit code
        assert r.returncode == 1 and [f["subject"] for f in json.loads(r.stdout)["findings"]] == [key], r.stdout
    finally:
        if route_deleted:
            in_ns(h1.ns, "ip", "route", "replace", peer, "via", peer.split("/")[0], "dev", "flannel.1", "onlink")
        shutil.rmtree(wrapper_dir, ignore_errors=True)
    assert eventually(lambda: all_reachable(map_json(h1), 2), timeout=30), map_json(h1)  # whole again


@pytest.fixture(scope="module")
def hostgw_hosts() -> Iterator[list[Host]]:
    for c in _cluster(backend='{"Type":"host-gw"}'):
        hs = [c.add_host(n) for n in (1, 2, 3)]
        for h in hs:
            c.start_flanneld(h, "--reconcile-interval=3600")
        for h in hs:
            c.wait_ready(h)
        c.add_pod(hs[1])  # h2 gets a pod, hence cni0 with <subnet>.1; h3 has none
        assert eventually(lambda: all(subnet_of(h) in c.routes(hs[0]) for h in hs[1:]))  # noqa: B023
        yield hs


def test_host_gw_peers_are_probed_at_their_pod_gateway(hostgw_hosts: list[Host]) -> None:
    h1, h2, h3 = hostgw_hosts
    r = probe(h1, "-o", "json")
    doc = json.loads(r.stdout)
    peers = {p["subnet"]: p for p in doc["peers"]}
    two, three = peers[subnet_of(h2)], peers[subnet_of(h3)]
    # cni0's gateway answers, over the route via h2's public IP, with eth0's whole MTU (host-gw adds no header)
    assert two["reachable"] and two["address"].endswith(".1") and two["path_mtu_bytes"] == 1500
    # a node without pods has no address in its subnet, but its public IP answers: no target, not unreachable
    assert not three["reachable"] and three["address"] == subnet_of(h3).split("/")[0][:-1] + "1"
    assert three["state"] == "no_target" and two["state"] == "ok"
    assert r.returncode == 0 and [(f["severity"], f["code"], f["subject"]) for f in doc["findings"]] == [
        ("warning", "no_target", subnet_of(h3).replace("/", "-"))]
    # once its public IP is silent too, the same node is unreachable (an error)
    in_ns(h3.ns, "iptables", "-w", "-I", "INPUT", "-p", "icmp", "--icmp-type", "echo-request", "-j", "DROP")
    r = probe(h1, "-o", "json")
    doc = json.loads(r.stdout)
    three = {p["subnet"]: p for p in doc["peers"]}[subnet_of(h3)]
    assert three["state"] == "unreachable" and r.returncode == 1
    assert [(f["code"], f["subject"]) for f in doc["findings"]] == [("unreachable", subnet_of(h3).replace("/", "-"))]
