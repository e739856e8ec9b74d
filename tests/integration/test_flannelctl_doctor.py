"""flannelctl's node readers against the real kernel, etcd and the fake API server: ipip and udp drift in a fresh
namespace, the vxlan checksum offload read with ethtool's ioctl, the store's clock, and kube mode for ``status``."""

from __future__ import annotations

import array
import asyncio
import fcntl
import io
import json
import socket
import struct
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from flannel.config import check_network_config, parse_network_config
from flannel.ctl import drift
from flannel.ctl.cli import main
from flannel.ctl.doctor_gather import SIOCETHTOOL, etcd_clock_skew, kube_clock_skew, tx_checksum
from flannel.lease import Lease, LeaseAttrs
from flannel.netlink import Netlink
from flannel.netlink.nsenter import entered
from flannel.subnet.kube_annotations import annotation_names
from tests.etcd_server import EtcdServer
from tests.ipip_support import ipip_unavailable
from tests.kube_fake.fixtures import fake_api_fixture  # noqa: F401
from tests.kube_fake.server import FakeKubeApi
from tests.netns import NetNS, netns_fixture  # noqa: F401

OWN = Lease(subnet=IPv4Network("10.5.52.0/24"), attrs=LeaseAttrs(public_ip=IPv4Address("198.18.0.1")))


def config(backend: str) -> Any:
    return check_network_config(parse_network_config(f'{{"Network":"10.5.0.0/16","Backend":{backend}}}'))


def drift_in(ns: NetNS, backend: str, leases: list[Lease]) -> list[str]:
    with entered(ns.name), Netlink() as nl:
        return [d.what for d in drift.check(nl, config(backend), OWN, leases)]


@pytest.mark.root
def test_udp_drift_names_flannel0_s_missing_route_address_and_device(netns: NetNS) -> None:
    netns.ip("tuntap", "add", "flannel0", "mode", "tun")
    netns.ip("addr", "add", "10.5.52.0/32", "dev", "flannel0")
    netns.ip("link", "set", "flannel0", "up")
    netns.ip("route", "add", "10.5.0.0/16", "dev", "flannel0")
    assert drift_in(netns, '{"Type":"udp"}', []) == []
    netns.ip("route", "del", "10.5.0.0/16", "dev", "flannel0")
    netns.ip("addr", "del", "10.5.52.0/32", "dev", "flannel0")
    assert drift_in(netns, '{"Type":"udp"}', []) == ["address 10.5.52.0/32 on flannel0 missing",
                                                     "route to 10.5.0.0/16 missing"]
    netns.ip("link", "del", "flannel0")
    assert drift_in(netns, '{"Type":"udp"}', []) == ["device flannel0 missing"]


def peer(i: int) -> Lease:
    return Lease(subnet=IPv4Network(f"10.5.{i}.0/24"),
                 attrs=LeaseAttrs(public_ip=IPv4Address(f"198.18.0.{10 + i}"), backend_type="ipip"))


@pytest.mark.root
def test_ipip_drift_names_a_missing_device(netns: NetNS) -> None:
    assert drift_in(netns, '{"Type":"ipip"}', [peer(1)]) == ["device flannel.ipip missing"]


@pytest.mark.root
def test_ipip_drift_names_a_missing_onlink_route_and_a_stale_one(netns: NetNS) -> None:
    reason = ipip_unavailable()
    if reason:
        pytest.skip(reason)
    netns.ip("link", "add", "flannel.ipip", "type", "ipip", "local", "198.18.0.1")
    netns.ip("link", "set", "flannel.ipip", "up")
    netns.ip("route", "add", "10.5.1.0/24", "via", "198.18.0.11", "dev", "flannel.ipip", "onlink", "proto", "70")
    assert drift_in(netns, '{"Type":"ipip"}', [peer(1)]) == []
    assert drift_in(netns, '{"Type":"ipip"}', [peer(1), peer(2)]) == ["route to 10.5.2.0/24 missing"]
    assert drift_in(netns, '{"Type":"ipip"}', []) == ["stale route to 10.5.1.0/24"]


ETHTOOL_STXCSUM = 0x17


def set_tx_checksum(device: str, on: bool) -> None:
    value = array.array("I", [ETHTOOL_STXCSUM, int(on)])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, struct.pack("16sP", device.encode(), value.buffer_info()[0]))


@pytest.mark.root
def test_vxlan_tx_checksum_offload_is_read_as_ethtool_reads_it(netns: NetNS) -> None:
    netns.ip("link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", "198.18.0.1", "dstport", "8472",
             "nolearning")
    with entered(netns.name):
        assert tx_checksum("flannel.1") is True  # the kernel's default for a vxlan device
        set_tx_checksum("flannel.1", False)
        assert tx_checksum("flannel.1") is False


@pytest.mark.etcd
def test_etcd_s_clock_agrees_with_ours(etcd: EtcdServer) -> None:
    assert etcd_clock_skew(etcd.endpoint, "", "", "", 5.0) == 0.0
    assert etcd_clock_skew("http://127.0.0.1:1", "", "", "", 1.0) is None


async def test_the_api_server_s_clock_agrees_with_ours(fake_api: FakeKubeApi) -> None:
    assert await kube_clock_skew(fake_api.url, "", 5.0) == (0.0, fake_api.url)


NAMES = annotation_names()


async def test_status_in_kube_mode_finds_this_node_by_its_pod_cidr(fake_api: FakeKubeApi, tmp_path: Path) -> None:
    conf = tmp_path / "net-conf.json"
    conf.write_text('{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}')
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.2.1/24\nFLANNEL_MTU=1500\n")
    for name, i in (("a", 1), ("b", 2)):
        fake_api.create_node(name, pod_cidr=f"10.244.{i}.0/24", annotations={
            NAMES.public_ip: f"198.19.255.{i}", NAMES.backend_type: "host-gw", NAMES.kube_subnet_manager: "true",
            NAMES.backend_data: "null"})
    out, err = io.StringIO(), io.StringIO()
    argv = ["status", "--kube-subnet-mgr", f"--kube-api-url={fake_api.url}", f"--net-config-path={conf}",
            f"--subnet-file={env}", "-o", "json", "--timeout=5"]
    code = await asyncio.to_thread(main, argv, {}, out, err)
    doc = json.loads(out.getvalue())
    assert doc["lease"]["key"] == "node/b" and doc["lease"]["public_ip"] == "198.19.255.2", (doc, err.getvalue())
    assert doc["lease"]["ttl_seconds"] is None and doc["lease"]["reserved"] is False
    assert {f["code"] for f in doc["findings"]} <= {"readiness_unchecked", "drift_unchecked"} and code == 0, doc
    fake_api.delete_node("b")
    out = io.StringIO()
    code = await asyncio.to_thread(main, argv, {}, out, io.StringIO())
    doc = json.loads(out.getvalue())
    assert code == 1 and "own_lease_missing" in {f["code"] for f in doc["findings"]}
    assert "in the node list" in next(f["message"] for f in doc["findings"] if f["code"] == "own_lease_missing")


@pytest.mark.etcd
def test_garbage_in_etcd_is_a_finding_for_doctor_and_status(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    etcd.etcdctl("put", f"{prefix}/config", '{"Network": 17, "Backend": [')
    etcd.etcdctl("put", f"{prefix}/subnets/10.5.52.0-24", "not json {")
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\n")
    common = [f"--etcd-endpoints={etcd.endpoint}", f"--etcd-prefix={prefix}", f"--subnet-file={env}",
              f"--cni-conf-dir={tmp_path}", "-o", "json", "--timeout=5"]
    for command, expected in (("doctor", {"config"}), ("status", {"own_lease_missing", "config"})):
        out, err = io.StringIO(), io.StringIO()
        code = main([command, *common], {}, out, err)
        doc = json.loads(out.getvalue())
        assert code == 1 and "Traceback" not in err.getvalue()
        assert expected <= {f["code"] for f in doc["findings"] if f["severity"] == "error"}, doc["findings"]
        if command == "doctor":  # the node's checks ran without the config; the backend's are skipped
            assert doc["network"] == "10.5.0.0/16" and doc["flannel_mtu"] == 1450
            assert {c["check"] for c in doc["checks"] if c["status"] == "skipped"} >= {"kernel_module"}
        else:
            assert "cannot be read" in next(f["message"] for f in doc["findings"] if f["code"] == "own_lease_missing")


async def test_doctor_in_kube_mode_reads_net_conf_and_the_api_server_s_clock(fake_api: FakeKubeApi,
                                                                            tmp_path: Path) -> None:
    conf = tmp_path / "net-conf.json"
    conf.write_text('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
    cni = tmp_path / "cni"
    cni.mkdir()
    (cni / "10-bridge.conf").write_text('{"type":"bridge"}')
    out, err = io.StringIO(), io.StringIO()
    argv = ["doctor", "--kube-subnet-mgr", f"--kube-api-url={fake_api.url}", f"--net-config-path={conf}",
            f"--subnet-file={tmp_path}/none", f"--cni-conf-dir={cni}", "-o", "json", "--timeout=5"]
    await asyncio.to_thread(main, argv, {}, out, err)
    doc = json.loads(out.getvalue())
    assert "Traceback" not in err.getvalue()
    assert doc["backend_type"] == "vxlan" and doc["network"] == "10.244.0.0/16"
    assert doc["clock"] == {"source": fake_api.url, "skew_seconds": 0.0}
    assert ("cni_no_flannel", str(cni)) in {(f["code"], f["subject"]) for f in doc["findings"]}
