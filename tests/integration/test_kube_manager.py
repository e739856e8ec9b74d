"""``KubeSubnetManager`` against the strict fake API server: start-up (net-conf, node name, what the own node
stored) and the options read from the environment. Shared helpers for the other ``test_kube_manager_*`` modules.

The own lease is in ``test_kube_manager_lease.py``, the watch of the other nodes in ``test_kube_manager_watch.py``
and ``test_kube_manager_resync.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from flannel.errors import ConfigError, FlannelError
from flannel.kube.client import KubeClient
from flannel.kube.config import KubeClientConfig
from flannel.lease import LeaseAttrs
from flannel.subnet.kube_annotations import annotation_names
from flannel.subnet.kube_manager import KubeManagerOptions, KubeSubnetManager
from tests.kube_fake import FakeKubeApi
from tests.kube_fake.fixtures import fake_api_fixture  # noqa: F401

NAMES = annotation_names()
PREFIX = "flannel.alpha.coreos.com/"
MAC = "6e:2f:8c:8a:11:5c"
NET_CONF = '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}'
DUAL_CONF = ('{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", '
             '"Backend": {"Type": "vxlan"}}')


def vxlan_data(mac: str = MAC) -> str:
    """``backend-data`` as Go flanneld writes it for vxlan."""
    return json.dumps({"VNI": 1, "VtepMAC": mac}, separators=(",", ":"))


def flannel_annotations(public_ip: str, mac: str = MAC, backend_type: str = "vxlan") -> dict[str, str]:
    """The annotations a running (Go or Python) flanneld leaves on its node."""
    return {
        NAMES.backend_data: vxlan_data(mac),
        NAMES.backend_type: backend_type,
        NAMES.kube_subnet_manager: "true",
        NAMES.public_ip: public_ip,
    }


def vxlan_attrs(public_ip: str = "198.18.0.12", mac: str = MAC) -> LeaseAttrs:
    return LeaseAttrs(public_ip=IPv4Address(public_ip), backend_type="vxlan", backend_data=vxlan_data(mac))


def flannel_view(node: dict[str, Any]) -> dict[str, str]:
    """The node's annotations under flannel's prefix."""
    annotations: dict[str, str] = node["metadata"].get("annotations") or {}
    return {k: v for k, v in annotations.items() if k.startswith(PREFIX)}


def write_conf(tmp_path: Path, text: str = NET_CONF) -> str:
    path = tmp_path / "net-conf.json"
    path.write_text(text)
    return str(path)


def make_manager(client: KubeClient, conf: str, node: str = "self", **options: Any) -> KubeSubnetManager:
    """A manager with fast podCIDR polling (0.1 s) and short watches."""
    options.setdefault("podcidr_log_every", 0.1)
    options.setdefault("watch_timeout", 30)
    return KubeSubnetManager(client, KubeManagerOptions(net_conf_path=conf, names=NAMES, node_name=node, **options))


async def wait_until(cond: Callable[[], bool], timeout: float = 10) -> None:
    """Poll ``cond`` until it holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


@pytest.fixture(name="client")
async def client_fixture(fake_api: FakeKubeApi) -> AsyncIterator[KubeClient]:
    async with KubeClient(KubeClientConfig(server=fake_api.url), request_timeout=5) as c:
        yield c


# -- get_network_config ------------------------------------------------------------------------------------------


async def test_network_config_is_read_from_the_net_conf_file(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_node("self")
    config = await make_manager(client, write_conf(tmp_path)).get_network_config()
    assert (str(config.network), config.backend_type, config.enable_ipv6) == ("10.244.0.0/16", "vxlan", False)


async def test_missing_net_conf_is_a_config_error_naming_the_path(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_node("self")
    missing = str(tmp_path / "nope" / "net-conf.json")
    with pytest.raises(ConfigError, match=r"^failed to read net conf: ") as err:
        await make_manager(client, missing).get_network_config()
    assert missing in str(err.value)


async def test_malformed_net_conf_is_a_config_error_naming_the_path(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_node("self")
    conf = write_conf(tmp_path, '{"Network": "10.244.0.0/16",')
    with pytest.raises(ConfigError) as err:
        await make_manager(client, conf).get_network_config()
    assert str(err.value).startswith(f"error parsing subnet config: {conf}: ")


async def test_node_name_comes_from_the_own_pod_when_node_name_is_unset(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_node("worker-7")
    fake_api.create_pod("kube-flannel", "kube-flannel-ds-x7k2p", "worker-7")
    manager = make_manager(client, write_conf(tmp_path), node="", pod_namespace="kube-flannel",
                           pod_name="kube-flannel-ds-x7k2p")
    await manager.get_network_config()
    assert manager.node_name == "worker-7"
    assert fake_api.request_count("get", "pods") == 1
    lease = await manager.acquire_lease(vxlan_attrs())
    assert lease.subnet == IPv4Network("10.244.0.0/24")
    assert flannel_view(fake_api.store.nodes["worker-7"])[NAMES.public_ip] == "198.18.0.12"


async def test_pod_without_node_name_is_an_error_naming_the_pod(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_pod("kube-flannel", "kube-flannel-ds-pending", "")
    manager = make_manager(client, write_conf(tmp_path), node="", pod_namespace="kube-flannel",
                           pod_name="kube-flannel-ds-pending")
    with pytest.raises(FlannelError) as err:
        await manager.get_network_config()
    assert str(err.value) == "node name not present in pod spec 'kube-flannel/kube-flannel-ds-pending'"


async def test_without_node_name_or_pod_env_the_error_is_upstreams(client: KubeClient, tmp_path: Path) -> None:
    manager = make_manager(client, write_conf(tmp_path), node="", pod_namespace="kube-flannel")
    with pytest.raises(FlannelError) as err:
        await manager.get_network_config()
    assert str(err.value) == "env variables POD_NAME and POD_NAMESPACE must be set"


# -- stored VtepMACs and public IP overrides ---------------------------------------------------------------------


async def test_stored_vtep_macs_come_from_the_own_nodes_backend_data(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_node("self", annotations={
        **flannel_annotations("198.18.0.12", mac="6E:2F:8C:8A:11:5C"),
        NAMES.backend_v6_data: vxlan_data("aa:bb:cc:00:11:22"),
    })
    fake_api.create_node("other", annotations=flannel_annotations("198.18.0.13", mac="02:00:00:00:00:13"))
    manager = make_manager(client, write_conf(tmp_path))
    assert manager.stored_vtep_macs() == (None, None)  # nothing read before the start-up
    await manager.get_network_config()
    assert manager.stored_vtep_macs() == ("6e:2f:8c:8a:11:5c", "aa:bb:cc:00:11:22")


async def test_no_stored_vtep_mac_on_a_fresh_node(fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_node("self")
    manager = make_manager(client, write_conf(tmp_path))
    await manager.get_network_config()
    assert manager.stored_vtep_macs() == (None, None)
    assert manager.public_ip_overrides() == ("", "")


async def test_public_ip_overrides_come_from_the_own_nodes_annotations(
        fake_api: FakeKubeApi, client: KubeClient, tmp_path: Path) -> None:
    fake_api.create_node("self", annotations={NAMES.node_public_ip: "203.0.113.5",
                                              NAMES.node_public_ipv6: "2001:db8::5"})
    fake_api.create_node("other", annotations={NAMES.node_public_ip: "203.0.113.9"})
    manager = make_manager(client, write_conf(tmp_path))
    await manager.get_network_config()
    assert manager.public_ip_overrides() == ("203.0.113.5", "2001:db8::5")


# -- KubeManagerOptions.from_environ -----------------------------------------------------------------------------


def from_environ(**environ: str) -> KubeManagerOptions:
    return KubeManagerOptions.from_environ("/etc/kube-flannel/net-conf.json", NAMES, True, environ)


def test_options_from_the_daemonset_environment() -> None:
    opts = from_environ(POD_NAME="kube-flannel-ds-x7k2p", POD_NAMESPACE="kube-flannel", EVENT_QUEUE_DEPTH="5000",
                        CONT_WHEN_CACHE_NOT_READY="false")
    assert (opts.net_conf_path, opts.names, opts.node_name) == ("/etc/kube-flannel/net-conf.json", NAMES, "")
    assert (opts.pod_namespace, opts.pod_name) == ("kube-flannel", "kube-flannel-ds-x7k2p")
    assert (opts.queue_depth, opts.cont_when_cache_not_ready, opts.set_node_network_unavailable) == (5000, False, True)


def test_options_defaults_and_node_name() -> None:
    opts = from_environ(NODE_NAME="worker-1")
    assert (opts.node_name, opts.queue_depth, opts.cont_when_cache_not_ready) == ("worker-1", 5000, False)
    assert from_environ(EVENT_QUEUE_DEPTH="").queue_depth == 5000
    off = KubeManagerOptions.from_environ("/x", NAMES, False, {})
    assert off.set_node_network_unavailable is False


def test_event_queue_depth_is_parsed() -> None:
    assert from_environ(EVENT_QUEUE_DEPTH="1").queue_depth == 1
    assert from_environ(EVENT_QUEUE_DEPTH="20000").queue_depth == 20000


@pytest.mark.parametrize("value", ["0", "-5"])
def test_event_queue_depth_not_positive_keeps_the_default_as_upstream(value: str) -> None:
    assert from_environ(EVENT_QUEUE_DEPTH=value).queue_depth == 5000


@pytest.mark.parametrize("value", ["abc", "5k", "1.5"])
def test_event_queue_depth_not_an_integer_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_environ(EVENT_QUEUE_DEPTH=value)
    assert str(err.value).startswith(f"env EVENT_QUEUE_DEPTH={value} format error: ")
    assert err.value.field == "EVENT_QUEUE_DEPTH"


@pytest.mark.parametrize(("value", "expected"), [
    ("true", True), ("false", False), ("", False), ("TRUE", False), ("1", False), ("yes", False)])
def test_cont_when_cache_not_ready_only_when_exactly_true(value: str, expected: bool) -> None:
    assert from_environ(CONT_WHEN_CACHE_NOT_READY=value).cont_when_cache_not_ready is expected
