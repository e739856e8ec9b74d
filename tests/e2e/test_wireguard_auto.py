"""wireguard, ``auto`` mode with a PSK, dual stack: one device carries both families (spec §10.6); and a peer
built by hand the way upstream flanneld builds one (``wireguard-go`` + ``wg``, its lease written in Go's
bytes) exchanges traffic with flannel's hosts.

One cluster for the module, over ``wireguard-go`` (this kernel has no WireGuard).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, Host, eventually, subnet_of
from tests.e2e.wireguard_support import ifindex, peers, pubkey, wg, wg_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.root]

PSK = base64.b64encode(bytes(range(32))).decode()
UP_V4, UP_V6 = "10.244.250", "fd00:10:244:fa"
"""The hand-built upstream peer's subnets: 10.244.250.0/24 and fd00:10:244:fa::/64."""


@pytest.fixture(scope="module")
def c() -> Iterator[Cluster]:
    yield from wg_cluster(f'{{"Type":"wireguard","Mode":"auto","PSK":"{PSK}"}}', ipv6=True)


def v6_subnet(host: Host) -> str:
    return host.env()["FLANNEL_IPV6_SUBNET"].rsplit("::", 1)[0] + "::/64"


def test_one_device_carries_both_families_and_every_pod_pings_every_other(c: Cluster) -> None:
    assert eventually(lambda: all(c.matrix().values()), timeout=20), c.matrix()
    assert eventually(lambda: all(c.matrix(v6=True).values()), timeout=20), c.matrix(v6=True)
    h1 = c.hosts[1]
    assert h1.run("test", "-e", "/sys/class/net/flannel-wg-v6", check=False).returncode == 1
    dump = wg(h1, "show", "flannel-wg", "dump").splitlines()
    for host in (c.hosts[2], c.hosts[3]):
        line = next(x.split("\t") for x in dump if x.startswith(pubkey(host)))
        # the underlay 198.18.0.0/15 is not RFC 1918: auto mode picks the IPv4 endpoint (upstream's rule)
        assert line[1] == PSK and line[2] == f"{host.ip}:51820"
        assert set(line[3].split(",")) == {subnet_of(host), v6_subnet(host)}


def test_v6_lease_data_names_the_port_listened_on(c: Cluster) -> None:
    h1 = c.hosts[1]
    value = next(v for k, v in c.leases().items() if k.startswith(subnet_of(h1).replace("/", "-")))
    key = pubkey(h1)
    assert value.endswith(f'"BackendData":{{"PublicKey":"{key}","Port":51820}},'
                          f'"BackendV6Data":{{"PublicKey":"{key}","Port":51820}}}}')


def test_a_peer_deleted_by_hand_comes_back(c: Cluster) -> None:
    h1, h3 = c.hosts[1], c.hosts[3]
    wg(h1, "set", "flannel-wg", "peer", pubkey(h3), "remove")
    assert eventually(lambda: pubkey(h3) in peers(h1), timeout=15), h1.log_file.read_text()[-2000:]


def build_upstream_peer(c: Cluster) -> Host:
    """Host 4, configured by hand exactly as upstream flanneld (auto mode) would configure itself."""
    h4 = c.add_host(4)
    h4.run("sh", "-c", "umask 077; wg genkey > /run/wgkey; echo " + PSK + " > /run/psk")
    key = h4.run("sh", "-c", "wg pubkey < /run/wgkey").stdout.strip()
    h4.run("wireguard-go", "flannel-wg")
    h4.run("wg", "set", "flannel-wg", "private-key", "/run/wgkey", "listen-port", "51820")
    for cmd in (["link", "set", "flannel-wg", "mtu", "1420"],
                ["addr", "add", f"{UP_V4}.0/32", "dev", "flannel-wg"],
                ["-6", "addr", "add", f"{UP_V6}::/128", "dev", "flannel-wg"],
                ["link", "set", "flannel-wg", "up"],
                ["route", "replace", "10.244.0.0/16", "dev", "flannel-wg", "scope", "link"],
                ["-6", "route", "replace", "fd00:10:244::/56", "dev", "flannel-wg"],
                ["addr", "add", f"{UP_V4}.1/32", "dev", "lo"],  # a "pod" address on the peer
                ["-6", "addr", "add", f"{UP_V6}::1/128", "dev", "lo"]):
        h4.run("ip", *cmd)
    for host in (c.hosts[1], c.hosts[2], c.hosts[3]):
        h4.run("wg", "set", "flannel-wg", "peer", pubkey(host), "preshared-key", "/run/psk", "endpoint",
               f"{host.ip}:51820", "allowed-ips", f"{subnet_of(host)},{v6_subnet(host)}")
    # What upstream writes in auto mode: BackendV6Data.Port is ListenPortV6, where nothing listens.
    value = (f'{{"PublicIP":"{h4.ip}","PublicIPv6":"{h4.ip6}","BackendType":"wireguard",'
             f'"BackendData":{{"PublicKey":"{key}","Port":51820}},'
             f'"BackendV6Data":{{"PublicKey":"{key}","Port":51821}}}}')
    c.etcdctl("put", f"/coreos.com/network/subnets/{UP_V4}.0-24&{UP_V6}::-64", value)
    return h4


def test_a_hand_built_upstream_peer_exchanges_traffic_with_flannel_hosts(c: Cluster) -> None:
    h4 = build_upstream_peer(c)
    key = pubkey(h4)
    for host in (c.hosts[1], c.hosts[2], c.hosts[3]):
        assert eventually(lambda host=host: key in peers(host), timeout=15), host.log_file.read_text()[-2000:]
    for host in (c.hosts[1], c.hosts[2], c.hosts[3]):
        pod = c.pod_ns(host, 1)
        assert eventually(lambda pod=pod: c.ping(pod, f"{UP_V4}.1"), timeout=15), wg(host, "show")
        assert eventually(lambda pod=pod: c.ping(pod, f"{UP_V6}::1"), timeout=15), wg(host, "show")
        assert h4.run("ping", "-c1", "-W2", "-I", f"{UP_V4}.1", host.pods[0], check=False).returncode == 0
    transfer = [line.split("\t") for line in wg(h4, "show", "flannel-wg", "transfer").splitlines()]
    assert all(int(rx) > 0 and int(tx) > 0 for _, rx, tx in transfer), transfer


def test_a_lease_with_a_garbage_key_is_skipped_and_the_others_keep_working(c: Cluster) -> None:
    h1, h2 = c.hosts[1], c.hosts[2]
    bad = "10.244.251.0-24&fd00:10:244:fb::-64"
    c.etcdctl("put", f"/coreos.com/network/subnets/{bad}",
              '{"PublicIP":"198.18.0.99","PublicIPv6":"2001:db8:198:18::99","BackendType":"wireguard",'
              '"BackendData":{"PublicKey":"not-a-key","Port":51820},'
              '"BackendV6Data":{"PublicKey":"not-a-key","Port":51820}}')
    assert eventually(lambda: f"skipping lease {bad}: BackendData.PublicKey 'not-a-key' is not a base64 "
                              "WireGuard key" in h1.log_file.read_text())
    assert len(peers(h1)) == 3  # h2, h3 and the upstream peer
    assert c.ping(c.pod_ns(h1, 1), h2.pods[0]) and c.ping(c.pod_ns(h1, 1), h2.pods6[0])
    c.etcdctl("del", f"/coreos.com/network/subnets/{bad}")


def test_a_device_deleted_by_hand_is_made_again_with_its_peers(c: Cluster) -> None:
    h1, h2 = c.hosts[1], c.hosts[2]
    before, index = peers(h1), ifindex(h1, "flannel-wg")
    h1.run("ip", "link", "del", "flannel-wg")  # wireguard-go exits with its device

    def remade() -> bool:
        new = h1.run("cat", "/sys/class/net/flannel-wg/ifindex", check=False).stdout.strip()
        return new not in ("", str(index)) and set(
            h1.run("wg", "show", "flannel-wg", "peers", check=False).stdout.split()) == before

    assert eventually(remade, timeout=20), h1.log_file.read_text()[-2000:]
    assert eventually(lambda: "device flannel-wg made again with 3 peer(s)" in h1.log_file.read_text())
    assert eventually(lambda: c.ping(c.pod_ns(h1, 1), h2.pods[0]), timeout=15)
    assert eventually(lambda: c.ping(c.pod_ns(h1, 1), h2.pods6[0]), timeout=15)


def test_removal_on_shutdown_is_an_option(c: Cluster) -> None:
    h3 = c.hosts[3]
    assert c.stop_flanneld(h3) == 0
    assert h3.run("test", "-e", "/sys/class/net/flannel-wg", check=False).returncode == 0  # kept by default
    c.start_flanneld(h3, env={"FLANNEL_WIREGUARD_REMOVE_ON_SHUTDOWN": "true"})
    c.wait_ready(h3)
    assert c.stop_flanneld(h3) == 0
    assert h3.run("test", "-e", "/sys/class/net/flannel-wg", check=False).returncode == 1
    assert h3.holder is not None
    assert eventually(lambda: not any("wireguard-go" in _cmdline(pid) for pid in h3.holder.pids()))  # type: ignore[union-attr]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""
