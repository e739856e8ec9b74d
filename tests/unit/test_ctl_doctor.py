"""``flannelctl doctor``'s checks and formatter, on read-in node states (no root, no kernel), and the gatherer's
pure helpers on files made for the test."""

from __future__ import annotations

import email.utils
import io
import json
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from flannel.ctl import doctor, doctor_gather
from flannel.ctl.cli import main
from flannel.ctl.doctor_checks import (
    CHECKS,
    NodeState,
    check_checksum_offload,
    check_clock,
    check_cni,
    check_forward_policy,
    check_frag_needed,
    check_ip_forward,
    check_iptables_mixed,
    check_module,
    check_mtu,
    check_rp_filter,
    drops_frag_needed,
    is_flannel_cni,
    rp_filter,
    run_checks,
)
from flannel.ctl.doctor_checks import check_br_netfilter as check_br_netfilter
from flannel.ctl.output import ERROR, WARNING

NET = IPv4Network("10.244.0.0/16")
FLANNEL_FWD = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:FLANNEL-FWD - [0:0]
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
"""
HEALTHY = NodeState(backend_type="vxlan", network=NET, device="flannel.1", flannel_mtu=1450, underlay="eth0",
                    underlay_mtu=1500, sysctls={"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "2",
                                                "net.bridge.bridge-nf-call-iptables": "1"},
                    iptables_nft=FLANNEL_FWD, iptables_legacy="", module_state={"vxlan": "loaded"},
                    kernel_release="6.8.0-31-generic", tx_checksum=False, clock_skew=0.0, clock_source="http://e:2379",
                    cni_files={"10-flannel.conflist": '{"plugins":[{"type":"flannel"},{"type":"portmap"}]}'})


def codes(findings: list[object]) -> list[tuple[str, str]]:
    return [(f.code, f.severity) for f in findings]  # type: ignore[attr-defined]


def test_a_healthy_node_has_no_findings_and_every_check_runs() -> None:
    results, findings = run_checks(HEALTHY, is_root=True)
    assert findings == []
    assert [r["check"] for r in results] == [name for name, _, _ in CHECKS]
    assert {r["status"] for r in results} == {"ok"}


def test_without_root_the_iptables_checks_are_skipped_and_named_and_the_others_run() -> None:
    state = NodeState(sysctls={"net.ipv4.ip_forward": "0"})
    results, findings = run_checks(state, is_root=False)
    skipped = [r["check"] for r in results if r["status"] == "skipped"]
    assert skipped == ["forward_policy", "iptables_mixed", "frag_needed"]
    assert ("ip_forward", ERROR) in codes(findings)
    needs_root = next(f for f in findings if f.code == "needs_root")
    assert needs_root.severity == WARNING and needs_root.subject == "forward_policy, iptables_mixed, frag_needed"


def test_an_unreadable_input_skips_its_check_with_the_reason() -> None:
    results, findings = run_checks(NodeState(unreadable={"cni_config": "cannot list /x: Permission denied"}), True)
    assert {"check": "cni_config", "status": "skipped", "reason": "cannot list /x: Permission denied"} in results
    assert codes(findings) == [("check_skipped", WARNING)]


def test_ip_forward_off_is_an_error_with_the_sysctl_fix() -> None:
    [f] = check_ip_forward(NodeState(sysctls={"net.ipv4.ip_forward": "0"}))
    assert f.code == "ip_forward" and f.fix.startswith("sysctl -w net.ipv4.ip_forward=1")
    assert check_ip_forward(NodeState(sysctls={"net.ipv4.ip_forward": "1\n"})) == []


@pytest.mark.parametrize(("all_", "own", "effective"), [("0", "1", 1), ("1", "0", 1), ("2", "1", 2), ("0", "0", 0)])
def test_effective_rp_filter_is_the_larger_of_all_and_the_interface(all_: str, own: str, effective: int) -> None:
    state = NodeState(sysctls={"net.ipv4.conf.all.rp_filter": all_, "net.ipv4.conf.flannel/1.rp_filter": own})
    assert rp_filter(state, "flannel.1") == effective


def test_strict_rp_filter_on_the_underlay_or_the_device_is_named() -> None:
    state = NodeState(underlay="eth0", device="flannel.1",
                      sysctls={"net.ipv4.conf.eth0.rp_filter": "1", "net.ipv4.conf.flannel/1.rp_filter": "2"})
    [f] = check_rp_filter(state)
    assert f.subject == "eth0" and "net.ipv4.conf.eth0.rp_filter=2" in f.fix
    assert check_rp_filter(NodeState(underlay="eth0", sysctls={"net.ipv4.conf.eth0.rp_filter": "2"})) == []
    pods = NodeState(bridges=("cni0", "docker0"), sysctls={"net.ipv4.conf.all.rp_filter": "1"})
    assert [f.subject for f in check_rp_filter(pods)] == ["cni0"]  # the pod-facing bridge


def test_br_netfilter_matters_with_a_bridge_or_in_kube_mode() -> None:
    assert check_br_netfilter(NodeState(bridge_nf_present=False)) == []  # no bridge, no kube-proxy: irrelevant
    [f] = check_br_netfilter(NodeState(bridge_nf_present=False, kube_mode=True))
    assert (f.code, f.severity) == ("br_netfilter", ERROR) and f.fix.startswith("modprobe br_netfilter")
    [f] = check_br_netfilter(NodeState(bridges=("cni0",), sysctls={"net.bridge.bridge-nf-call-iptables": "0"}))
    assert f.severity == WARNING and "bridge-nf-call-iptables=1" in f.fix


def test_forward_drop_without_flannel_rules_is_an_error_and_with_them_fine() -> None:
    assert check_forward_policy(HEALTHY) == []
    bare = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [3:180]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    [f] = check_forward_policy(NodeState(network=NET, iptables_nft=bare))
    assert (f.code, f.subject) == ("forward_drop", "iptables-nft FORWARD")
    assert "-s 10.244.0.0/16 -j ACCEPT" in f.fix
    accept = bare.replace(":FORWARD DROP", ":FORWARD ACCEPT")
    assert check_forward_policy(NodeState(network=NET, iptables_nft=accept)) == []
    half = FLANNEL_FWD.replace("-A FLANNEL-FWD -d", "-A OTHER -d")  # only one of the two accept rules left
    assert codes(check_forward_policy(NodeState(network=NET, iptables_legacy=half))) == [("forward_drop", ERROR)]


def test_forward_drop_in_nftables_mode_is_an_error_flannel_s_own_chain_cannot_undo() -> None:
    bare = "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n"
    [f] = check_forward_policy(NodeState(network=NET, iptables_nft=bare, enable_nftables=True))
    assert "nftables mode" in f.message


def test_rules_in_both_iptables_back_ends_are_an_error() -> None:
    legacy = "*nat\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n"
    [f] = check_iptables_mixed(NodeState(iptables_legacy=legacy, iptables_nft=FLANNEL_FWD))
    assert f.code == "iptables_mixed" and "1 legacy, 3 nf_tables" in f.message
    assert check_iptables_mixed(NodeState(iptables_legacy="*filter\nCOMMIT\n", iptables_nft=FLANNEL_FWD)) == []


@pytest.mark.parametrize(("rule", "drops"), [
    ("-A INPUT -p icmp -j DROP", True),
    ("-A FORWARD -p icmp -m icmp --icmp-type 3/4 -j REJECT --reject-with icmp-host-prohibited", True),
    ("-A INPUT -p icmp -m icmp --icmp-type fragmentation-needed -j DROP", True),
    ("-A INPUT -p icmp -m icmp --icmp-type 8 -j DROP", False),
    ("-A INPUT -p icmp -j ACCEPT", False),
    ("-A INPUT -p tcp -j DROP", False),
])
def test_rules_dropping_frag_needed(rule: str, drops: bool) -> None:
    assert drops_frag_needed(rule) is drops


def test_a_frag_needed_drop_is_a_warning_with_an_accept_rule_as_fix() -> None:
    [f] = check_frag_needed(NodeState(iptables_nft="*filter\n-A INPUT -p icmp -j DROP\nCOMMIT\n"))
    assert f.severity == WARNING and f.fix.startswith("iptables -I INPUT -p icmp --icmp-type fragmentation-needed")


@pytest.mark.parametrize(("backend", "flannel_mtu", "underlay_mtu", "bad"), [
    ("vxlan", 1450, 1500, False), ("vxlan", 1450, 1499, True), ("ipip", 1480, 1500, False),
    ("ipip", 1480, 1450, True), ("host-gw", 1500, 1500, False), ("udp", 1472, 1500, False),
])
def test_mtu_counts_the_backend_overhead(backend: str, flannel_mtu: int, underlay_mtu: int, bad: bool) -> None:
    found = check_mtu(NodeState(backend_type=backend, flannel_mtu=flannel_mtu, underlay="eth0",
                                underlay_mtu=underlay_mtu))
    assert bool(found) is bad
    if bad:
        overhead = {"vxlan": 50, "ipip": 20}[backend]
        assert found[0].subject == "eth0" and f"FLANNEL_MTU = {underlay_mtu - overhead}" in found[0].fix
        assert f"ip link set eth0 mtu {flannel_mtu + overhead}" in found[0].fix


def test_mtu_unknown_is_not_judged() -> None:
    assert check_mtu(NodeState(backend_type="vxlan", flannel_mtu=1450)) == []


@pytest.mark.parametrize(("release", "severity"), [("5.4.0-150-generic", ERROR), ("6.8.0-31-generic", WARNING)])
def test_vxlan_tx_checksum_offload_on(release: str, severity: str) -> None:
    [f] = check_checksum_offload(NodeState(backend_type="vxlan", device="flannel.1", tx_checksum=True,
                                           kernel_release=release))
    assert (f.code, f.severity) == ("vxlan_checksum_offload", severity)
    assert f.fix.startswith("ethtool -K flannel.1 tx-checksum-ip-generic off") and "#1279" in f.message
    assert check_checksum_offload(NodeState(backend_type="vxlan", device="flannel.1", tx_checksum=None)) == []
    assert check_checksum_offload(NodeState(backend_type="host-gw", tx_checksum=True)) == []


def test_cni_configs_sorting_before_flannel_s_are_named() -> None:
    files = {"00-calico.conflist": '{"plugins":[{"type":"calico"}]}', "05-broken.conf": "{",
             "10-flannel.conflist": '{"plugins":[{"type":"flannel"}]}', "99-loopback.conf": '{"type":"loopback"}',
             "README": "not a config"}
    found = check_cni(NodeState(cni_dir="/x", cni_files=files))
    assert [(f.subject, f.severity) for f in found] == [("/x/00-calico.conflist", ERROR),
                                                        ("/x/05-broken.conf", WARNING)]
    assert found[0].fix.startswith("rm /x/00-calico.conflist")
    assert check_cni(NodeState(cni_files={"10-flannel.conflist": files["10-flannel.conflist"]})) == []


def test_no_flannel_cni_config_matters_only_in_kube_mode() -> None:
    files = {"10-other.conf": '{"type":"bridge"}'}
    assert check_cni(NodeState(cni_files=files)) == []
    assert codes(check_cni(NodeState(cni_files=files, kube_mode=True))) == [("cni_no_flannel", WARNING)]
    assert is_flannel_cni('{"type":"flannel"}') and is_flannel_cni("[]") is None and is_flannel_cni("{") is None


@pytest.mark.parametrize(("state", "expected"), [("loaded", []), ("available", []), ("unknown", [WARNING]),
                                                 ("absent", [ERROR])])
def test_the_backend_s_kernel_module(state: str, expected: list[str]) -> None:
    found = check_module(NodeState(backend_type="ipip", module_state={"ipip": state}, kernel_release="6.1"))
    assert [f.severity for f in found] == expected
    assert all(f.subject == "ipip" for f in found)
    assert check_module(NodeState(backend_type="host-gw")) == []


@pytest.mark.parametrize(("skew", "expected"), [(None, []), (1.5, []), (-5.0, [WARNING]), (45.0, [ERROR])])
def test_clock_skew(skew: float | None, expected: list[str]) -> None:
    found = check_clock(NodeState(clock_skew=skew, clock_source="http://e:2379"))
    assert [f.severity for f in found] == expected
    if found:
        assert ("ahead of" if skew is not None and skew < 0 else "behind") in found[0].message


# -- the gatherer's pure parts ------------------------------------------------------------------------------


def test_sysctls_are_read_by_dotted_name_and_missing_ones_left_out(tmp_path: Path) -> None:
    (tmp_path / "net/ipv4/conf/flannel/1").mkdir(parents=True)
    (tmp_path / "net/ipv4/conf/flannel/1/rp_filter").write_text("1\n")
    assert doctor_gather.read_sysctls(["net.ipv4.conf.flannel/1.rp_filter", "net.ipv4.ip_forward"], tmp_path) == {
        "net.ipv4.conf.flannel/1.rp_filter": "1"}


def test_module_state_from_sys_module_and_lib_modules(tmp_path: Path) -> None:
    sysm, lib = tmp_path / "sys", tmp_path / "lib"
    (sysm / "vxlan").mkdir(parents=True)
    assert doctor_gather.module_state("vxlan", "6.1", sysm, lib) == "loaded"
    assert doctor_gather.module_state("ipip", "6.1", sysm, lib) == "unknown"
    (lib / "6.1").mkdir(parents=True)
    (lib / "6.1/modules.dep").write_text("kernel/net/ipv4/ipip.ko: kernel/net/ipv4/ip_tunnel.ko\n")
    assert doctor_gather.module_state("ipip", "6.1", sysm, lib) == "available"
    assert doctor_gather.module_state("wireguard", "6.1", sysm, lib) == "absent"


def test_cni_files_of_a_missing_directory_are_none_found(tmp_path: Path) -> None:
    assert doctor_gather.cni_files(str(tmp_path / "nope")) == ({}, "")
    (tmp_path / "10-flannel.conflist").write_text("{}")
    (tmp_path / "sub").mkdir()
    assert doctor_gather.cni_files(str(tmp_path)) == ({"10-flannel.conflist": "{}"}, "")


def test_clock_skew_from_a_date_header() -> None:
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 60, usegmt=True)
    assert doctor_gather._date_skew(date, now, now + 0.2) == pytest.approx(60.4, abs=0.2)
    assert doctor_gather._date_skew(email.utils.formatdate(now, usegmt=True), now, now + 0.1) == 0.0
    assert doctor_gather._date_skew("garbage", now, now) is None


def test_tx_checksum_of_a_missing_device_is_unknown() -> None:
    assert doctor_gather.tx_checksum("nosuchdev0") is None


# -- the formatter and the command ----------------------------------------------------------------------------


def test_render_lists_each_check_and_the_findings() -> None:
    results, findings = run_checks(NodeState(sysctls={"net.ipv4.ip_forward": "0"}), is_root=False)
    report = {"backend_type": "vxlan", "underlay": {"name": "eth0", "mtu": 1500}, "flannel_mtu": 1450, "root": False,
              "checks": results}
    text = doctor.render(report, findings, colour=False)
    lines = text.splitlines()
    assert lines[0] == "backend vxlan, underlay eth0 (MTU 1500), FLANNEL_MTU 1450, not root"
    assert any(line.startswith("ip_forward") and "problem" in line for line in lines)
    assert any(line.startswith("forward_policy") and "needs root" in line for line in lines)
    assert "fix: sysctl -w net.ipv4.ip_forward=1" in text and "\033[" not in text


def test_doctor_with_an_unreachable_store_still_checks_the_node(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(["doctor", "--etcd-endpoints=http://127.0.0.1:1", "--timeout=1", f"--subnet-file={tmp_path}/none",
                 f"--cni-conf-dir={tmp_path}", "-o", "json"], {}, out, err)
    doc = json.loads(out.getvalue())
    assert code == 1 and "Traceback" not in err.getvalue()
    assert doc["findings"][0]["code"] == "store_unreachable" and "http://127.0.0.1:1" in doc["findings"][0]["subject"]
    assert {c["check"] for c in doc["checks"]} == {name for name, _, _ in CHECKS}
    assert set(doc) >= {"root", "backend_type", "network", "device", "underlay", "flannel_mtu", "kernel_release",
                        "cni_dir", "clock", "flanneld", "checks", "findings", "healthy"}
