"""Helpers of the wireguard end-to-end tests: a 3-host cluster with private mounts, ``wg`` on a host, and a
ping that counts its losses across a flanneld restart."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from tests.e2e.cluster import Cluster, Host

if TYPE_CHECKING:
    from tests.e2e.test_kube_cluster import KubeCluster

RECONCILE = "--reconcile-interval=2"


def wg_cluster(backend: str, ipv6: bool, hosts: int = 3) -> Iterator[Cluster]:
    """``hosts`` hosts (none: the caller adds them), each with its own /run (so its own /var/run/wireguard and
    key file), flanneld (etcd mode) and a pod on each."""
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (network namespaces)")
    missing = [t for t in ("wireguard-go", "wg", "etcd", "ping") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (make deps installs wireguard-go and wireguard-tools)")
    c = Cluster(backend=backend, ipv6_network="fd00:10:244::/56" if ipv6 else None, private_mounts=True)
    try:
        c.start()
        for n in range(1, hosts + 1):
            c.start_flanneld(c.add_host(n), RECONCILE)
        for host in c.hosts.values():
            c.wait_ready(host)
            c.add_pod(host)
        yield c
    finally:
        c.close()


def wg(host: Host, *args: str) -> str:
    """``wg ARGS`` on the host (it finds wireguard-go's socket in the host's own /var/run/wireguard)."""
    return host.run("wg", *args).stdout


def peers(host: Host, dev: str = "flannel-wg") -> set[str]:
    return set(wg(host, "show", dev, "peers").split())


def pubkey(host: Host, dev: str = "flannel-wg") -> str:
    return wg(host, "show", dev, "public-key").strip()


def ifindex(host: Host, dev: str) -> int:
    return int(host.run("cat", f"/sys/class/net/{dev}/ifindex").stdout)


class CountingPing:
    """``ping -i 0.05`` from a pod, its replies timestamped as they arrive; ``stop`` gives (sent, received)."""

    def __init__(self, src_ns: str, dst: str) -> None:
        family = ["-6"] if ":" in dst else []
        self.proc = subprocess.Popen(["ip", "netns", "exec", src_ns, "ping", *family, "-i", "0.05", "-w", "120", dst],
                                     stdout=subprocess.PIPE, text=True)
        self.replies: list[float] = []
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "bytes from" in line:
                self.replies.append(time.monotonic())

    def replies_since(self, moment: float) -> int:
        return sum(1 for t in self.replies if t >= moment)

    def stop(self) -> tuple[int, list[int]]:
        """Stop; returns the number of replies and the sequence numbers missing before the last reply (a
        request still in flight when the ping is stopped is not a loss)."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        seqs = {int(m.group(1)) for line in self.lines
                if "bytes from" in line and (m := re.search(r"icmp_seq=(\d+)", line))}
        missing = sorted(set(range(1, max(seqs, default=0) + 1)) - seqs)
        return len(seqs), missing


def kube_wg_cluster(net_conf: str, add_node: Callable[[KubeCluster, int], None],
                    ready: Callable[[Cluster, Host], object]) -> Iterator[KubeCluster]:
    """Two wireguard hosts in Kubernetes mode against the fake API server (a module fixture's body):
    ``add_node(k, n)`` creates node ``h<n>`` in the API, ``ready(c, host)`` waits until its flanneld is ready."""
    from tests.e2e.test_kube_cluster import KubeCluster

    gen = wg_cluster('{"Type":"wireguard"}', ipv6=True, hosts=0)  # the hosts start in kube mode below
    c = next(gen)
    k = KubeCluster.serve(c)
    try:
        k.net_conf.write_text(net_conf)
        for n in (1, 2):
            add_node(k, n)
            k.start(c.add_host(n))
        for host in c.hosts.values():
            ready(c, host)
            c.add_pod(host)
        yield k
    finally:
        k.api.stop()
        gen.close()
