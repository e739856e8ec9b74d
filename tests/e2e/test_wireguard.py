"""wireguard, ``separate`` mode, dual stack, over ``wireguard-go`` (this kernel has no WireGuard): three
simulated hosts, each with its own /run (its own key file and /var/run/wireguard) (spec §10.6, §5.1).

One cluster for the module; the tests run in order: one takes a host away, and the last adds a peer built by
hand the way upstream flanneld lays out separate mode.
"""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, Host, eventually, subnet_of
from tests.e2e.wireguard_support import RECONCILE, CountingPing, ifindex, peers, pubkey, wg, wg_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def c() -> Iterator[Cluster]:
    yield from wg_cluster('{"Type":"wireguard","PersistentKeepaliveInterval":25}', ipv6=True)


def test_every_pod_pings_every_other_pod_over_both_devices(c: Cluster) -> None:
    assert eventually(lambda: all(c.matrix().values()), timeout=20), c.matrix()
    assert eventually(lambda: all(c.matrix(v6=True).values()), timeout=20), c.matrix(v6=True)
    for host in c.hosts.values():
        assert "wireguard-go (userspace)" in host.log_file.read_text()
        others = {pubkey(h) for h in c.hosts.values() if h is not host}
        assert peers(host) == others
        assert peers(host, "flannel-wg-v6") == others
        assert host.run("cat", "/sys/class/net/flannel-wg/mtu").stdout.strip() == str(1500 - 80)


def test_lease_data_is_upstreams_bytes(c: Cluster) -> None:
    leases = c.leases()
    for host in c.hosts.values():
        key = pubkey(host)
        assert len(base64.b64decode(key)) == 32
        value = next(v for k, v in leases.items() if k.startswith(subnet_of(host).replace("/", "-")))
        assert value == (f'{{"PublicIP":"{host.ip}","PublicIPv6":"{host.ip6}","BackendType":"wireguard",'
                         f'"BackendData":{{"PublicKey":"{key}","Port":51820}},'
                         f'"BackendV6Data":{{"PublicKey":"{key}","Port":51821}}}}')
        dump = wg(c.hosts[1], "show", "flannel-wg", "dump")
        if host is not c.hosts[1]:
            line = next(x.split("\t") for x in dump.splitlines() if x.startswith(key))
            assert line[2] == f"{host.ip}:51820" and line[3] == subnet_of(host) and line[7] == "25"


def test_key_file_is_upstreams_format(c: Cluster) -> None:
    h = c.hosts[1]
    assert h.holder is not None
    path = h.holder.run_dir / "flannel" / "wgkey"
    text = path.read_bytes()
    assert len(text) == 44 and not text.endswith(b"\n")
    assert oct(path.stat().st_mode & 0o777) == "0o400" and oct(path.parent.stat().st_mode & 0o777) == "0o755"
    derived = h.run("sh", "-c", "wg pubkey < /run/flannel/wgkey").stdout.strip()
    assert derived == pubkey(h)


def test_a_peer_address_and_route_changed_by_hand_come_back(c: Cluster) -> None:
    h1, h2 = c.hosts[1], c.hosts[2]
    key = pubkey(h2)
    own = subnet_of(h1).split("/")[0]
    wg(h1, "set", "flannel-wg", "peer", key, "remove")
    wg(h1, "set", "flannel-wg-v6", "peer", key, "allowed-ips", "fd00:10:244:ff::/64")
    h1.run("ip", "addr", "del", f"{own}/32", "dev", "flannel-wg")
    h1.run("ip", "-6", "route", "del", "fd00:10:244::/56", "dev", "flannel-wg-v6")
    assert key not in peers(h1)
    assert eventually(lambda: key in peers(h1), timeout=15), h1.log_file.read_text()[-2000:]
    assert eventually(lambda: "fd00:10:244:ff::/64" not in wg(h1, "show", "flannel-wg-v6", "allowed-ips"))
    assert eventually(lambda: f"{own}/32" in h1.run("ip", "addr", "show", "dev", "flannel-wg").stdout)
    assert eventually(lambda: "fd00:10:244::/56" in h1.run("ip", "-6", "route", "show", "dev", "flannel-wg-v6").stdout)
    assert eventually(lambda: c.ping(c.pod_ns(h1, 1), h2.pods[0]))
    assert eventually(lambda: c.ping(c.pod_ns(h1, 1), h2.pods6[0]))


def test_restart_keeps_subnet_key_and_device_and_loses_no_ping(c: Cluster) -> None:
    h1, h2 = c.hosts[1], c.hosts[2]
    before = (subnet_of(h1), pubkey(h1), ifindex(h1, "flannel-wg"), ifindex(h1, "flannel-wg-v6"))
    ping = CountingPing(c.pod_ns(h2, 1), h1.pods[0])
    try:
        assert eventually(lambda: len(ping.replies) >= 10, timeout=15), ping.lines[-5:]
        assert c.stop_flanneld(h1) == 0
        c.start_flanneld(h1, RECONCILE)
        c.wait_ready(h1)
        ready = time.monotonic()
        # two reconcile rounds of the new flanneld pass while the ping runs (it must not drop a peer)
        assert eventually(lambda: ping.replies_since(ready) >= 120, timeout=30), ping.lines[-5:]
    finally:
        received, missing = ping.stop()
    print(f"restart of flanneld on h1: {received} ping replies, {len(missing)} lost")
    assert not missing, f"lost pings (icmp_seq) across the restart: {missing}"
    assert (subnet_of(h1), pubkey(h1), ifindex(h1, "flannel-wg"), ifindex(h1, "flannel-wg-v6")) == before
    assert "adopting existing wireguard device flannel-wg" in h1.log_file.read_text()


def test_a_new_key_replaces_the_old_peer_everywhere(c: Cluster) -> None:
    """Upstream leaves the old key's peer behind on every other node; here it goes."""
    h1, h2 = c.hosts[1], c.hosts[2]
    old = pubkey(h2)
    assert c.stop_flanneld(h2) == 0
    h2.run("rm", "/run/flannel/wgkey")
    c.start_flanneld(h2, RECONCILE)
    c.wait_ready(h2)
    new = pubkey(h2)
    assert new != old and "has another private key; recreating it" in h2.log_file.read_text()
    for host in (h1, c.hosts[3]):
        assert eventually(lambda host=host: new in peers(host) and old not in peers(host)
                          and new in peers(host, "flannel-wg-v6") and old not in peers(host, "flannel-wg-v6")), \
            wg(host, "show")
    assert eventually(lambda: c.ping(c.pod_ns(h1, 1), h2.pods[0]) and c.ping(c.pod_ns(h1, 1), h2.pods6[0]))


def test_a_lease_leaving_removes_its_peer(c: Cluster) -> None:
    h1, h3 = c.hosts[1], c.hosts[3]
    key = pubkey(h3)
    assert c.stop_flanneld(h3, signal.SIGTERM) == 0
    assert key in peers(c.hosts[2])
    full = next(k for k in c.leases() if k.startswith(subnet_of(h3).replace("/", "-")))
    c.etcdctl("del", f"/coreos.com/network/subnets/{full}")
    for host in (h1, c.hosts[2]):
        assert eventually(lambda host=host: key not in peers(host) and key not in peers(host, "flannel-wg-v6")), \
            wg(host, "show")
    assert len(c.leases()) == 2


UP_V4, UP_V6 = "10.244.250", "fd00:10:244:fa"
"""The hand-built upstream peer's subnets: 10.244.250.0/24 and fd00:10:244:fa::/64."""


def build_upstream_separate_peer(c: Cluster) -> Host:
    """Host 4, configured by hand exactly as upstream flanneld lays out separate mode: two ``wireguard-go``
    devices sharing one private key, flannel-wg on 51820 (IPv4 peers at their PublicIP) and flannel-wg-v6 on
    51821 (IPv6 peers at their PublicIPv6), each holding its subnet's network address and routing the whole
    network of its family; its lease written in Go's bytes."""
    h4 = c.add_host(4)
    assert h4.ip6 is not None
    h4.run("sh", "-c", "umask 077; wg genkey > /run/wgkey")
    key = h4.run("sh", "-c", "wg pubkey < /run/wgkey").stdout.strip()
    for dev, port in (("flannel-wg", 51820), ("flannel-wg-v6", 51821)):
        h4.run("wireguard-go", dev)
        h4.run("wg", "set", dev, "private-key", "/run/wgkey", "listen-port", str(port))
        h4.run("ip", "link", "set", dev, "mtu", "1420")
    for cmd in (["addr", "add", f"{UP_V4}.0/32", "dev", "flannel-wg"],
                ["-6", "addr", "add", f"{UP_V6}::/128", "dev", "flannel-wg-v6"],
                ["link", "set", "flannel-wg", "up"],
                ["link", "set", "flannel-wg-v6", "up"],
                ["route", "replace", "10.244.0.0/16", "dev", "flannel-wg", "scope", "link"],
                ["-6", "route", "replace", "fd00:10:244::/56", "dev", "flannel-wg-v6"],
                ["addr", "add", f"{UP_V4}.1/32", "dev", "lo"],  # a "pod" address on the peer
                ["-6", "addr", "add", f"{UP_V6}::1/128", "dev", "lo"]):
        h4.run("ip", *cmd)
    for host in (c.hosts[1], c.hosts[2]):
        v6 = host.env()["FLANNEL_IPV6_SUBNET"].rsplit("::", 1)[0] + "::/64"
        h4.run("wg", "set", "flannel-wg", "peer", pubkey(host), "endpoint", f"{host.ip}:51820",
               "allowed-ips", subnet_of(host))
        h4.run("wg", "set", "flannel-wg-v6", "peer", pubkey(host), "endpoint", f"[{host.ip6}]:51821",
               "allowed-ips", v6)
    value = (f'{{"PublicIP":"{h4.ip}","PublicIPv6":"{h4.ip6}","BackendType":"wireguard",'
             f'"BackendData":{{"PublicKey":"{key}","Port":51820}},'
             f'"BackendV6Data":{{"PublicKey":"{key}","Port":51821}}}}')
    c.etcdctl("put", f"/coreos.com/network/subnets/{UP_V4}.0-24&{UP_V6}::-64", value)
    return h4


def test_a_hand_built_upstream_separate_mode_peer_exchanges_traffic_with_flannel_hosts(c: Cluster) -> None:
    h4 = build_upstream_separate_peer(c)
    key = pubkey(h4)
    flannel_hosts = (c.hosts[1], c.hosts[2])  # host 3 left in the test before
    for host in flannel_hosts:
        assert eventually(lambda host=host: key in peers(host) and key in peers(host, "flannel-wg-v6"),
                          timeout=15), host.log_file.read_text()[-2000:]
        v4 = next(x.split("\t") for x in wg(host, "show", "flannel-wg", "dump").splitlines() if x.startswith(key))
        v6 = next(x.split("\t") for x in wg(host, "show", "flannel-wg-v6", "dump").splitlines()
                  if x.startswith(key))
        assert v4[2] == f"{h4.ip}:51820" and v4[3] == f"{UP_V4}.0/24"
        assert v6[2] == f"[{h4.ip6}]:51821" and v6[3] == f"{UP_V6}::/64"
    for host in flannel_hosts:
        pod = c.pod_ns(host, 1)
        assert eventually(lambda pod=pod: c.ping(pod, f"{UP_V4}.1"), timeout=15), wg(host, "show")
        assert eventually(lambda pod=pod: c.ping(pod, f"{UP_V6}::1"), timeout=15), wg(host, "show")
        assert h4.run("ping", "-c1", "-W2", "-I", f"{UP_V4}.1", host.pods[0], check=False).returncode == 0
        assert h4.run("ping", "-6", "-c1", "-W2", "-I", f"{UP_V6}::1", host.pods6[0], check=False).returncode == 0
    for dev in ("flannel-wg", "flannel-wg-v6"):
        transfer = [line.split("\t") for line in wg(h4, "show", dev, "transfer").splitlines()]
        assert len(transfer) == 2 and all(int(rx) > 0 and int(tx) > 0 for _, rx, tx in transfer), (dev, transfer)
