"""Simulated cloud hosts: a cluster whose underlay switch namespace plays the cloud's VPC router.

Each host gets the cloud's metadata service at its real link-local address (on the host namespace's own
``lo``), served by the test process; the cloud API fake listens on the underlay (198.18.0.1) inside the
switch namespace. The "VPC router" is the switch namespace's kernel: ``sync_router`` copies the fake's route
table into it (``ip route replace <subnet> via <host>``), which is what the real VPC does with its table. The
hosts' default route already points at the switch, so pods reach each other only through those routes.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from flannel.netlink.nsenter import entered
from tests.cloud_fakes.server import FakeServer, Handler
from tests.e2e.cluster import Cluster, Host, in_ns
from tests.e2e.conftest import _cluster

T = TypeVar("T")
UNDERLAY_GW = "198.18.0.1"


class CloudCluster:
    """A ``Cluster`` plus the cloud API fake, per-host metadata servers and the router's kernel routes."""

    def __init__(self, cluster: Cluster, api: Handler) -> None:
        self.c = cluster
        self.ul = f"{cluster.prefix}ul"
        in_ns(self.ul, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # A bridge without an address of its own takes the lowest MAC of its ports, so adding a host can change
        # br0's MAC under the hosts' ARP caches, and their connections to the API on 198.18.0.1 then time out
        # until the neighbour entry is re-validated. A fixed address stays.
        in_ns(self.ul, "ip", "link", "set", "br0", "address", "02:00:c6:12:00:01")
        self.api = FakeServer(api, UNDERLAY_GW, netns=self.ul)
        self.metadata: dict[int, FakeServer] = {}

    def add_host(self, n: int, metadata_ip: str, metadata: Handler) -> Host:
        host = self.c.add_host(n)
        in_ns(host.ns, "ip", "addr", "add", f"{metadata_ip}/32", "dev", "lo")
        self.metadata[n] = FakeServer(metadata, metadata_ip, 80, netns=host.ns)
        return host

    def start(self, host: Host, env: dict[str, str]) -> None:
        self.c.start_flanneld(host, env=env)

    def sync_router(self, routes: dict[str, str]) -> None:
        """Make the router's kernel hold exactly ``routes`` (destination → next-hop address) in the network."""
        have = {line.split()[0] for line in in_ns(self.ul, "ip", "-4", "route", "show", "proto", "static")
                .stdout.splitlines()}
        for dst, via in routes.items():
            in_ns(self.ul, "ip", "route", "replace", dst, "via", via, "proto", "static")
        for dst in have - set(routes):
            in_ns(self.ul, "ip", "route", "del", dst, "proto", "static", check=False)

    def lease_value(self, subnet: str) -> str:
        return self.c.leases()[subnet.replace("/", "-")]

    def close(self) -> None:
        for server in self.metadata.values():
            server.close()
        self.api.close()


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread inside ``ns`` (an SDK's sockets are then made there), and return its value."""
    out: list[Any] = []

    def body() -> None:
        try:
            with entered(ns):
                out.append(("ok", fn()))
        except BaseException as exc:  # handed to the caller's thread
            out.append(("err", exc))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(60)
    kind, value = out[0]
    if kind == "err":
        raise value
    result: T = value
    return result


@contextlib.contextmanager
def cloud_cluster(backend: dict[str, Any], api: Handler) -> Iterator[CloudCluster]:
    for c in _cluster(backend=json.dumps(backend)):
        cc = CloudCluster(c, api)
        try:
            yield cc
        finally:
            cc.close()


def needs(module: str, extra: str) -> None:
    """Skip the module when the cloud's SDK (its extra) is not installed."""
    pytest.importorskip(module, reason=f"the {extra} extra is not installed (pip install 'flannel[{extra}]')")
