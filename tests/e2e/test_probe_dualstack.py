"""The overlay probe in both families on a dual-stack vxlan cluster of 2 hosts: ``flannelctl probe`` and
flanneld's map report each peer over IPv4 (``<subnet>.0`` on ``flannel.1``) and IPv6 (``<subnet>::`` on
``flannel-v6.1``), with the DF path MTU of each; an underlay MTU lowered on the peer is found in both families
(IPv6 by ``IPV6_DONTFRAG``: its packets are never fragmented in transit), and a peer whose IPv6 stops answering
is unreachable on the map while its IPv4 stays ok.

h1's flanneld runs with an hour's reconcile (nothing here is repaired by it) and probes every second.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from ipaddress import ip_network
from typing import Any

import pytest

from tests.e2e.cluster import ETCD_URL, REPO, Cluster, Host, eventually, in_ns, subnet_of

pytestmark = [pytest.mark.e2e, pytest.mark.root]

FLANNELCTL = str(REPO / ".venv" / "bin" / "flannelctl")
MAP_PORT = 10260


def probe(host: Host) -> tuple[int, dict[str, Any]]:
    r = in_ns(host.ns, FLANNELCTL, "probe", f"--etcd-endpoints={ETCD_URL}", f"--subnet-file={host.subnet_file}",
              "--timeout=5", "-o", "json", check=False, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)


def map_json(host: Host) -> dict[str, Any]:
    r = in_ns(host.ns, "curl", "-s", "--max-time", "5", f"http://127.0.0.1:{MAP_PORT}/map.json", check=False,
              timeout=15)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout else {}


def subnet6_of(host: Host) -> str:
    """The host's IPv6 subnet (subnet.env writes its gateway, ``<subnet>::1/64``)."""
    return str(ip_network(host.env()["FLANNEL_IPV6_SUBNET"], strict=False))


def mtu(host: Host, dev: str) -> int:
    return int(in_ns(host.ns, "cat", f"/sys/class/net/{dev}/mtu").stdout)


@pytest.fixture(scope="module")
def hosts(dual_stack_cluster: Cluster) -> Iterator[tuple[Host, Host]]:
    c = dual_stack_cluster
    h1, h2 = c.add_host(1), c.add_host(2)
    c.start_flanneld(h1, "--reconcile-interval=3600", f"--map-port={MAP_PORT}", "--probe-interval=1")
    c.start_flanneld(h2, "--reconcile-interval=3600")
    for h in (h1, h2):
        assert "FLANNEL_IPV6_SUBNET" in c.wait_ready(h)
    assert eventually(lambda: subnet_of(h2) in c.routes(h1) and subnet6_of(h2) in c.routes6(h1))
    yield h1, h2


def rows(doc: dict[str, Any]) -> dict[str, tuple[str, str, int | None]]:
    return {p["family"]: (p["state"], p["address"], p["path_mtu_bytes"]) for p in doc["peers"]}


def test_each_peer_is_probed_over_both_families_with_its_path_mtu(hosts: tuple[Host, Host]) -> None:
    h1, h2 = hosts
    v6_subnet = subnet6_of(h2)
    code, doc = probe(h1)
    assert code == 0, doc
    assert rows(doc) == {"ipv4": ("ok", subnet_of(h2).split("/")[0], mtu(h1, "flannel.1")),
                         "ipv6": ("ok", v6_subnet.split("/")[0], mtu(h1, "flannel-v6.1"))}
    assert {p["subnet"] for p in doc["peers"]} == {subnet_of(h2), v6_subnet}
    assert eventually(lambda: (map_json(h1).get("edges") or [{}])[0].get("ipv6") is not None, timeout=15)
    [edge] = map_json(h1)["edges"]
    assert edge["state"] == "ok" and edge["ipv4"]["state"] == "ok" and edge["ipv6"]["state"] == "ok"
    assert edge["ipv6"]["path_mtu_bytes"] == mtu(h1, "flannel-v6.1")


def test_a_lower_underlay_mtu_is_found_in_both_families(hosts: tuple[Host, Host]) -> None:
    h1, h2 = hosts
    in_ns(h2.ns, "ip", "link", "set", "eth0", "mtu", "1400")  # h2 now drops larger frames as they arrive
    try:
        code, doc = probe(h1)
        # vxlan adds 50 bytes over IPv4 and 70 over IPv6; a veth may accept frames up to its MTU plus a VLAN tag's
        # 4 bytes (the kernel's is_skb_forwardable), so what crosses is the MTU alone says, or 4 bytes more (seen
        # both ways over IPv6, depending on whether the sender already holds a learnt path MTU for the peer)
        found = rows(doc)
        assert {family: row[:2] for family, row in found.items()} == {
            "ipv4": ("ok", subnet_of(h2).split("/")[0]), "ipv6": ("ok", subnet6_of(h2).split("/")[0])}, doc
        assert found["ipv4"][2] in (1400 - 50, 1400 + 4 - 50) and found["ipv6"][2] in (1400 - 70, 1400 + 4 - 70), doc
        assert code == 1 and {f["code"] for f in doc["findings"]} == {"path_mtu_below_mtu"}
    finally:
        in_ns(h2.ns, "ip", "link", "set", "eth0", "mtu", "1500")


def test_a_peer_silent_over_ipv6_only_is_unreachable_on_the_map(hosts: tuple[Host, Host]) -> None:
    h1, h2 = hosts
    rule = ["INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "echo-request", "-j", "DROP"]
    in_ns(h2.ns, "ip6tables", "-w", "-I", *rule)
    try:
        def split() -> bool:
            edges = map_json(h1).get("edges") or [{}]
            e = edges[0]
            return e.get("state") == "unreachable" and (e.get("ipv4") or {}).get("state") == "ok" \
                and (e.get("ipv6") or {}).get("state") == "unreachable"
        assert eventually(split, timeout=20), map_json(h1)
        doc = map_json(h1)
        peer = next(n for n in doc["nodes"] if not n["self"])
        assert peer["health"] == "unreachable" and not doc["healthy"]
        assert any(subnet6_of(h2).split("/")[0] in p for p in peer["problems"]), peer
    finally:
        subprocess.run(["ip", "netns", "exec", h2.ns, "ip6tables", "-w", "-D", *rule], check=False)
