"""The ``flannel`` plugin with Debian's real ``bridge``, ``host-local``, ``portmap`` and ``loopback`` plugins.

Each test gets a "node" namespace, where flannel runs and the bridge is created, and pod namespaces; the
plugins are called as a runtime calls them (``CNI_*`` variables, netconf on stdin, a namespace path per pod).
flannel's data dir and host-local's reservations live under the test's temporary directory, never under
/var/lib/cni. Debian 12's plugins speak CNI up to 1.0.0, so the 1.1.0 tests exercise version negotiation.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns import NETNS_DIR, NetNS, netns_factory_fixture  # noqa: F401 - fixture

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not os.path.exists("/usr/lib/cni/bridge"), reason="needs containernetworking-plugins"),
]

FLANNEL = str(Path(sys.executable).parent / "flannel")
CNI_BIN = "/usr/lib/cni"
REPO = Path(__file__).resolve().parents[2]
V4_ENV = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
DUAL_ENV = V4_ENV + "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:11::1/64\n"


class Node:
    """A node as the plugin sees it: a namespace, subnet.env, flannel's data dir, host-local's state dir."""

    def __init__(self, host: NetNS, tmp: Path) -> None:
        self.host = host
        self.bridge = f"fb{secrets.token_hex(4)}"
        self.subnet_file = tmp / "subnet.env"
        self.subnet_file.write_text(V4_ENV)
        self.data_dir = tmp / "flannel"
        self.ipam_dir = tmp / "host-local"

    def conf(self, version: str | None = "0.3.1", **extra: Any) -> dict[str, Any]:
        delegate = {"bridge": self.bridge, **extra.pop("delegate", {})}
        doc: dict[str, Any] = {
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": str(self.subnet_file),
            "dataDir": str(self.data_dir),
            "ipam": {"dataDir": str(self.ipam_dir)},
            "delegate": delegate,
            **extra,
        }
        if version is not None:
            doc["cniVersion"] = version
        return doc

    def call(
        self,
        command: str,
        conf: dict[str, Any],
        container_id: str = "ctr1",
        pod: NetNS | None = None,
        plugin: str = FLANNEL,
        ifname: str = "eth0",
        cni_path: str = CNI_BIN,
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_IFNAME=ifname, CNI_PATH=cni_path)
        if pod is not None:
            env["CNI_NETNS"] = f"{NETNS_DIR}/{pod.name}"
        return subprocess.run(
            ["ip", "netns", "exec", self.host.name, plugin],
            input=json.dumps(conf),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def add(self, pod: NetNS, version: str = "0.3.1", container_id: str = "ctr1", **extra: Any) -> dict[str, Any]:
        proc = self.call("ADD", self.conf(version, **extra), container_id, pod)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def saved(self) -> list[str]:
        """Container IDs with a saved delegate config (the hidden version cache left out)."""
        return sorted(n for n in os.listdir(self.data_dir) if not n.startswith("."))

    def reservations(self) -> list[str]:
        """host-local's reserved addresses (its files other than the lock and the last-reserved marker)."""
        directory = self.ipam_dir / "cbr0"
        if not directory.exists():
            return []
        return sorted(n for n in os.listdir(directory) if n != "lock" and not n.startswith("last_reserved_ip"))


@pytest.fixture
def node(netns_factory: Callable[..., NetNS], tmp_path: Path) -> Iterator[Node]:
    yield Node(netns_factory(underlay=False), tmp_path)


@pytest.fixture
def pod(netns_factory: Callable[..., NetNS]) -> NetNS:
    return netns_factory(underlay=False)


def pod_addresses(pod: NetNS, family: str = "inet") -> list[str]:
    links = pod.ip_json("addr", "show", "dev", "eth0")
    return [
        f"{a['local']}/{a['prefixlen']}"
        for a in links[0]["addr_info"]
        if a["family"] == family and a["scope"] == "global"
    ]


def test_add_attaches_the_pod_with_an_address_in_the_node_subnet_its_route_and_mtu(node: Node, pod: NetNS) -> None:
    result = node.add(pod)
    [ip] = result["ips"]
    assert ip["version"] == "4" and ip["address"].startswith("10.1.17.") and ip["gateway"] == "10.1.17.1"
    assert pod_addresses(pod) == [ip["address"]]
    [link] = pod.ip_json("link", "show", "dev", "eth0")
    assert link["mtu"] == 1472 and "UP" in link["flags"]
    routes = pod.ip_json("route", "show", "10.1.0.0/16")
    assert [(r["dst"], r["gateway"], r["dev"]) for r in routes] == [("10.1.0.0/16", "10.1.17.1", "eth0")]
    [bridge] = node.host.ip_json("addr", "show", "dev", node.bridge)
    assert [a["local"] for a in bridge["addr_info"] if a["family"] == "inet"] == ["10.1.17.1"]
    saved = node.data_dir / "ctr1"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and stat.S_IMODE(node.data_dir.stat().st_mode) == 0o700
    assert node.reservations() == [ip["address"].split("/")[0]]


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_check_passes_then_fails_after_the_pod_address_is_removed_by_hand(node: Node, pod: NetNS, version: str) -> None:
    result = node.add(pod, version)
    check = node.conf(version, prevResult=result)
    proc = node.call("CHECK", check, pod=pod)
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    pod.ip("addr", "del", result["ips"][0]["address"], "dev", "eth0")
    proc = node.call("CHECK", check, pod=pod)
    assert proc.returncode != 0
    err = json.loads(proc.stdout)
    assert err["code"] and "10.1.17." in err["msg"] + err["details"], err


def test_del_releases_the_address_and_a_second_del_succeeds(node: Node, pod: NetNS) -> None:
    node.add(pod)
    assert len(node.reservations()) == 1
    proc = node.call("DEL", node.conf(), pod=pod)
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert node.reservations() == []
    assert pod.ip_json("link", "show") and not [ln for ln in pod.ip_json("link", "show") if ln["ifname"] == "eth0"]
    assert not (node.data_dir / "ctr1").exists()
    proc = node.call("DEL", node.conf(), pod=pod)
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr


def test_fifty_pods_added_and_deleted_in_a_row_leak_no_address(node: Node, pod: NetNS) -> None:
    seen = set()
    for i in range(50):
        result = node.add(pod, container_id=f"pod{i}")
        seen.add(result["ips"][0]["address"])
        proc = node.call("DEL", node.conf(), f"pod{i}", pod)
        assert proc.returncode == 0, proc.stderr
    assert len(seen) == 50, "host-local hands out the next address each time"
    assert node.reservations() == []
    assert node.saved() == []
    veths = [ln for ln in node.host.ip_json("link", "show") if ln.get("master") == node.bridge]
    assert veths == []


@pytest.mark.parametrize("version", ["0.2.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_every_version_works_end_to_end_in_its_own_result_format(node: Node, pod: NetNS, version: str) -> None:
    result = node.add(pod, version)
    assert result["cniVersion"] == version
    if version == "0.2.0":
        assert result["ip4"]["ip"].startswith("10.1.17.") and "ips" not in result
    else:
        [ip] = result["ips"]
        assert ("version" in ip) == version.startswith("0.")
        assert [i["name"] for i in result["interfaces"]][-1] == "eth0"
    proc = node.call("DEL", node.conf(version), pod=pod)
    assert proc.returncode == 0, proc.stderr
    assert node.reservations() == []


def test_dual_stack_add_gives_one_address_per_family(node: Node, pod: NetNS) -> None:
    node.subnet_file.write_text(DUAL_ENV)
    result = node.add(pod, "1.1.0")
    addresses = sorted(ip["address"] for ip in result["ips"])
    assert len(addresses) == 2 and addresses[0].startswith("10.1.17.") and addresses[1].startswith("fc00:0:0:11::")
    assert pod_addresses(pod, "inet6") == [addresses[1]]
    assert [r["dst"] for r in pod.ip_json("-6", "route", "show", "fc00::/48")] == ["fc00::/48"]
    assert node.call("DEL", node.conf("1.1.0"), pod=pod).returncode == 0
    assert node.reservations() == []


def test_del_works_while_flanneld_is_down(node: Node, pod: NetNS) -> None:
    node.add(pod)
    node.subnet_file.unlink()
    proc = node.call("DEL", node.conf(), pod=pod)
    assert proc.returncode == 0, proc.stderr
    assert node.reservations() == []


def test_a_failed_del_keeps_the_saved_config_and_a_retry_cleans_up(node: Node, pod: NetNS, tmp_path: Path) -> None:
    node.add(pod)
    partial = tmp_path / "bin-without-host-local"
    partial.mkdir()
    (partial / "bridge").symlink_to(f"{CNI_BIN}/bridge")
    proc = node.call("DEL", node.conf(), pod=pod, cni_path=str(partial))
    assert proc.returncode != 0 and "host-local" in proc.stdout, proc.stdout
    assert (node.data_dir / "ctr1").exists() and len(node.reservations()) == 1
    assert node.call("DEL", node.conf(), pod=pod).returncode == 0
    assert not (node.data_dir / "ctr1").exists() and node.reservations() == []


def test_gc_releases_the_address_of_a_pod_the_runtime_forgot(node: Node, netns_factory: Callable[..., NetNS]) -> None:
    kept, forgotten = netns_factory(underlay=False), netns_factory(underlay=False)
    kept_ip = node.add(kept, "1.1.0", "kept")["ips"][0]["address"].split("/")[0]
    node.add(forgotten, "1.1.0", "forgotten")
    gc = node.conf("1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "kept", "ifname": "eth0"}]})
    proc = node.call("GC", gc)
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert node.reservations() == [kept_ip]
    assert node.saved() == ["kept"]


def test_status_reports_whether_an_add_could_work(node: Node) -> None:
    assert node.call("STATUS", node.conf("1.1.0")).returncode == 0
    node.subnet_file.unlink()
    proc = node.call("STATUS", node.conf("1.1.0"))
    assert proc.returncode != 0 and json.loads(proc.stdout)["code"] == 50


def test_the_shipped_conflist_runs_with_loopback_and_portmap_as_a_runtime_runs_it(node: Node, pod: NetNS) -> None:
    conflist = json.loads((REPO / "deploy" / "cni" / "10-flannel.conflist").read_text())
    flannel_conf, portmap_conf = conflist["plugins"]
    common = {"name": conflist["name"], "cniVersion": conflist["cniVersion"]}
    flannel_conf = {**node.conf(None, delegate=flannel_conf["delegate"]), **common}
    portmap_conf = {
        **portmap_conf,
        **common,
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
    }
    lo = node.call(
        "ADD",
        {"cniVersion": "0.3.1", "name": "lo", "type": "loopback"},
        pod=pod,
        plugin=f"{CNI_BIN}/loopback",
        ifname="lo",
    )
    assert lo.returncode == 0, lo.stdout
    added = node.call("ADD", flannel_conf, pod=pod)
    assert added.returncode == 0, added.stdout
    result = json.loads(added.stdout)
    mapped = node.call("ADD", {**portmap_conf, "prevResult": result}, pod=pod, plugin=f"{CNI_BIN}/portmap")
    assert mapped.returncode == 0, mapped.stdout
    assert [r.get("gateway") for r in pod.ip_json("route", "show", "default")] == ["10.1.17.1"]
    nat = node.host.run(["iptables", "-t", "nat", "-S"]).stdout
    assert "--dport 18080" in nat and "CNI-HOSTPORT-DNAT" in nat
    assert json.loads((node.data_dir / "ctr1").read_text())["hairpinMode"] is True
    removed = node.call("DEL", {**portmap_conf, "prevResult": result}, pod=pod, plugin=f"{CNI_BIN}/portmap")
    assert removed.returncode == 0, removed.stdout
    assert node.call("DEL", flannel_conf, pod=pod).returncode == 0
    assert "--dport 18080" not in node.host.run(["iptables", "-t", "nat", "-S"]).stdout
    assert node.reservations() == []
