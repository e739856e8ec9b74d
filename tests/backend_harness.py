"""Shared pieces for testing a backend against the real kernel in a namespace, with lease events fed directly.

A backend opens ``Netlink()`` in the *caller's* namespace and may write sysctls through /proc, which are also
resolved there. So every call into a backend goes through ``Node.call``, which runs it with this thread moved
into the test namespace (``flannel.netlink.nsenter.entered``: setns there, setns back in a ``finally``). The
autouse fixture ``stays_in_own_namespace`` (import it into a test module) checks that the thread is back home
after every test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from typing import Any, TypeVar

import pytest

from flannel.backend.base import BackendContext, ExternalInterface
from flannel.backend.registry import create_backend
from flannel.config import NetworkConfig
from flannel.lease import Lease, LeaseAttrs, LeaseEvent
from flannel.netlink.nsenter import entered
from flannel.subnet.manager import WatchResult
from tests.netns import UNDERLAY_IP, NetNS

T = TypeVar("T")


class FakeSubnetManager:
    """Hands out one fixed lease and records the attributes it was asked to publish."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.attrs: list[LeaseAttrs] = []

    async def get_network_config(self) -> NetworkConfig:
        raise AssertionError("the backend must not read the config itself")

    async def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        self.attrs.append(attrs)
        return dataclasses.replace(self.lease, attrs=attrs)

    def watch_leases(self) -> Any:
        raise AssertionError("events are fed directly in these tests")

    async def complete_lease(self, lease: Lease) -> None:
        raise AssertionError("not used")

    async def close(self) -> None:
        pass


@dataclasses.dataclass
class Node:
    """One registered network inside a namespace."""

    ns: NetNS
    sm: FakeSubnetManager
    network: Any

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a backend call with this thread inside the namespace (see the module docstring)."""
        with entered(self.ns.name):
            return fn(*args)

    def events(self, *events: LeaseEvent) -> None:
        self.call(self.network.handle_events, list(events))

    def apply(self, result: WatchResult) -> None:
        """What ``run()`` does with one watch result."""
        self.events(*self.network.tracker.apply(result))

    def reconcile(self) -> int:
        result: int = self.call(self.network.reconcile)
        return result


class Nodes:
    """The networks one test registers in its namespace; ``close()`` releases their netlink sockets."""

    def __init__(self, ns: NetNS) -> None:
        self.ns = ns
        self.made: list[Node] = []

    def register(self, config: NetworkConfig, own: Lease, ext: ExternalInterface | None = None) -> Node:
        """The backend ``config`` names, registered inside the namespace with a fake subnet manager handing
        out ``own``, on ``ext`` (default: the namespace's veth underlay)."""
        sm = FakeSubnetManager(own)
        with entered(self.ns.name):
            backend = create_backend(BackendContext(subnet_manager=sm, ext_iface=ext or ext_iface(self.ns)), config)
            network = asyncio.run(backend.register_network(config))
        node = Node(self.ns, sm, network)
        self.made.append(node)
        return node

    def close(self) -> None:
        for node in self.made:
            node.network.nl.close()


def ext_iface(ns: NetNS, dev: str = "eth0") -> ExternalInterface:
    """The namespace's veth underlay as the external interface (address ``UNDERLAY_IP``)."""
    link = ns.ip_json("link", "show", "dev", dev)[0]
    addr = IPv4Address(UNDERLAY_IP)
    return ExternalInterface(name=dev, index=int(link["ifindex"]), mtu=int(link["mtu"]), iface_addr=addr,
                             iface_v6_addr=None, ext_addr=addr, ext_v6_addr=None)


def _ns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@pytest.fixture(autouse=True)
def stays_in_own_namespace() -> Iterator[None]:
    """After every test the thread must be back in its own network namespace."""
    before = _ns_inode()
    yield
    assert _ns_inode() == before, "the test thread was left in another network namespace"
