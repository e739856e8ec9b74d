"""``flannelctl doctor``'s checks: pure functions from what was read on the node to findings.

Each check answers one of upstream's most common support questions ("pods cannot reach each other", "service
IPs time out", "big packets hang") by looking at the state an experienced operator would look at. They take a
``NodeState`` already read in (``doctor_gather`` reads the real node), so every rule is unit-tested without root
or a kernel, and a check whose input could not be read says so instead of guessing. Each finding carries what is
wrong, why it matters for flannel, and the command that repairs it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from flannel.ctl.output import ERROR, WARNING, Finding

OVERHEAD = {"vxlan": 50, "ipip": 20, "udp": 28, "wireguard": 80, "ipsec": 80, "host-gw": 0, "alloc": 0}
"""Encapsulation bytes each backend adds to a packet (vxlan: outer IPv4, UDP, VXLAN and Ethernet headers)."""
MODULES = {"vxlan": "vxlan", "ipip": "ipip", "wireguard": "wireguard", "udp": "tun"}
"""The kernel module each backend's device needs."""
SKEW_WARN, SKEW_ERROR = 2.0, 30.0
"""Clock skew against the store, seconds: worth knowing / breaks TLS validity checks and lease expiry readings."""
CHECKSUM_FIXED = (5, 7)
"""The first kernel with the vxlan checksum fix for MASQUERADE --random-fully (regressions reported later)."""


@dataclass(frozen=True)
class NodeState:
    """Everything the checks look at, read once from the node (None: could not be read; the reason is in
    ``unreadable``)."""

    backend_type: str | None = None
    """The configured backend (lower case); None when the config could not be read."""
    network: IPv4Network | None = None
    """The cluster ``Network``."""
    device: str | None = None
    """The backend's device (``flannel.1``, ``flannel.ipip``, ``flannel0``); None for host-gw or unknown."""
    flannel_mtu: int | None = None
    """``FLANNEL_MTU`` from subnet.env."""
    underlay: str | None = None
    """The external (underlay) interface's name."""
    underlay_mtu: int | None = None
    """Its MTU."""
    sysctls: Mapping[str, str] = field(default_factory=dict)
    """``/proc/sys`` values by dotted name (``net.ipv4.ip_forward``); a missing one was not present."""
    bridge_nf_present: bool = True
    """``/proc/sys/net/bridge`` exists (the br_netfilter module is loaded)."""
    bridges: tuple[str, ...] = ()
    """Bridge devices on the node (cni0, docker0): pods behind them need br_netfilter for service IPs."""
    kube_mode: bool = False
    """``--kube-subnet-mgr``: kube-proxy is expected, so br_netfilter matters."""
    iptables_legacy: str | None = None
    """``iptables-legacy-save`` output (filter table included); None when not run."""
    iptables_nft: str | None = None
    """``iptables-nft-save`` output; None when not run."""
    enable_nftables: bool = False
    """The config's ``EnableNFTables``."""
    forward_rules: bool = True
    """flanneld's ``--iptables-forward-rules``."""
    cni_dir: str = "/etc/cni/net.d"
    """Where the container runtime looks for CNI configs."""
    cni_files: Mapping[str, str] | None = None
    """File name to contents (``.conf``, ``.conflist``, ``.json``); None when the directory could not be read."""
    module_state: Mapping[str, str] = field(default_factory=dict)
    """Module to ``loaded``, ``available`` (builtin or on disk: loaded on demand), ``absent`` or ``unknown``."""
    kernel_release: str = ""
    """``uname -r``."""
    tx_checksum: bool | None = None
    """The vxlan device's tx checksum offload (ethtool's ``tx-checksumming``); None when unknown."""
    clock_skew: float | None = None
    """Store's clock minus ours, seconds; None when not measured."""
    clock_source: str = ""
    """The endpoint the skew was measured against."""
    unreadable: Mapping[str, str] = field(default_factory=dict)
    """Check name to why its input could not be read (it is then skipped with a warning)."""


Check = Callable[[NodeState], list[Finding]]


def sysctl_cmd(name: str, value: str) -> str:
    return f"sysctl -w {name}={value}  # and persist it in /etc/sysctl.d/"


def check_ip_forward(s: NodeState) -> list[Finding]:
    value = s.sysctls.get("net.ipv4.ip_forward")
    if value is None or value.strip() == "1":
        return []
    return [Finding(ERROR, "ip_forward", "net.ipv4.ip_forward",
                    f"IPv4 forwarding is off ({value.strip()}): this node drops every packet between its pods and "
                    "other nodes", sysctl_cmd("net.ipv4.ip_forward", "1"))]


def rp_filter(s: NodeState, iface: str) -> int | None:
    """The effective rp_filter of ``iface``: the kernel uses the larger of ``all`` and the interface's own."""
    values = [s.sysctls.get(f"net.ipv4.conf.{name}.rp_filter") for name in ("all", iface.replace(".", "/"))]
    known = [int(v) for v in values if v is not None and v.strip().isdigit()]
    return max(known) if known else None


def check_rp_filter(s: NodeState) -> list[Finding]:
    out = []
    pod_facing = tuple(b for b in s.bridges if b == "cni0")  # the bridge flannel's CNI plugin delegates to
    for iface in (s.underlay, s.device, *pod_facing):
        if iface and rp_filter(s, iface) == 1:
            out.append(Finding(ERROR, "rp_filter", iface,
                               f"strict reverse-path filtering (rp_filter=1) on {iface}: packets whose source is "
                               "routed out of another interface are dropped silently (DirectRouting, several "
                               "uplinks, masqueraded service traffic); loose mode (2) keeps the spoofing check",
                               f"sysctl -w net.ipv4.conf.all.rp_filter=2 "
                               f"net.ipv4.conf.{iface.replace('.', '/')}.rp_filter=2"))
    return out


def check_br_netfilter(s: NodeState) -> list[Finding]:
    if not (s.kube_mode or s.bridges):
        return []
    severity = ERROR if s.kube_mode else WARNING
    why = ("pods on the same bridge reach service IPs without passing iptables, so kube-proxy's DNAT is skipped "
           "and DNS and services time out")
    if not s.bridge_nf_present:
        return [Finding(severity, "br_netfilter", "br_netfilter", f"the br_netfilter module is not loaded: {why}",
                        "modprobe br_netfilter && echo br_netfilter > /etc/modules-load.d/br_netfilter.conf")]
    value = s.sysctls.get("net.bridge.bridge-nf-call-iptables")
    if value is not None and value.strip() == "0":
        return [Finding(severity, "br_netfilter", "net.bridge.bridge-nf-call-iptables",
                        f"bridge-nf-call-iptables is 0: {why}",
                        sysctl_cmd("net.bridge.bridge-nf-call-iptables", "1"))]
    return []


def _policy(save: str, chain: str) -> str:
    m = re.search(rf"^\*filter$.*?^:{chain} (\w+)", save, re.M | re.S)
    return m.group(1) if m else ""


def _accepts(save: str, network: IPv4Network | None) -> bool:
    """flannel's forward rules are present: the FORWARD jump and FLANNEL-FWD accepting -s N and -d N."""
    if not re.search(r"^-A FORWARD .*-j FLANNEL-FWD\b", save, re.M):
        return False
    n = re.escape(str(network)) if network is not None else r"\S+"
    return all(re.search(rf"^-A FLANNEL-FWD -{d} {n} .*-j ACCEPT\b", save, re.M) for d in "sd")


def check_forward_policy(s: NodeState) -> list[Finding]:
    out = []
    for name, save in (("iptables-legacy", s.iptables_legacy), ("iptables-nft", s.iptables_nft)):
        if not save or _policy(save, "FORWARD") != "DROP":
            continue
        if _accepts(save, s.network):
            continue
        if s.enable_nftables:  # an accept in flannel's own table does not undo a drop in another base chain
            why = "flanneld runs in nftables mode, and its forward chain cannot override this chain's DROP"
        elif not s.forward_rules:
            why = "flanneld runs with --iptables-forward-rules=false"
        else:
            why = "flanneld's rules are gone (flanneld not running, or something flushed them)"
        net = str(s.network) if s.network is not None else "<Network>"
        out.append(Finding(ERROR, "forward_drop", f"{name} FORWARD",
                           f"the FORWARD policy is DROP and flannel's accept rules (chain FLANNEL-FWD) are missing "
                           f"({why}): traffic between pods on different nodes is dropped here",
                           f"iptables -N FLANNEL-FWD; iptables -A FORWARD -j FLANNEL-FWD; iptables -A FLANNEL-FWD "
                           f"-s {net} -j ACCEPT; iptables -A FLANNEL-FWD -d {net} -j ACCEPT  # or restart flanneld "
                           "with --iptables-forward-rules"))
    return out


def _rule_count(save: str | None) -> int:
    return sum(1 for line in (save or "").splitlines() if line.startswith("-A "))


def check_iptables_mixed(s: NodeState) -> list[Finding]:
    legacy, nft = _rule_count(s.iptables_legacy), _rule_count(s.iptables_nft)
    if not (legacy and nft):
        return []
    return [Finding(ERROR, "iptables_mixed", "iptables",
                    f"rules in both iptables back ends ({legacy} legacy, {nft} nf_tables): the kernel applies both "
                    "and each tool sees only its own, so one component's ACCEPT does not undo the other's DROP and "
                    "masquerading can happen twice",
                    "pick one back end for every component (update-alternatives --set iptables "
                    "/usr/sbin/iptables-nft) and flush the other: iptables-legacy -F; iptables-legacy -t nat -F")]


_FRAG_TYPES = {"3", "3/4", "destination-unreachable", "fragmentation-needed"}


def drops_frag_needed(rule: str) -> bool:
    """An iptables rule (``-A ...`` form) that drops or rejects ICMP "fragmentation needed"."""
    words = rule.split()
    if "-p" not in words or words[words.index("-p") + 1 :][:1] != ["icmp"]:
        return False
    if "-j" not in words or words[words.index("-j") + 1 :][:1] not in (["DROP"], ["REJECT"]):
        return False
    if "--icmp-type" not in words:
        return True
    kind = words[words.index("--icmp-type") + 1 :][:1]
    return bool(kind) and kind[0] in _FRAG_TYPES and words[words.index("--icmp-type") - 1] != "!"


def check_frag_needed(s: NodeState) -> list[Finding]:
    out = []
    for name, save in (("iptables-legacy", s.iptables_legacy), ("iptables-nft", s.iptables_nft)):
        for line in (save or "").splitlines():
            if line.startswith("-A ") and drops_frag_needed(line):
                out.append(Finding(WARNING, "frag_needed_blocked", f"{name}: {line}",
                                   "this rule drops ICMP \"fragmentation needed\": path MTU discovery fails, and "
                                   "connections stall as soon as a packet is larger than a hop's MTU",
                                   f"iptables -I {line.split()[1]} -p icmp --icmp-type fragmentation-needed "
                                   "-j ACCEPT"))
    return out


def check_mtu(s: NodeState) -> list[Finding]:
    if s.flannel_mtu is None or s.underlay_mtu is None or s.backend_type not in OVERHEAD:
        return []
    overhead = OVERHEAD[s.backend_type]
    if s.flannel_mtu + overhead <= s.underlay_mtu:
        return []
    return [Finding(ERROR, "mtu", s.underlay or "underlay",
                    f"FLANNEL_MTU {s.flannel_mtu} plus the {s.backend_type} overhead of {overhead} bytes is more "
                    f"than the underlay MTU {s.underlay_mtu}: full-size packets are fragmented or, with DF set, "
                    "dropped (large transfers hang while pings work)",
                    f"restart flanneld so that it derives the MTU again (FLANNEL_MTU = {s.underlay_mtu - overhead}), "
                    f"or raise the underlay: ip link set {s.underlay or 'DEV'} mtu {s.flannel_mtu + overhead}")]


def _release(text: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_checksum_offload(s: NodeState) -> list[Finding]:
    if s.backend_type != "vxlan" or s.device is None or s.tx_checksum is not True:
        return []
    release = _release(s.kernel_release)
    old = release is not None and release < CHECKSUM_FIXED
    why = ("this kernel (before 5.7) computes wrong outer UDP checksums for vxlan packets that were masqueraded "
           "with --random-fully" if old else "some kernels (reports up to Ubuntu 24.04) compute wrong outer UDP "
           "checksums for vxlan packets after NAT")
    return [Finding(ERROR if old else WARNING, "vxlan_checksum_offload", s.device,
                    f"tx checksum offload is on for {s.device}: {why}; receivers log \"UDP: bad checksum\" and drop "
                    "them (service IPs and DNS fail, upstream issues #1279, #2152)",
                    f"ethtool -K {s.device} tx-checksum-ip-generic off  # persist with a udev rule")]


def is_flannel_cni(text: str) -> bool | None:
    """Whether a CNI config uses the flannel plugin; None when it is not valid JSON."""
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    listed = doc.get("plugins")
    plugins = listed if isinstance(listed, list) else [doc]
    return any(isinstance(p, dict) and p.get("type") == "flannel" for p in plugins)


def check_cni(s: NodeState) -> list[Finding]:
    if not s.cni_files:
        return []
    names = sorted(n for n in s.cni_files if n.endswith((".conf", ".conflist", ".json")))
    flannel = [n for n in names if is_flannel_cni(s.cni_files[n])]
    if not flannel:
        return [Finding(WARNING, "cni_no_flannel", s.cni_dir, f"no CNI config in {s.cni_dir} uses the flannel "
                        "plugin: pods on this node do not get flannel addresses")] if s.kube_mode else []
    out = []
    for name in names[: names.index(flannel[0])]:
        valid = is_flannel_cni(s.cni_files[name]) is not None
        out.append(Finding(ERROR if valid else WARNING, "cni_config_shadows", f"{s.cni_dir}/{name}",
                           f"sorts before flannel's {flannel[0]}: the container runtime uses the first config in "
                           f"name order, so new pods get this network instead of flannel's" if valid else
                           f"sorts before flannel's {flannel[0]} and is not valid JSON: runtimes skip it or fail",
                           f"rm {s.cni_dir}/{name}  # or move it away, if another network plugin was removed"))
    return out


def check_module(s: NodeState) -> list[Finding]:
    module = MODULES.get(s.backend_type or "")
    if module is None:
        return []
    state = s.module_state.get(module, "unknown")
    if state in ("loaded", "available"):
        return []
    if state == "unknown":
        return [Finding(WARNING, "kernel_module", module, f"cannot tell whether the kernel has {module} (not "
                        f"loaded, and no /lib/modules/{s.kernel_release} to look in): the {s.backend_type} backend "
                        "needs it", f"modprobe {module}")]
    return [Finding(ERROR, "kernel_module", module, f"the kernel has no {module} module (not loaded, not builtin, "
                    f"not in /lib/modules/{s.kernel_release}): the {s.backend_type} backend cannot create its device",
                    f"install the kernel's extra modules package, then modprobe {module}")]


def check_clock(s: NodeState) -> list[Finding]:
    if s.clock_skew is None or abs(s.clock_skew) < SKEW_WARN:
        return []
    severity = ERROR if abs(s.clock_skew) >= SKEW_ERROR else WARNING
    return [Finding(severity, "clock_skew", s.clock_source,
                    f"this node's clock is {abs(s.clock_skew):.0f}s {'behind' if s.clock_skew > 0 else 'ahead of'} "
                    "the store's: TLS certificates look not yet valid or expired, lease expiry times shown here are "
                    "off, and logs do not line up", "timedatectl set-ntp true  # or chronyc makestep")]


CHECKS: Sequence[tuple[str, bool, Check]] = (
    ("ip_forward", False, check_ip_forward),
    ("rp_filter", False, check_rp_filter),
    ("br_netfilter", False, check_br_netfilter),
    ("forward_policy", True, check_forward_policy),
    ("iptables_mixed", True, check_iptables_mixed),
    ("frag_needed", True, check_frag_needed),
    ("mtu", False, check_mtu),
    ("vxlan_checksum_offload", False, check_checksum_offload),
    ("cni_config", False, check_cni),
    ("kernel_module", False, check_module),
    ("clock_skew", False, check_clock),
)
"""Every check: its name, whether it needs root (reading iptables), and the function."""


def run_checks(s: NodeState, is_root: bool) -> tuple[list[dict[str, object]], list[Finding]]:
    """Each check's outcome (``{"check", "status", "reason"}``: ok, problem, skipped) and all findings."""
    results: list[dict[str, object]] = []
    findings: list[Finding] = []
    for name, needs_root, fn in CHECKS:
        if needs_root and not is_root:
            results.append({"check": name, "status": "skipped", "reason": "needs root (reads iptables)"})
            continue
        if name in s.unreadable:
            results.append({"check": name, "status": "skipped", "reason": s.unreadable[name]})
            findings.append(Finding(WARNING, "check_skipped", name, s.unreadable[name]))
            continue
        found = fn(s)
        findings += found
        bad = any(f.severity == ERROR for f in found)
        results.append({"check": name, "status": "problem" if bad else "ok", "reason": None})
    skipped = [r["check"] for r in results if r["reason"] == "needs root (reads iptables)"]
    if skipped:
        findings.append(Finding(WARNING, "needs_root", ", ".join(map(str, skipped)),
                                "these checks read iptables and need root; run flannelctl doctor as root for them"))
    return results, findings
