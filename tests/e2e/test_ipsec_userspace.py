"""The ipsec backend with ``UserspaceESP`` (not upstream): pods ping across hosts through charon's kernel-libipsec.

This kernel has no ESP, so the upstream layout cannot carry a packet here (test_ipsec.py). With UserspaceESP,
charon's kernel-libipsec plugin does ESP in userspace behind a TUN device (``ipsec0``): charon installs its own
policies and routes (table 220), flanneld none in the kernel. What this proves: the connections flanneld loads
(names, traffic selectors, proposals, reqid, PSKs) give CHILD_SAs that carry pod traffic, encrypted, between two
flannel hosts. What it does not: the kernel XFRM data path of upstream's layout, or traffic with an upstream peer
(whose kernel would receive UDP-encapsulated ESP, which kernel-libipsec forces).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, Host, eventually, in_ns, subnet_of
from tests.e2e.conftest import _skip_reason
from tests.ipsec_support import LIBIPSEC_CONF, PSK, text, vici_session, write_strongswan_conf

pytestmark = [pytest.mark.e2e, pytest.mark.root]

LIBDIRS = ("/usr/lib/ipsec", "/usr/lib/strongswan", "/usr/lib64/strongswan", "/usr/lib64/ipsec")


@pytest.fixture(scope="module")
def userspace_cluster() -> Iterator[Cluster]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    if not any(os.path.exists(f"{d}/plugins/libstrongswan-kernel-libipsec.so") for d in LIBDIRS):
        pytest.skip("strongSwan's kernel-libipsec plugin is not installed (libcharon-extra-plugins)")
    c = Cluster(backend=json.dumps({"Type": "ipsec", "PSK": PSK, "UserspaceESP": True}), private_mounts=True)
    try:
        c.start()
        conf = write_strongswan_conf(c.tmp, LIBIPSEC_CONF)
        for n in (1, 2):
            host = c.add_host(n)
            # --ip-masq as kube-flannel.yml runs it: otherwise the CNI bridge masquerades pod-to-pod traffic to
            # the host's address, which is outside the CHILD_SA's traffic selectors (libipsec drops it)
            c.start_flanneld(host, "--reconcile-interval=1", "--ip-masq", env={"STRONGSWAN_CONF": str(conf)})
        for host in c.hosts.values():
            c.wait_ready(host)
            c.add_pod(host)
        yield c
    finally:
        c.close()


def child_sas(host: Host) -> list[dict[str, object]]:
    assert host.holder is not None
    with vici_session(host.holder.run_dir) as s:
        return [child for entry in s.list_sas() for sa in text(entry).values()
                for child in sa.get("child-sas", {}).values()]


def test_pods_ping_across_hosts_through_userspace_esp(userspace_cluster: Cluster) -> None:
    c = userspace_cluster
    h1, h2 = c.hosts[1], c.hosts[2]
    assert eventually(lambda: c.ping(c.pod_ns(h1, 1), h2.pods[0]), timeout=30), (
        h1.log_file.read_text()[-3000:])
    assert c.ping(c.pod_ns(h2, 1), h1.pods[0])
    # the traffic went through a CHILD_SA of flannel's connection: its counters moved
    installed = [ch for ch in child_sas(h1) if ch.get("state") == "INSTALLED"]
    assert installed and any(int(str(ch.get("packets-in", "0"))) > 0 for ch in installed), installed
    assert all(ch["local-ts"] == [subnet_of(h1)] and ch["remote-ts"] == [subnet_of(h2)] for ch in installed)
    assert all(ch["reqid"] == "11" and ch["encap"] == "yes" for ch in installed), installed
    # flanneld installed no kernel policy: charon's routes send the peer's subnet to ipsec0
    assert "reqid 11" not in h1.run("ip", "xfrm", "policy", "show").stdout
    assert f"{subnet_of(h2)} dev ipsec0" in h1.run("ip", "route", "show", "table", "220").stdout


def test_flannel_mtu_fits_ipsec0_and_full_size_packets_cross(userspace_cluster: Cluster) -> None:
    """ipsec0 has MTU 1400, below upstream's 1500 - 77: with FLANNEL_MTU 1423 a pod's full-size packet with DF
    would be refused at ipsec0. FLANNEL_MTU is 1400, and a 1400-byte packet with DF crosses both ways."""
    c = userspace_cluster
    h1, h2 = c.hosts[1], c.hosts[2]
    for host in (h1, h2):
        assert host.env()["FLANNEL_MTU"] == "1400"
        assert host.run("cat", "/sys/class/net/ipsec0/mtu").stdout.strip() == "1400"
        assert "UserspaceESP: ipsec0 has MTU 1400, FLANNEL_MTU is 1400" in host.log_file.read_text()
    assert in_ns(c.pod_ns(h1, 1), "cat", "/sys/class/net/eth0/mtu").stdout.strip() == "1400"
    for src, dst in ((h1, h2), (h2, h1)):
        r = in_ns(c.pod_ns(src, 1), "ping", "-c1", "-W3", "-M", "do", "-s", str(1400 - 28), dst.pods[0], check=False)
        assert r.returncode == 0, r.stdout + r.stderr
