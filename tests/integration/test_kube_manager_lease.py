"""``KubeSubnetManager`` against the strict fake API server: the own lease (annotations) and the node condition.

What a Go node would see is asserted on the fake's stored node and on the requests the manager made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from flannel.errors import ConfigError, FlannelError
from flannel.kube.client import KubeClient
from flannel.lease import Lease, LeaseAttrs
from flannel.subnet import kube_manager
from flannel.subnetenv import SubnetEnv, render
from tests.integration.test_kube_manager import (
    DUAL_CONF,
    MAC,
    NAMES,
    PREFIX,
    client_fixture,  # noqa: F401
    flannel_annotations,
    flannel_view,
    make_manager,
    vxlan_attrs,
    vxlan_data,
    wait_until,
    write_conf,
)
from tests.kube_fake import FakeKubeApi
from tests.kube_fake.fixtures import fake_api_fixture  # noqa: F401

# -- acquire_lease -----------------------------------------------------------------------------------------------


async def test_acquired_lease_is_the_pod_cidr_and_the_annotations_are_upstreams(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    created = fake_api.create_node("self", pod_cidr="10.244.7.0/24")
    manager = make_manager(client, write_conf(tmp_path))
    await manager.get_network_config()
    lease = await manager.acquire_lease(vxlan_attrs())
    assert (lease.subnet, lease.ipv6_subnet, lease.attrs) == (IPv4Network("10.244.7.0/24"), None, vxlan_attrs())
    assert lease.expiration == pytest.approx(time.time() + 24 * 3600, abs=60)
    node = fake_api.store.nodes["self"]
    assert flannel_view(node) == {
        "flannel.alpha.coreos.com/backend-data": '{"VNI":1,"VtepMAC":"6e:2f:8c:8a:11:5c"}',
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/public-ip": "198.18.0.12",
    }
    others = {k: v for k, v in node["metadata"]["annotations"].items() if not k.startswith(PREFIX)}
    assert others == created["metadata"]["annotations"]  # the kubelet's annotations are kept
    assert node["spec"] == created["spec"]
    assert (fake_api.request_count("patch", "nodes/status"), fake_api.request_count("patch", "nodes")) == (1, 0)


async def test_acquire_with_unchanged_attrs_sends_no_patch(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_node("self", pod_cidr="10.244.7.0/24")
    conf = write_conf(tmp_path)
    first = make_manager(client, conf)
    await first.get_network_config()
    await first.acquire_lease(vxlan_attrs())
    stored = fake_api.store.nodes["self"]
    restarted = make_manager(client, conf)
    await restarted.get_network_config()
    assert restarted.stored_vtep_macs() == (MAC, None)
    lease = await restarted.acquire_lease(vxlan_attrs())
    assert lease.subnet == IPv4Network("10.244.7.0/24")
    assert fake_api.request_count("patch") == 1
    assert fake_api.store.nodes["self"] is stored


async def test_changed_attrs_patch_only_what_changed(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_node("self", pod_cidr="10.244.7.0/24", annotations=flannel_annotations("198.18.0.12"))
    manager = make_manager(client, write_conf(tmp_path))
    await manager.get_network_config()
    await manager.acquire_lease(vxlan_attrs("198.18.0.99"))
    assert flannel_view(fake_api.store.nodes["self"]) == flannel_annotations("198.18.0.99")
    assert fake_api.request_count("patch", "nodes/status") == 1


async def test_public_ip_overwrite_is_published_as_the_public_ip(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_node("self", pod_cidr="10.244.7.0/24", annotations={NAMES.public_ip_overwrite: "203.0.113.7"})
    conf = write_conf(tmp_path)
    manager = make_manager(client, conf)
    await manager.get_network_config()
    lease = await manager.acquire_lease(vxlan_attrs())
    assert lease.attrs.public_ip == IPv4Address("198.18.0.12")  # the local side keeps the detected address
    view = flannel_view(fake_api.store.nodes["self"])
    assert view[NAMES.public_ip] == "203.0.113.7"
    assert view[NAMES.public_ip_overwrite] == "203.0.113.7"
    again = make_manager(client, conf)
    await again.get_network_config()
    await again.acquire_lease(vxlan_attrs())
    assert fake_api.request_count("patch") == 1


async def test_acquire_waits_for_the_pod_cidr_and_says_so(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flannel.subnet.kube_manager")
    fake_api.create_node("node-waiting", pod_cidr="")
    manager = make_manager(client, write_conf(tmp_path), node="node-waiting")
    await manager.get_network_config()
    acquiring = asyncio.create_task(manager.acquire_lease(vxlan_attrs()))

    def logged() -> bool:
        return any("node-waiting" in r.getMessage() and "spec.podCIDR" in r.getMessage() for r in caplog.records)

    await wait_until(logged)
    assert not acquiring.done()
    assert fake_api.request_count("patch") == 0
    fake_api.set_pod_cidrs("node-waiting", ["10.244.42.0/24"])
    async with asyncio.timeout(10):
        lease = await acquiring
    assert lease.subnet == IPv4Network("10.244.42.0/24")
    assert flannel_view(fake_api.store.nodes["node-waiting"]) == flannel_annotations("198.18.0.12")


async def test_pod_cidr_outside_the_network_is_a_config_error_with_upstreams_text(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_node("node-far", pod_cidr="10.99.0.0/24")
    manager = make_manager(client, write_conf(tmp_path), node="node-far")
    await manager.get_network_config()
    with pytest.raises(ConfigError) as err:
        await manager.acquire_lease(vxlan_attrs())
    assert str(err.value) == ('subnet "10.244.0.0/16" specified in the flannel net config doesn\'t contain '
                              '"10.99.0.0/24" PodCIDR of the "node-far" node')
    assert fake_api.request_count("patch") == 0


async def test_dual_stack_vxlan_gets_both_subnets_and_publishes_both_families(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_node("self")
    fake_api.set_pod_cidrs("self", ["10.244.3.0/24", "fd00:10:244:3::/64"])
    manager = make_manager(client, write_conf(tmp_path, DUAL_CONF))
    await manager.get_network_config()
    attrs = LeaseAttrs(public_ip=IPv4Address("198.18.0.12"), public_ipv6=IPv6Address("fd00:198:18::12"),
                       backend_type="vxlan", backend_data=vxlan_data(), backend_v6_data=vxlan_data("aa:bb:cc:00:11:22"))
    lease = await manager.acquire_lease(attrs)
    assert (lease.subnet, lease.ipv6_subnet) == (IPv4Network("10.244.3.0/24"), IPv6Network("fd00:10:244:3::/64"))
    assert flannel_view(fake_api.store.nodes["self"]) == {
        **flannel_annotations("198.18.0.12"),
        NAMES.backend_v6_data: '{"VNI":1,"VtepMAC":"aa:bb:cc:00:11:22"}',
        NAMES.public_ipv6: "fd00:198:18::12",
    }


async def test_a_backend_upstream_marks_ipv4_only_keeps_its_ipv6_subnet_for_subnet_env(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    """Upstream only clears the lease's EnableIPv6 flag for such backends (extension here) and keeps the IPv6
    subnet, which subnet.env must list: a lease without it could not be written to subnet.env at all."""
    fake_api.create_node("self")
    fake_api.set_pod_cidrs("self", ["10.244.3.0/24", "fd00:10:244:3::/64"])
    manager = make_manager(client, write_conf(tmp_path, DUAL_CONF.replace("vxlan", "extension")))
    config = await manager.get_network_config()
    attrs = LeaseAttrs(public_ip=IPv4Address("198.18.0.12"), public_ipv6=IPv6Address("fd00:198:18::12"),
                       backend_type="extension")
    lease = await manager.acquire_lease(attrs)
    assert (lease.subnet, lease.ipv6_subnet) == (IPv4Network("10.244.3.0/24"), IPv6Network("fd00:10:244:3::/64"))
    env = SubnetEnv(network=config.network, subnet=lease.subnet, ipv6_network=config.ipv6_network,
                    ipv6_subnet=lease.ipv6_subnet, mtu=1500, ipmasq=False)
    assert "FLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64" in render(env)


async def test_acquire_before_get_network_config_is_refused(client: KubeClient, tmp_path: Path) -> None:
    with pytest.raises(FlannelError, match="before get_network_config"):
        await make_manager(client, write_conf(tmp_path)).acquire_lease(vxlan_attrs())


# -- complete_lease ----------------------------------------------------------------------------------------------


def conditions(fake: FakeKubeApi, name: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in fake.store.nodes[name]["status"]["conditions"]}


async def test_complete_lease_clears_network_unavailable_keeps_ready_then_holds(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_node("self", pod_cidr="10.244.7.0/24")
    manager = make_manager(client, write_conf(tmp_path))
    await manager.get_network_config()
    lease = await manager.acquire_lease(vxlan_attrs())
    holding = asyncio.create_task(manager.complete_lease(lease))
    await wait_until(lambda: "NetworkUnavailable" in conditions(fake_api, "self"))
    found = conditions(fake_api, "self")
    unavailable = found["NetworkUnavailable"]
    assert {k: unavailable[k] for k in ("status", "reason", "message")} == {
        "status": "False", "reason": "FlannelIsUp", "message": "Flannel is running on this node"}
    assert unavailable["lastHeartbeatTime"] == unavailable["lastTransitionTime"]
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("True", "KubeletReady")
    assert list(found) == ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready", "NetworkUnavailable"]
    assert fake_api.request_count("patch", "nodes/status") == 2  # the annotations, then the condition
    assert fake_api.request_count("patch", "nodes") == 0
    done, _ = await asyncio.wait({holding}, timeout=0.3)
    assert not done  # kube leases are never renewed: it holds until cancelled
    holding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holding


async def test_complete_lease_without_set_node_network_unavailable_patches_nothing(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    # Annotated as acquire_lease leaves it: the own-node keeper finds nothing to publish again.
    created = fake_api.create_node("self", pod_cidr="10.244.7.0/24", annotations=flannel_annotations("198.18.0.12"))
    manager = make_manager(client, write_conf(tmp_path), set_node_network_unavailable=False)
    await manager.get_network_config()
    lease = Lease(subnet=IPv4Network("10.244.7.0/24"), attrs=vxlan_attrs())
    holding = asyncio.create_task(manager.complete_lease(lease))
    done, _ = await asyncio.wait({holding}, timeout=0.3)
    assert not done
    holding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holding
    assert fake_api.request_count("patch") == 0
    assert fake_api.store.nodes["self"] is created


async def test_a_refused_annotation_patch_is_retried(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(kube_manager, "PATCH_RETRY_EVERY", 0.05)  # instead of 3 s
    caplog.set_level(logging.WARNING, logger="flannel.subnet.kube_manager")
    fake_api.create_node("self", pod_cidr="10.244.7.0/24")
    manager = make_manager(client, write_conf(tmp_path))
    await manager.get_network_config()
    patch_node_status = client.patch_node_status

    async def patch_during_an_outage(name: str, patch: dict[str, Any], patch_type: str = "strategic") -> Any:
        if fake_api.request_count("patch") == 0:
            fake_api.fail_next(2, 503)  # the API server refuses this PATCH and the next one
        return await patch_node_status(name, patch, patch_type)

    monkeypatch.setattr(client, "patch_node_status", patch_during_an_outage)
    async with asyncio.timeout(10):
        await manager.acquire_lease(vxlan_attrs())
    assert flannel_view(fake_api.store.nodes["self"]) == flannel_annotations("198.18.0.12")
    assert fake_api.request_count("patch", "nodes/status") == 3
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2 and all("patching node self (annotations) failed" in m for m in retries)


async def test_a_failed_condition_patch_is_only_logged(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="flannel.subnet.kube_manager")
    created = fake_api.create_node("self", pod_cidr="10.244.7.0/24", annotations=flannel_annotations("198.18.0.12"))
    manager = make_manager(client, write_conf(tmp_path))
    await manager.get_network_config()
    fake_api.fail_next(1, 500)
    holding = asyncio.create_task(manager.complete_lease(Lease(subnet=IPv4Network("10.244.7.0/24"),
                                                               attrs=vxlan_attrs())))
    await wait_until(lambda: any("NetworkUnavailable" in r.getMessage() for r in caplog.records))
    assert "failed to set NetworkUnavailable=False on node self" in caplog.records[-1].getMessage()
    assert not holding.done()
    holding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holding
    assert fake_api.store.nodes["self"] is created
