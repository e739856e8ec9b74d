"""End to end: real container runtimes on two flannel hosts (vxlan, ``--ip-masq``) in namespaces.

For each of podman (CNI backend, upstream's ``cni-conf.json``), containerd (``ctr run --cni``) and dockerd
(options from ``mk-docker-opts``), with one cluster per runtime and the same two containers (``c1`` on host 1,
``c2`` on host 2) throughout: containers get their address from their host's flannel subnet and the overlay's
MTU, reach each other across hosts, reach the outside world masqueraded to their host's address, keep
working across a flanneld restart, and give their address back when removed. See tests/e2e/runtimes/hosts.py
and runtimes.py for how the runtimes run in a simulated host. Run them alone with ``make runtimes``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.cluster import Cluster, Host, eventually, subnet_of
from tests.e2e.conftest import _missing_tools
from tests.e2e.runtimes.hosts import RuntimeHosts, runtime_hosts
from tests.e2e.runtimes.image import BUSYBOX
from tests.e2e.runtimes.runtimes import RUNTIMES, Docker, Runtime, cni_state
from tests.e2e.test_masquerade import PORT, PeerServer

pytestmark = [pytest.mark.e2e, pytest.mark.root]

TCP_PORT = 8080
"""A busybox nc server in container c1."""
HOST_PORT = 18080
"""Host 1's port published to it (podman and docker)."""


@dataclass
class Setup:
    rt: Runtime
    hosts: RuntimeHosts

    @property
    def cluster(self) -> Cluster:
        return self.hosts.cluster


@pytest.fixture(scope="module", params=list(RUNTIMES))
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (network namespaces)")
    runtime = RUNTIMES[request.param]
    reason = runtime.missing()
    if reason:
        pytest.skip(reason)
    missing = _missing_tools()
    if missing:
        pytest.fail(f"missing tools: {', '.join(missing)} (make test installs them)")
    with runtime_hosts(runtime.binds) as hosts:
        rt = runtime(hosts)
        try:
            for host in hosts.hosts:
                rt.setup(host)
            rt.start(hosts.h1, "c1", publish=f"{HOST_PORT}:{TCP_PORT}" if rt.publishes else None)
            rt.start(hosts.h2, "c2")
            yield Setup(rt, hosts)
        finally:
            rt.close()


def test_containers_get_an_address_from_their_hosts_subnet_and_the_overlay_mtu(setup: Setup) -> None:
    rt, h1, h2 = setup.rt, setup.hosts.h1, setup.hosts.h2
    for host, name in ((h1, "c1"), (h2, "c2")):
        addr, mtu = rt.address(host, name)
        iface = ipaddress.IPv4Interface(addr)
        assert str(iface.network) == subnet_of(host), f"{name} on h{host.n}: {addr}"
        assert iface.ip != ipaddress.IPv4Interface(host.env()["FLANNEL_SUBNET"]).ip  # the bridge's own
        assert mtu == int(host.env()["FLANNEL_MTU"])
    if isinstance(rt, Docker):  # the options mk-docker-opts wrote, and docker0 built from them
        env = h1.env()
        assert rt.options(h1) == f'DOCKER_OPTS=" --bip={env["FLANNEL_SUBNET"]} --ip-masq=false ' \
                                 f'--mtu={env["FLANNEL_MTU"]}"\n'
        assert f"inet {env['FLANNEL_SUBNET']} " in h1.run("ip", "-o", "-4", "addr", "show", "docker0").stdout
        # --ip-masq=false: flanneld masquerades (FLANNEL_IPMASQ=true), dockerd does not masquerade the subnet
        # (it keeps only its hairpin rule for the published port, -s c1 -d c1)
        postrouting = h1.run("iptables", "-w", "-t", "nat", "-S", "POSTROUTING").stdout
        subnet = subnet_of(h1)
        assert f"-s {subnet} ! -o docker0 -j MASQUERADE" not in postrouting, postrouting
        assert "-j FLANNEL-POSTRTG" in postrouting, postrouting
        forward = h1.run("iptables", "-w", "-S", "FORWARD").stdout
        assert "-P FORWARD DROP" in forward and "-j FLANNEL-FWD" in forward, forward


def test_a_container_reaches_a_container_on_the_other_host(setup: Setup) -> None:
    rt, h1, h2 = setup.rt, setup.hosts.h1, setup.hosts.h2
    a, b = rt.address(h1, "c1")[0].split("/")[0], rt.address(h2, "c2")[0].split("/")[0]
    accepted = {host.n: flannel_forwarded(host) for host in (h1, h2)}
    assert eventually(lambda: rt.ping(h1, "c1", b), timeout=30), f"c1 ({a}) on h1 -> c2 ({b}) on h2: {rt.last_ping}"
    assert rt.ping(h2, "c2", a), f"c2 ({b}) on h2 -> c1 ({a}) on h1: {rt.last_ping}"
    if isinstance(rt, Docker):  # dockerd's FORWARD policy is DROP: flanneld's rules let the pings into docker0
        for host in (h1, h2):
            assert flannel_forwarded(host) > accepted[host.n], f"h{host.n}: FLANNEL-FWD accepted nothing"


def flannel_forwarded(host: Host) -> int:
    """Packets accepted by flanneld's FORWARD chain so far."""
    lines = host.run("iptables", "-w", "-L", "FLANNEL-FWD", "-n", "-v", "-x").stdout.splitlines()[2:]
    return sum(int(line.split()[0]) for line in lines if line.strip())


def seen_by_outside(setup: Setup, host: Host, name: str) -> str:
    """The source address the outside host sees for a TCP connection from the container."""
    server = PeerServer(setup.hosts.outside)
    try:
        r = setup.rt.exec(host, name, "nc", "-w", "5", Cluster.OUTSIDE_IP, str(PORT))
    finally:
        server.stop()
    assert r.returncode == 0, f"{name} -> outside: {r.stdout} {r.stderr}"
    return r.stdout.strip()


def test_a_container_reaches_the_outside_with_its_hosts_address(setup: Setup) -> None:
    h1, h2 = setup.hosts.h1, setup.hosts.h2
    assert seen_by_outside(setup, h1, "c1") == h1.ip
    assert seen_by_outside(setup, h2, "c2") == h2.ip


def test_containers_keep_their_address_and_reach_each_other_after_a_flanneld_restart(setup: Setup) -> None:
    rt, cluster, h1, h2 = setup.rt, setup.cluster, setup.hosts.h1, setup.hosts.h2
    before = rt.address(h1, "c1")
    b = rt.address(h2, "c2")[0].split("/")[0]
    cluster.stop_flanneld(h1)
    cluster.start_flanneld(h1, "--ip-masq")
    cluster.wait_ready(h1)
    assert rt.address(h1, "c1") == before
    assert eventually(lambda: rt.ping(h1, "c1", b), timeout=30), f"c1 -> c2 ({b}) after the restart: {rt.last_ping}"
    assert seen_by_outside(setup, h1, "c1") == h1.ip


@pytest.mark.parametrize("setup", [n for n, rt in RUNTIMES.items() if rt.publishes], indirect=True)
def test_tcp_across_hosts_to_the_container_and_to_its_published_port(setup: Setup) -> None:
    """c2 on host 2 connects to c1 on host 1 by c1's own address; host 2 itself connects through host 1's
    published port (podman: the conflist's portmap plugin, chained after flannel; docker: dockerd). busybox's
    nc serves (Debian's static busybox wget crashes, so no httpd)."""
    rt, h1, h2 = setup.rt, setup.hosts.h1, setup.hosts.h2
    serve = f"nc -ll -p {TCP_PORT} -e echo served-by-c1 </dev/null >/dev/null 2>&1 &"
    r = rt.exec(h1, "c1", "sh", "-c", serve)
    assert r.returncode == 0, f"{r.stdout} {r.stderr}"
    c1 = rt.address(h1, "c1")[0].split("/")[0]

    def from_c2() -> bool:
        return rt.exec(h2, "c2", "nc", "-w", "5", c1, str(TCP_PORT)).stdout == "served-by-c1\n"

    assert eventually(from_c2), f"c2 -> c1 ({c1}):{TCP_PORT}"
    r = h2.run("sh", "-c", f"{BUSYBOX} nc -w 5 {h1.ip} {HOST_PORT} </dev/null", check=False)
    assert r.stdout == "served-by-c1\n", f"h2 -> {h1.ip}:{HOST_PORT}: {r.stdout} {r.stderr}"


def test_a_removed_container_gives_its_address_back(setup: Setup) -> None:
    rt, h1 = setup.rt, setup.hosts.h1
    bridge = "docker0" if isinstance(rt, Docker) else "cni0"

    def ports() -> set[str]:
        return set(h1.run("ip", "-o", "link", "show", "master", bridge).stdout.split("\n")) - {""}

    state, attached = cni_state(h1), ports()
    rt.start(h1, "c3")
    addr = rt.address(h1, "c3")[0]
    ip = addr.split("/")[0]
    assert len(ports() - attached) == 1, "one more port on the bridge"
    if rt.cni:
        during = cni_state(h1)
        assert during["reserved"] - state["reserved"] == {ip}, "host-local reserved the address"
        assert len(during["flannel"] - state["flannel"]) == 1, "the flannel plugin saved its delegate config"
    else:
        assert isinstance(rt, Docker) and addr in rt.endpoints(h1)
    rt.remove(h1, "c3")
    assert ports() == attached, "the container's veth is gone"
    if rt.cni:
        assert cni_state(h1) == state, "reservation and saved config removed by the plugin's DEL"
    else:
        assert isinstance(rt, Docker) and addr not in rt.endpoints(h1)
    assert ip not in h1.run("ip", "-o", "-4", "addr").stdout
