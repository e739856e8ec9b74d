"""Hosts with their own mount namespace (tests/host_mounts.py): the base the wireguard, ipsec and container
runtime tests build on. flanneld runs inside it with its default subnet file, and each host sees only its own
``/run``."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster, eventually
from tests.host_mounts import MountHolder
from tests.waiting import wait_until_sync


@pytest.fixture(scope="module")
def mounts_cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (network namespaces)")
    c = Cluster(private_mounts=True)
    try:
        c.start()
        for n in (1, 2):
            c.add_host(n)
        yield c
    finally:
        c.close()


def test_each_host_has_its_own_run_and_the_default_subnet_file_is_per_host(mounts_cluster: Cluster) -> None:
    c = mounts_cluster
    h1, h2 = c.hosts[1], c.hosts[2]
    h1.run("sh", "-c", "mkdir -p /var/run/wireguard && echo h1 > /var/run/wireguard/mark")
    assert h2.run("test", "-e", "/var/run/wireguard/mark", check=False).returncode == 1
    assert h1.holder is not None and (h1.holder.run_dir / "wireguard" / "mark").read_text() == "h1\n"
    for host in (h1, h2):
        c.start_flanneld(host)
    for host in (h1, h2):
        c.wait_ready(host)
        assert host.holder is not None
        # the Cluster passes --subnet-file; flanneld's own default path is then untouched inside the host
        assert host.run("ls", "/sys/class/net").stdout.split().count("eth0") == 1
    pod1, pod2 = c.add_pod(h1), c.add_pod(h2)
    assert eventually(lambda: c.ping(c.pod_ns(h1, 1), pod2)), f"{pod1} -> {pod2} across hosts with private mounts"


def test_close_kills_what_a_host_left_running(mounts_cluster: Cluster, tmp_path: Path) -> None:
    holder = MountHolder(mounts_cluster.hosts[1].ns, tmp_path)
    try:
        proc = holder.popen(["sh", "-c", "sleep 300 & exec sleep 300"])
        wait_until_sync(lambda: len(holder.pids()) >= 2, "the daemon and its child run in the host")
        left = holder.pids()
    finally:
        holder.close()
    assert proc.wait(5) == -signal.SIGTERM
    assert not [pid for pid in left if _alive(pid)], "every process of the host is gone"


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (an orphan's zombie waits for this machine's init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
