"""``flannelctl doctor`` on 3 simulated vxlan hosts: break one thing at a time on a node, and the doctor (or
``status``, for kernel drift) names it and exits 1; repair it, and it exits 0 again.

Each flanneld runs with an hour's reconcile and iptables resync, so what is broken by hand stays broken while the
test looks (flanneld would otherwise repair a route or its FORWARD rules within seconds, which is the point of
flanneld but not of this test). Each host has its own CNI config directory (``--cni-conf-dir``), never the real
``/etc/cni/net.d``. flannelctl is the installed console script, run inside the host's namespace as an operator
would run it on the node.
"""

from __future__ import annotations

import json
import shlex
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import ETCD_URL, REPO, Cluster, Host, eventually, in_ns, subnet_of

pytestmark = [pytest.mark.e2e, pytest.mark.root]

FLANNELCTL = str(REPO / ".venv" / "bin" / "flannelctl")
PORT = 10258
FLANNEL_CNI = '{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"flannel","delegate":{"isDefaultGateway":' \
              'true}},{"type":"portmap","capabilities":{"portMappings":true}}]}'


def cni_dir(host: Host) -> Path:
    return host.workdir / "cni"


def ctl(host: Host, command: str, *extra: str, user: list[str] | None = None) -> tuple[int, dict[str, Any]]:
    """``flannelctl COMMAND -o json`` in the host's namespace: (exit code, report)."""
    r = in_ns(host.ns, *(user or []), FLANNELCTL, command, f"--etcd-endpoints={ETCD_URL}",
              f"--subnet-file={host.subnet_file}", "--healthz-ip=127.0.0.1", f"--healthz-port={PORT}",
              f"--cni-conf-dir={cni_dir(host)}", "--timeout=5", "-o", "json", *extra, check=False)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)


def errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f["code"], f["subject"]) for f in doc["findings"] if f["severity"] == "error"]


def healthy(host: Host) -> bool:
    code, doc = ctl(host, "doctor")
    return code == 0 and doc["healthy"]


@pytest.fixture(scope="module")
def hosts(cluster: Cluster) -> Iterator[tuple[Host, Host, Host]]:
    made = [cluster.add_host(n) for n in (1, 2, 3)]
    for h in made:
        in_ns(h.ns, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")  # no address events kicking reconcile
        cni_dir(h).mkdir()
        (cni_dir(h) / "10-flannel.conflist").write_text(FLANNEL_CNI)
        cluster.start_flanneld(h, "--healthz-ip=127.0.0.1", f"--healthz-port={PORT}", "--reconcile-interval=3600",
                               "--iptables-resync=3600")
    for h in made:
        cluster.wait_ready(h)
    h1, h2, h3 = made
    assert eventually(lambda: all(subnet_of(b) in cluster.routes(a) for a in made for b in made if a is not b))
    yield h1, h2, h3


def test_a_healthy_node_passes_every_check(hosts: tuple[Host, Host, Host]) -> None:
    h1, _, _ = hosts
    assert eventually(lambda: healthy(h1)), ctl(h1, "doctor")
    _, doc = ctl(h1, "doctor")
    assert {c["check"]: c["status"] for c in doc["checks"]} == {
        "ip_forward": "ok", "rp_filter": "ok", "br_netfilter": "ok", "forward_policy": "ok", "iptables_mixed": "ok",
        "frag_needed": "ok", "mtu": "ok", "vxlan_checksum_offload": "ok", "cni_config": "ok", "kernel_module": "ok",
        "clock_skew": "ok"}  # on a kernel >= 5.7 the vxlan checksum offload is a warning at most
    assert doc["backend_type"] == "vxlan" and doc["device"] == "flannel.1" and doc["flannel_mtu"] == 1450
    assert doc["underlay"] == {"name": "eth0", "mtu": 1500} and doc["clock"]["skew_seconds"] == 0.0
    assert doc["flanneld"]["ready"] is True and doc["root"] is True


def test_without_root_the_iptables_checks_are_named_and_the_others_run(hosts: tuple[Host, Host, Host]) -> None:
    h1, _, _ = hosts
    code, doc = ctl(h1, "doctor", user=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
    skipped = {c["check"]: c["reason"] for c in doc["checks"] if c["status"] == "skipped"}
    assert set(skipped) == {"forward_policy", "iptables_mixed", "frag_needed", "cni_config"}
    assert "Permission denied" in skipped["cni_config"]  # the test's work directory is root's alone
    assert ("needs_root", "warning") in {(f["code"], f["severity"]) for f in doc["findings"]}
    assert {c["check"] for c in doc["checks"] if c["status"] == "ok"} >= {"ip_forward", "rp_filter", "mtu"}
    assert doc["root"] is False and code == 0


def test_a_deleted_route_is_named_by_status(hosts: tuple[Host, Host, Host]) -> None:
    h1, h2, _ = hosts
    peer = subnet_of(h2)
    in_ns(h1.ns, "ip", "route", "del", peer)  # no "dev": the route names a nexthop object
    code, doc = ctl(h1, "status")
    assert code == 1 and [e["what"] for e in doc["drift"]["entries"]] == [f"route to {peer} missing"]
    in_ns(h1.ns, *shlex.split(doc["drift"]["entries"][0]["fix"]))
    assert ctl(h1, "status")[0] == 0


def test_strict_rp_filter_is_named_and_loose_mode_repairs_it(hosts: tuple[Host, Host, Host]) -> None:
    _, h2, _ = hosts
    in_ns(h2.ns, "sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=1")
    code, doc = ctl(h2, "doctor")
    assert code == 1 and errors(doc) == [("rp_filter", "eth0")]
    fix = next(f["fix"] for f in doc["findings"] if f["code"] == "rp_filter")
    in_ns(h2.ns, *shlex.split(fix))
    assert healthy(h2)


def test_a_lower_underlay_mtu_is_named(hosts: tuple[Host, Host, Host]) -> None:
    _, _, h3 = hosts
    in_ns(h3.ns, "ip", "link", "set", "eth0", "mtu", "1400")
    try:
        code, doc = ctl(h3, "doctor")
        assert code == 1 and errors(doc) == [("mtu", "eth0")], doc["findings"]
        assert "FLANNEL_MTU 1450 plus the vxlan overhead of 50 bytes is more than the underlay MTU 1400" in \
            doc["findings"][0]["message"]
    finally:
        in_ns(h3.ns, "ip", "link", "set", "eth0", "mtu", "1500")
    assert healthy(h3)


def test_forward_drop_without_flannel_s_rules_is_named_and_its_fix_repairs_it(hosts: tuple[Host, Host, Host]) -> None:
    h1, _, _ = hosts
    in_ns(h1.ns, "iptables", "-P", "FORWARD", "DROP")
    in_ns(h1.ns, "iptables", "-D", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD")
    in_ns(h1.ns, "iptables", "-F", "FLANNEL-FWD")
    in_ns(h1.ns, "iptables", "-X", "FLANNEL-FWD")
    try:
        code, doc = ctl(h1, "doctor")
        assert code == 1 and [c for c, _ in errors(doc)] == ["forward_drop"], doc["findings"]
        fix = next(f["fix"] for f in doc["findings"] if f["code"] == "forward_drop")
        in_ns(h1.ns, "sh", "-c", fix.split("  #")[0])  # the printed commands, as an operator would paste them
        assert healthy(h1)  # the policy is still DROP: flannel's rules are what is needed
    finally:
        in_ns(h1.ns, "iptables", "-P", "FORWARD", "ACCEPT")


def test_a_second_cni_config_sorting_first_is_named(hosts: tuple[Host, Host, Host]) -> None:
    _, h2, _ = hosts
    other = cni_dir(h2) / "05-bridge.conf"
    other.write_text('{"cniVersion":"1.0.0","name":"other","type":"bridge","bridge":"cni1"}')
    try:
        code, doc = ctl(h2, "doctor")
        assert code == 1 and errors(doc) == [("cni_config_shadows", str(other))]
    finally:
        other.unlink()
    assert healthy(h2)


def test_bundle_holds_the_node_s_state_and_no_secret(hosts: tuple[Host, Host, Host]) -> None:
    h1, _, _ = hosts
    out = h1.workdir / "bundle.tar.gz"
    r = in_ns(h1.ns, "env", "FLANNELD_ETCD_PASSWORD=hunter2-not-used", FLANNELCTL, "bundle", str(out),
              f"--etcd-endpoints={ETCD_URL}", f"--subnet-file={h1.subnet_file}", f"--healthz-port={PORT}",
              f"--cni-conf-dir={cni_dir(h1)}", f"--log-file={h1.log_file}", "--timeout=5", check=False)
    assert r.returncode == 0, r.stderr
    with tarfile.open(out) as tar:
        parts = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
                 for m in tar.getmembers()}
    assert "hunter2" not in "".join(parts.values())
    assert "flannel.1" in parts["kernel/ip-link.txt"] and "vxlan id 1" in parts["kernel/ip-link.txt"]
    assert "FLANNEL-FWD" in parts["kernel/iptables-save.txt"]
    assert json.loads(parts["flannelctl/doctor.json"])["backend_type"] == "vxlan"
    assert len(json.loads(parts["flannelctl/leases.json"])["leases"]) == 3
    assert json.loads(parts["flannelctl/status.json"])["lease"]["public_ip"] == h1.ip
    assert "FLANNELD_ETCD_PASSWORD=<redacted>" in parts["config/environment.txt"]
    assert parts[f"logs/log-file-0-{h1.log_file.name}"] and "10-flannel.conflist" in str(list(parts))


def test_a_node_without_flanneld_is_named_and_the_node_checks_still_run(cluster: Cluster,
                                                                         hosts: tuple[Host, Host, Host]) -> None:
    _, _, h3 = hosts
    cluster.stop_flanneld(h3)
    code, doc = ctl(h3, "doctor")
    assert code == 1 and [c for c, _ in errors(doc)] == ["flanneld_not_running"]
    assert {c["status"] for c in doc["checks"]} == {"ok"}
