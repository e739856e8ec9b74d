"""Compare flannel's vxlan data path with the hand-built twin of ``bench_throughput.py``, device by device
(issue #16: is the 4-stream gap a real difference or noise?).

Builds both paths exactly as the throughput benchmark does (a two-host flannel cluster with ``--ip-masq`` and
pods attached by the flannel CNI plugin; the twin configured with ``ip``), then prints, for every namespace
on the path (host 1, host 2, the pod on each), each device's ``ip -d link`` attributes, its offload features
(``ethtool -k``), its queues, and the netfilter-relevant sysctls, and lists what differs. Names, indexes,
addresses, MACs and counters are left out: they differ by construction.

Run as root:  .venv/bin/python bench/compare_vxlan_devices.py
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.e2e.cluster import Cluster, in_ns

from bench_throughput import BACKENDS, NETWORK, HandBuilt, build_flannel, build_hand

SKIP = {"ifindex", "ifname", "address", "broadcast", "link", "link_index", "link_netnsid", "altnames", "stats",
        "stats64", "perm_address", "parentbus", "parentdev", "linkinfo.info_data.local", "linkinfo.info_slave_data.id",
        "linkinfo.info_slave_data.no", "linkinfo.info_slave_data.port_id", "linkinfo.info_slave_data.port_no",
        "linkinfo.info_slave_data.designated_port", "linkinfo.info_data.bridge_id", "linkinfo.info_data.root_id",
        "linkinfo.info_data.designated_root", "linkinfo.info_slave_data.designated_bridge",
        "linkinfo.info_slave_data.bridge_id", "linkinfo.info_slave_data.root_id",
        "linkinfo.info_slave_data.designated_root", "addr_info", "inet6_addr_gen_mode", "netns_immutable",
        "linkinfo.info_data.hello_timer", "linkinfo.info_data.tcn_timer", "linkinfo.info_data.topology_change_timer",
        "linkinfo.info_data.gc_timer", "linkinfo.info_slave_data.hold_timer",
        "linkinfo.info_slave_data.message_age_timer", "linkinfo.info_slave_data.forward_delay_timer"}
SYSCTLS = ("net/bridge/bridge-nf-call-iptables", "net/ipv4/ip_forward", "net/ipv4/conf/all/rp_filter",
           "net/netfilter/nf_conntrack_count")


def flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            flat(f"{prefix}.{k}" if prefix else k, v, out)
    elif prefix not in SKIP and prefix.split(".")[0] not in SKIP:
        out[prefix] = json.dumps(value)


def role(name: str) -> str:
    return "veth (pod's, in cni0)" if name.startswith("veth") else name


def describe(ns: str) -> dict[str, str]:
    """Every comparable property of namespace ``ns``: ``device/property`` → value."""
    props: dict[str, str] = {}
    for link in json.loads(in_ns(ns, "ip", "-d", "-j", "link", "show").stdout):
        name = link["ifname"]
        if name == "lo":
            continue
        attrs: dict[str, str] = {}
        flat("", link, attrs)
        for k, v in attrs.items():
            props[f"{role(name)}/{k}"] = v
        feats = in_ns(ns, "ethtool", "-k", name, check=False).stdout.splitlines()[1:]
        for line in feats:
            key, _, val = line.strip().partition(":")
            props[f"{role(name)}/ethtool/{key}"] = val.strip()
    for s in SYSCTLS:
        got = in_ns(ns, "cat", f"/proc/sys/{s}", check=False)
        props[f"sysctl/{s}"] = got.stdout.strip() or "(absent)"
    rules = in_ns(ns, "iptables-save", check=False).stdout
    props["iptables/rules"] = str(sum(1 for ln in rules.splitlines() if ln.startswith("-A")))
    return props


IDLE_S = 20


def idle_cpu(ns: str) -> float:
    """CPU seconds the flanneld of ``ns`` uses over ``IDLE_S`` seconds with nothing to do (its periodic work
    competes with iperf3 for the machine's two cores in the throughput benchmark)."""
    pids = [int(p) for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()]
    flanneld = [p for p in pids if b"flanneld" in Path(f"/proc/{p}/cmdline").read_bytes()]

    def cpu() -> float:
        f = Path(f"/proc/{flanneld[0]}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")

    before = cpu()
    time.sleep(IDLE_S)
    return cpu() - before


def main() -> int:
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        cluster = Cluster(network=NETWORK, backend=BACKENDS["vxlan"])
        stack.callback(cluster.close)
        build_flannel(cluster, "vxlan")
        h1, h2 = cluster.hosts[1], cluster.hosts[2]
        fl = {"host 1": h1.ns, "host 2": h2.ns, "pod on host 1": cluster.pod_ns(h1, 1),
              "pod on host 2": cluster.pod_ns(h2, 1)}
        hand = HandBuilt("vxlan")
        stack.callback(hand.close)
        build_hand(hand)
        p = hand.prefix
        hb = {"host 1": f"{p}h1", "host 2": f"{p}h2", "pod on host 1": f"{p}h1p1", "pod on host 2": f"{p}h2p1"}
        print("| namespace | property | flannel | hand-built |\n|---|---|---|---|")
        same = 0
        for where in fl:
            a, b = describe(fl[where]), describe(hb[where])
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    print(f"| {where} | {key} | {a.get(key, '—')} | {b.get(key, '—')} |")
                else:
                    same += 1
        print(f"\n{same} properties equal")
        print(f"\nflanneld's CPU while idle (own + reaped children, e.g. iptables), {IDLE_S} s: "
              + ", ".join(f"{where}: {idle_cpu(fl[where]):.2f} s" for where in ("host 1", "host 2")))
        for where in ("host 1",):
            for side, ns in (("flannel", fl[where]), ("hand-built", hb[where])):
                print(f"\n{side}, {where}: ip -d link show flannel.1")
                print(in_ns(ns, "ip", "-d", "link", "show", "flannel.1").stdout)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(subprocess.CalledProcessError):
        sys.exit(main())
    sys.exit(1)
