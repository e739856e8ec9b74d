"""Kube-mode nodes → leases (§7.3, §7.5), the own node's pod CIDRs (§7.4) and the status patch (§7.6)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

import pytest

from flannel.config import NetworkConfig, parse_network_config
from flannel.errors import LeaseDecodeError
from flannel.lease import LeaseAttrs
from flannel.subnet.kube_annotations import annotation_names, own_annotation_patch
from flannel.subnet.kube_nodes import (
    OwnNodeError,
    PodCidrNotAssignedError,
    contains_cidr,
    network_unavailable_patch,
    node_to_lease,
    own_pod_cidrs,
)

P = "flannel.alpha.coreos.com/"
NAMES = annotation_names()
V4 = parse_network_config('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
DUAL = parse_network_config(
    '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}'
)
V6 = parse_network_config(
    '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}'
)


def k8s_node(
    name: str, annotations: dict[str, str], pod_cidrs: list[str] | None = None, pod_cidr: str = ""
) -> dict[str, Any]:
    """A node as the API server's JSON returns it (only the fields flannel reads, plus some noise)."""
    spec: dict[str, Any] = {"podCIDR": pod_cidr or (pod_cidrs or [""])[0]}
    if pod_cidrs is not None:
        spec["podCIDRs"] = pod_cidrs
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "uid": "4d1c6c3e", "resourceVersion": "8123", "annotations": annotations},
        "spec": spec,
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.99"}]},
    }


GO_V4_NODE = k8s_node(
    "worker-1",
    {
        P + "backend-data": '{"VNI":1,"VtepMAC":"6e:2f:8c:8a:11:5c"}',
        P + "backend-type": "vxlan",
        P + "kube-subnet-manager": "true",
        P + "public-ip": "192.168.1.10",
        "node.alpha.kubernetes.io/ttl": "0",
    },
    ["10.244.1.0/24"],
)
GO_DUAL_NODE = k8s_node(
    "worker-2",
    {
        P + "backend-data": '{"VNI":1,"VtepMAC":"6e:2f:8c:8a:11:5d"}',
        P + "backend-v6-data": '{"VNI":1,"VtepMAC":"c2:4e:71:0b:9d:01"}',
        P + "backend-type": "vxlan",
        P + "kube-subnet-manager": "true",
        P + "public-ip": "192.168.1.11",
        P + "public-ipv6": "fd00::11",
    },
    ["10.244.2.0/24", "fd00:10:244:2::/64"],
)


def with_ann(base: dict[str, Any], **changes: str | None) -> dict[str, Any]:
    ann = dict(base["metadata"]["annotations"])
    for key, value in changes.items():
        full = P + key.replace("_", "-")
        if value is None:
            ann.pop(full, None)
        else:
            ann[full] = value
    return {**base, "metadata": {**base["metadata"], "annotations": ann}}


# --- watched nodes → leases (§7.5) -----------------------------------------------------------------


def test_go_written_vxlan_node_gives_the_etcd_lease_bytes() -> None:
    etcd = (
        '{"PublicIP":"192.168.1.10","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"6e:2f:8c:8a:11:5c"}}'
    )
    lease = node_to_lease(GO_V4_NODE, NAMES, V4)
    assert lease.subnet == IPv4Network("10.244.1.0/24") and lease.ipv6_subnet is None
    assert lease.key == "10.244.1.0-24"
    assert lease.attrs.to_json() == etcd
    assert lease.attrs == LeaseAttrs.from_json(etcd)


def test_go_written_dual_stack_node_gives_the_etcd_lease_bytes() -> None:
    etcd = (
        '{"PublicIP":"192.168.1.11","PublicIPv6":"fd00::11","BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"6e:2f:8c:8a:11:5d"},"BackendV6Data":{"VNI":1,"VtepMAC":"c2:4e:71:0b:9d:01"}}'
    )
    lease = node_to_lease(GO_DUAL_NODE, NAMES, DUAL)
    assert (lease.subnet, lease.ipv6_subnet) == (IPv4Network("10.244.2.0/24"), IPv6Network("fd00:10:244:2::/64"))
    assert lease.key == "10.244.2.0-24&fd00:10:244:2::-64"
    assert lease.attrs.to_json() == etcd
    assert lease.attrs == LeaseAttrs.from_json(etcd)


def test_dual_stack_node_read_by_an_ipv4_only_flanneld_gives_the_ipv4_lease() -> None:
    lease = node_to_lease(GO_DUAL_NODE, NAMES, V4)
    assert lease.ipv6_subnet is None and lease.attrs.public_ipv6 is None and lease.attrs.backend_v6_data is None


def test_ipv6_only_node_has_public_ip_zero_like_etcd() -> None:
    n = k8s_node(
        "v6",
        {
            P + "backend-type": "vxlan",
            P + "backend-data": "null",
            P + "backend-v6-data": '{"VNI":1,"VtepMAC":"c2:4e:71:0b:9d:01"}',
            P + "public-ipv6": "fd00::3",
        },
        ["fd00:10:244:3::/64"],
    )
    lease = node_to_lease(n, NAMES, V6)
    assert lease.subnet is None and lease.ipv6_subnet == IPv6Network("fd00:10:244:3::/64")
    assert lease.attrs.to_json() == (
        '{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::3","BackendType":"vxlan",'
        '"BackendV6Data":{"VNI":1,"VtepMAC":"c2:4e:71:0b:9d:01"}}'
    )


def test_null_backend_data_means_no_data() -> None:
    n = with_ann(GO_V4_NODE, backend_type="host-gw", backend_data="null")
    assert node_to_lease(n, NAMES, V4).attrs.to_json() == (
        '{"PublicIP":"192.168.1.10","PublicIPv6":null,"BackendType":"host-gw"}'
    )


def test_missing_backend_data_and_type_give_the_udp_lease() -> None:
    n = with_ann(GO_V4_NODE, backend_type="", backend_data=None)
    assert node_to_lease(n, NAMES, V4).attrs.to_json() == '{"PublicIP":"192.168.1.10","PublicIPv6":null}'


def test_backend_data_is_compacted_as_lease_attrs_keeps_it() -> None:
    n = with_ann(GO_V4_NODE, backend_data='{ "VNI" : 1, "VtepMAC" : "6e:2f:8c:8a:11:5c" }')
    assert node_to_lease(n, NAMES, V4).attrs.backend_data == '{"VNI":1,"VtepMAC":"6e:2f:8c:8a:11:5c"}'


def test_extension_string_backend_data_is_kept_as_a_json_string() -> None:
    n = with_ann(GO_V4_NODE, backend_type="extension", backend_data='"10.0.0.1 ab:cd"')
    assert node_to_lease(n, NAMES, V4).attrs.backend_data == '"10.0.0.1 ab:cd"'


def test_watched_node_uses_the_first_pod_cidr_of_a_family() -> None:
    n = k8s_node("w", GO_V4_NODE["metadata"]["annotations"], ["10.244.7.0/24", "10.244.8.0/24"])
    assert node_to_lease(n, NAMES, V4).subnet == IPv4Network("10.244.7.0/24")


def test_pod_cidr_is_used_when_pod_cidrs_is_empty() -> None:
    n = k8s_node("w", GO_V4_NODE["metadata"]["annotations"], None, pod_cidr="10.244.9.0/24")
    assert node_to_lease(n, NAMES, V4).subnet == IPv4Network("10.244.9.0/24")


def test_ipv4_mapped_public_ip_is_accepted_as_ipv4() -> None:
    n = with_ann(GO_V4_NODE, public_ip="::ffff:192.168.1.10")
    assert node_to_lease(n, NAMES, V4).attrs.to_json().startswith('{"PublicIP":"192.168.1.10",')


@pytest.mark.parametrize(
    ("node", "config", "message"),
    [
        (with_ann(GO_V4_NODE, public_ip=None), V4, r'node "worker-1": annotation .*public-ip="": invalid IP address'),
        (with_ann(GO_V4_NODE, public_ip="nope"), V4, r"public-ip=\"nope\": invalid IP address format"),
        (with_ann(GO_V4_NODE, public_ip="fd00::1"), V4, r"invalid IPv4 address format"),
        (with_ann(GO_V4_NODE, public_ip="fe80::1%eth0"), V4, r"invalid IP address format"),
        (with_ann(GO_DUAL_NODE, public_ipv6=None), DUAL, r'node "worker-2": annotation .*public-ipv6=""'),
        (with_ann(GO_V4_NODE, backend_data="{VNI:1}"), V4, r'node "worker-1": .*backend-data is not valid JSON'),
        (
            k8s_node("x", GO_V4_NODE["metadata"]["annotations"], ["fd00::/64"]),
            V4,
            r'^node "x": missing IPv4 address on n\.Spec\.PodCIDRs$',
        ),
        (
            k8s_node("x", GO_DUAL_NODE["metadata"]["annotations"], ["10.244.1.0/24"]),
            DUAL,
            r'^node "x": missing IPv6 address on n\.Spec\.PodCIDRs$',
        ),
        (
            k8s_node("x", GO_V4_NODE["metadata"]["annotations"], ["10.244.1.0/24", "fd00::/64", "10.244.2.0/24"]),
            V4,
            r'^node "x" pod cidrs should be IPv4/IPv6 only or dualstack$',
        ),
        (
            k8s_node("x", GO_V4_NODE["metadata"]["annotations"], ["bogus"]),
            V4,
            r'^node "x": invalid CIDR address: bogus$',
        ),
        (k8s_node("x", GO_V4_NODE["metadata"]["annotations"], None), V4, r'^node "x": invalid CIDR address: $'),
    ],
)
def test_undecodable_node_raises_lease_decode_error_naming_the_node(
    node: dict[str, Any], config: NetworkConfig, message: str
) -> None:
    with pytest.raises(LeaseDecodeError, match=message):
        node_to_lease(node, NAMES, config)


def test_own_patch_read_back_by_a_watcher_gives_the_same_attrs() -> None:
    attrs = node_to_lease(GO_DUAL_NODE, NAMES, DUAL).attrs
    fresh = k8s_node("worker-2", {}, ["10.244.2.0/24", "fd00:10:244:2::/64"])
    patch = own_annotation_patch(fresh, NAMES, attrs)
    assert patch is not None
    fresh["metadata"]["annotations"].update(patch["metadata"]["annotations"])
    assert node_to_lease(fresh, NAMES, DUAL).attrs == attrs


# --- own node (§7.4) --------------------------------------------------------------------------------


def test_own_node_uses_the_last_pod_cidr_of_a_family() -> None:
    n = k8s_node("me", {}, ["10.244.7.0/24", "10.244.8.0/24"])
    assert own_pod_cidrs(n, V4) == (IPv4Network("10.244.8.0/24"), None)


def test_own_dual_stack_pod_cidrs() -> None:
    assert own_pod_cidrs(GO_DUAL_NODE, DUAL) == (IPv4Network("10.244.2.0/24"), IPv6Network("fd00:10:244:2::/64"))
    assert own_pod_cidrs(GO_DUAL_NODE, V4) == (IPv4Network("10.244.2.0/24"), None)
    assert own_pod_cidrs(k8s_node("me", {}, ["fd00:10:244:2::/64"]), V6) == (None, IPv6Network("fd00:10:244:2::/64"))


def test_unassigned_pod_cidr_is_a_distinct_error_to_wait_on() -> None:
    with pytest.raises(PodCidrNotAssignedError) as err:
        own_pod_cidrs(k8s_node("me", {}, None), V4)
    assert str(err.value) == 'node "me" pod cidr not assigned'
    assert isinstance(err.value, OwnNodeError)


def test_own_pod_cidr_outside_network_gives_upstream_text() -> None:
    with pytest.raises(OwnNodeError) as err:
        own_pod_cidrs(k8s_node("me", {}, ["10.99.1.0/24"]), V4)
    assert type(err.value) is OwnNodeError
    assert str(err.value) == (
        'subnet "10.244.0.0/16" specified in the flannel net config doesn\'t contain "10.99.1.0/24" PodCIDR of the '
        '"me" node'
    )


def test_own_ipv6_pod_cidr_outside_ipv6_network_gives_upstream_text() -> None:
    with pytest.raises(OwnNodeError) as err:
        own_pod_cidrs(k8s_node("me", {}, ["10.244.1.0/24", "fd99::/64"]), DUAL)
    assert str(err.value) == (
        'subnet "fd00:10:244::/56" specified in the flannel net config doesn\'t contain "fd99::/64" IPv6 PodCIDR '
        'of the "me" node'
    )


def test_missing_network_fails_the_containment_check() -> None:
    with pytest.raises(OwnNodeError, match=r'^subnet "0\.0\.0\.0/0" specified .* "10\.244\.1\.0/24" PodCIDR'):
        own_pod_cidrs(k8s_node("me", {}, ["10.244.1.0/24"]), NetworkConfig())
    with pytest.raises(OwnNodeError, match=r'^subnet "0\.0\.0\.0/0"'):
        own_pod_cidrs(k8s_node("me", {}, ["10.244.1.0/24"]), NetworkConfig(network=IPv4Network("0.0.0.0/0")))
    with pytest.raises(OwnNodeError, match=r'^subnet "::/0" .* IPv6 PodCIDR'):
        own_pod_cidrs(k8s_node("me", {}, ["fd00::/64"]), NetworkConfig(enable_ipv4=False, enable_ipv6=True))


def test_own_node_with_three_pod_cidrs_is_rejected() -> None:
    with pytest.raises(OwnNodeError, match=r'^node "me" pod cidrs should be IPv4/IPv6 only or dualstack$'):
        own_pod_cidrs(k8s_node("me", {}, ["10.244.1.0/24", "fd00::/64", "10.244.2.0/24"]), V4)


def test_own_node_with_a_bad_pod_cidr_is_rejected() -> None:
    with pytest.raises(OwnNodeError, match=r"^invalid CIDR address: 10\.244\.1\.0$"):
        own_pod_cidrs(k8s_node("me", {}, ["10.244.1.0"]), V4)


def test_own_node_without_a_pod_cidr_of_an_enabled_family_is_rejected() -> None:
    with pytest.raises(OwnNodeError, match="no IPv6 PodCIDR"):
        own_pod_cidrs(k8s_node("me", {}, ["10.244.1.0/24"]), DUAL)


@pytest.mark.parametrize(
    ("net", "cidr", "contained"),
    [
        ("10.244.0.0/16", "10.244.0.0/16", True),
        ("10.244.0.0/16", "10.244.0.0/24", True),
        ("10.244.0.0/16", "10.244.255.0/24", True),
        ("10.244.0.0/16", "10.244.0.0/15", False),
        ("10.244.0.0/16", "192.168.0.0/24", False),
        ("2001:0db8:1234::/48", "2001:0db8:1234::/48", True),
        ("2001:0db8:1234::/48", "2001:0db8:1234::/64", True),
        ("2001:0db8:1234::/48", "2001:0db8:1234:ffff::/64", True),
        ("2001:0db8:1234::/48", "2001:0db8:1234::/47", False),
        ("2001:0db8:1234::/48", "fe02::/32", False),
        ("10.244.0.0/16", "fd00::/64", False),
    ],
)
def test_upstream_contains_cidr_vectors(net: str, cidr: str, contained: bool) -> None:
    assert contains_cidr(ip_network(net, strict=False), ip_network(cidr, strict=False)) is contained


# --- NetworkUnavailable (§7.6) ------------------------------------------------------------------------


def test_network_unavailable_patch_is_what_go_sends() -> None:
    assert network_unavailable_patch(datetime(2026, 11, 28, 9, 0, 0, 123456, tzinfo=UTC)) == {
        "status": {
            "conditions": [
                {
                    "type": "NetworkUnavailable",
                    "status": "False",
                    "lastHeartbeatTime": "2026-11-28T09:00:00Z",
                    "lastTransitionTime": "2026-11-28T09:00:00Z",
                    "reason": "FlannelIsUp",
                    "message": "Flannel is running on this node",
                }
            ]
        }
    }


def test_network_unavailable_times_are_written_in_utc() -> None:
    cet = timezone(timedelta(hours=1))
    cond = network_unavailable_patch(datetime(2026, 11, 28, 10, 0, 0, tzinfo=cet))["status"]["conditions"][0]
    assert cond["lastHeartbeatTime"] == "2026-11-28T09:00:00Z"


def test_network_unavailable_patch_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError):
        network_unavailable_patch(datetime(2026, 11, 28, 9, 0, 0))
