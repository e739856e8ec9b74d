"""``KubeSubnetManager.watch_leases`` against the strict fake API server: the snapshot and the lease events.

"Nothing was yielded" for an event is shown by ordering, not by waiting: the results come in order, so when the
next result is the one for a later marker change, the earlier change yielded nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any, cast

import pytest

from flannel.kube.client import KubeClient
from flannel.lease import Lease, LeaseAttrs
from flannel.subnet.kube_manager import KubeSubnetManager
from flannel.subnet.manager import WatchResult
from tests.integration.test_kube_manager import (
    DUAL_CONF,
    NAMES,
    client_fixture,  # noqa: F401
    flannel_annotations,
    make_manager,
    vxlan_data,
    write_conf,
)
from tests.kube_fake import FakeKubeApi
from tests.kube_fake.fixtures import fake_api_fixture  # noqa: F401

Watch = AsyncGenerator[WatchResult, None]


def lease_of(cidr: str, public_ip: str, mac: str = "6e:2f:8c:8a:11:5c") -> Lease:
    """The lease a node with ``flannel_annotations(public_ip, mac)`` and pod CIDR ``cidr`` stands for."""
    attrs = LeaseAttrs(public_ip=IPv4Address(public_ip), backend_type="vxlan", backend_data=vxlan_data(mac))
    return Lease(subnet=IPv4Network(cidr), attrs=attrs)


def add_peer(fake: FakeKubeApi, name: str, cidr: str, public_ip: str, mac: str = "6e:2f:8c:8a:11:5c") -> Lease:
    fake.create_node(name, pod_cidr=cidr, annotations=flannel_annotations(public_ip, mac))
    return lease_of(cidr, public_ip, mac)


def annotate(fake: FakeKubeApi, name: str, **annotations: str) -> None:
    """What ``kubectl annotate --overwrite`` does (keys given with ``_`` for ``-``, under flannel's prefix)."""
    patch = {"metadata": {"annotations": {f"flannel.alpha.coreos.com/{k.replace('_', '-')}": v
                                          for k, v in annotations.items()}}}
    fake.store.patch_node(name, patch, "application/merge-patch+json")


async def next_result(watch: Watch, timeout: float = 10) -> WatchResult:
    async with asyncio.timeout(timeout):
        return await anext(watch)


@contextlib.asynccontextmanager
async def watching(manager: KubeSubnetManager) -> AsyncIterator[Watch]:
    watch = cast(Watch, manager.watch_leases())
    try:
        yield watch
    finally:
        await watch.aclose()


async def started(client: KubeClient, tmp_path: Path, **options: Any) -> KubeSubnetManager:
    """A manager for node "self" after ``get_network_config``."""
    manager = make_manager(client, write_conf(tmp_path), **options)
    await manager.get_network_config()
    return manager


def snapshot_set(result: WatchResult) -> set[Lease]:
    assert result.snapshot is not None, f"expected a snapshot, got {result}"
    return set(result.snapshot)


@pytest.fixture(name="own_node")
def own_node_fixture(fake_api: FakeKubeApi) -> None:
    """This node, already flannel-managed (it must never appear among the watched leases)."""
    fake_api.create_node("self", pod_cidr="10.244.0.0/24", annotations=flannel_annotations("198.18.0.10"))


@pytest.mark.usefixtures("own_node")
async def test_first_result_is_a_snapshot_of_the_other_flannel_nodes(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    a = add_peer(fake_api, "node-a", "10.244.1.0/24", "198.18.0.11")
    b = add_peer(fake_api, "node-b", "10.244.2.0/24", "198.18.0.12", mac="02:00:00:00:00:12")
    fake_api.create_node("plain", pod_cidr="10.244.3.0/24")  # not flannel-managed
    fake_api.create_node("half", pod_cidr="10.244.4.0/24",
                         annotations={**flannel_annotations("198.18.0.14"), NAMES.kube_subnet_manager: "false"})
    async with watching(await started(client, tmp_path)) as watch:
        assert snapshot_set(await next_result(watch)) == {a, b}


@pytest.mark.usefixtures("own_node")
async def test_node_events_become_lease_events(fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    a = add_peer(fake_api, "node-a", "10.244.1.0/24", "198.18.0.11")
    async with watching(await started(client, tmp_path)) as watch:
        assert snapshot_set(await next_result(watch)) == {a}
        c = add_peer(fake_api, "node-c", "10.244.3.0/24", "198.18.0.13")
        assert await next_result(watch) == WatchResult(events=((True, c),))
        annotate(fake_api, "node-a", public_ip="198.18.1.11")
        moved = lease_of("10.244.1.0/24", "198.18.1.11")
        assert await next_result(watch) == WatchResult(events=((True, moved),))
        annotate(fake_api, "node-c", backend_data=vxlan_data("02:00:00:00:01:13"))
        assert await next_result(watch) == WatchResult(events=((True, lease_of("10.244.3.0/24", "198.18.0.13",
                                                                                "02:00:00:00:01:13")),))
        fake_api.delete_node("node-a")
        assert await next_result(watch) == WatchResult(events=((False, moved),))


@pytest.mark.usefixtures("own_node")
async def test_status_and_unrelated_changes_yield_nothing(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    a = add_peer(fake_api, "node-a", "10.244.1.0/24", "198.18.0.11")
    async with watching(await started(client, tmp_path)) as watch:
        assert snapshot_set(await next_result(watch)) == {a}
        condition = {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
                     "message": "Flannel is running on this node", "lastHeartbeatTime": "2024-01-01T00:00:00Z",
                     "lastTransitionTime": "2024-01-01T00:00:00Z"}
        await client.patch_node_status("node-a", {"status": {"conditions": [condition]}})
        await client.patch_node_status("node-a", {"metadata": {"labels": {"example.com/rack": "r7"}}})
        annotate(fake_api, "self", public_ip="198.18.9.10")  # this node's own changes are not a peer's
        fake_api.create_node("plain", pod_cidr="10.244.3.0/24")
        fake_api.delete_node("plain")
        marker = add_peer(fake_api, "node-m", "10.244.9.0/24", "198.18.0.19")
        assert await next_result(watch) == WatchResult(events=((True, marker),))
        assert fake_api.store.nodes["node-a"]["metadata"]["labels"]["example.com/rack"] == "r7"


@pytest.mark.usefixtures("own_node")
async def test_a_pod_cidr_change_removes_the_old_subnet_then_adds_the_new(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    a = add_peer(fake_api, "node-a", "10.244.1.0/24", "198.18.0.11")
    async with watching(await started(client, tmp_path)) as watch:
        assert snapshot_set(await next_result(watch)) == {a}
        fake_api.set_pod_cidrs("node-a", ["10.244.51.0/24"])  # the API forbids this; a hook may, as a re-creation
        new = lease_of("10.244.51.0/24", "198.18.0.11")
        assert await next_result(watch) == WatchResult(events=((False, a), (True, new)))


@pytest.mark.usefixtures("own_node")
async def test_a_node_that_stops_being_flannel_managed_is_removed(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    a = add_peer(fake_api, "node-a", "10.244.1.0/24", "198.18.0.11")
    async with watching(await started(client, tmp_path)) as watch:
        assert snapshot_set(await next_result(watch)) == {a}
        annotate(fake_api, "node-a", kube_subnet_manager="false")
        assert await next_result(watch) == WatchResult(events=((False, a),))
        annotate(fake_api, "node-a", kube_subnet_manager="true")
        assert await next_result(watch) == WatchResult(events=((True, a),))


@pytest.mark.usefixtures("own_node")
async def test_a_node_with_a_garbage_public_ip_is_skipped_with_a_warning(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flannel.subnet.kube_manager")
    a = add_peer(fake_api, "node-a", "10.244.1.0/24", "198.18.0.11")
    fake_api.create_node("node-bad", pod_cidr="10.244.2.0/24", annotations=flannel_annotations("not-an-ip"))
    b = add_peer(fake_api, "node-b", "10.244.3.0/24", "198.18.0.13")
    async with watching(await started(client, tmp_path)) as watch:
        assert snapshot_set(await next_result(watch)) == {a, b}
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("node-bad" in w and "not-an-ip" in w for w in warnings), warnings
        annotate(fake_api, "node-bad", public_ip="198.18.0.12")  # fixed by the admin: now it counts
        fixed = lease_of("10.244.2.0/24", "198.18.0.12")
        assert await next_result(watch) == WatchResult(events=((True, fixed),))


@pytest.mark.usefixtures("own_node")
async def test_a_good_node_turning_bad_keeps_its_last_good_lease(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flannel.subnet.kube_manager")
    a = add_peer(fake_api, "node-a", "10.244.1.0/24", "198.18.0.11")
    async with watching(await started(client, tmp_path)) as watch:
        assert snapshot_set(await next_result(watch)) == {a}
        annotate(fake_api, "node-a", public_ip="garbage")
        marker = add_peer(fake_api, "node-m", "10.244.9.0/24", "198.18.0.19")
        assert await next_result(watch) == WatchResult(events=((True, marker),))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("node-a" in w and "garbage" in w and "last good lease is kept" in w for w in warnings), warnings
        fake_api.delete_node("node-a")  # its routes must still go: the removal carries the last good lease
        assert await next_result(watch) == WatchResult(events=((False, a),))


async def test_dual_stack_peers_carry_both_families(fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_node("self", pod_cidr="10.244.0.0/24")
    fake_api.create_node("node-a", annotations={
        **flannel_annotations("198.18.0.11"),
        NAMES.backend_v6_data: vxlan_data("aa:bb:cc:00:00:11"),
        NAMES.public_ipv6: "fd00:198:18::11",
    })
    fake_api.set_pod_cidrs("node-a", ["10.244.1.0/24", "fd00:10:244:1::/64"])
    fake_api.create_node("node-v4", pod_cidr="10.244.2.0/24", annotations=flannel_annotations("198.18.0.12"))
    manager = make_manager(client, write_conf(tmp_path, DUAL_CONF))
    await manager.get_network_config()
    async with watching(manager) as watch:
        result = await next_result(watch)
    attrs = LeaseAttrs(public_ip=IPv4Address("198.18.0.11"), public_ipv6=IPv6Address("fd00:198:18::11"),
                       backend_type="vxlan", backend_data=vxlan_data(),
                       backend_v6_data=vxlan_data("aa:bb:cc:00:00:11"))
    # node-v4 has neither an IPv6 pod CIDR nor a public IPv6: unusable in a dual-stack network.
    assert result.snapshot == (Lease(IPv4Network("10.244.1.0/24"), IPv6Network("fd00:10:244:1::/64"), attrs),)
