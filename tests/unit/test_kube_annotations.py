"""Kube-mode annotation names, update relevance, the own-node patch and the stored-MAC lookup (§7.1, §7.2, §7.4)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest

from flannel.config import NetworkConfig
from flannel.errors import ConfigError
from flannel.lease import LeaseAttrs
from flannel.subnet.kube_annotations import (
    annotation_names,
    is_flannel_node,
    lease_relevant_change,
    node_public_ips,
    own_annotation_patch,
    stored_vtep_mac,
)

P = "flannel.alpha.coreos.com/"
NAMES = annotation_names()
VXLAN_DATA = '{"VNI":1,"VtepMAC":"6e:2f:8c:8a:11:5c"}'
V4 = NetworkConfig(enable_ipv4=True)
V6 = NetworkConfig(enable_ipv4=False, enable_ipv6=True)
DUAL = NetworkConfig(enable_ipv4=True, enable_ipv6=True)


def node(annotations: dict[str, str] | None = None, name: str = "n1") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": {"podCIDR": "10.244.1.0/24"}}


def go_dual_node(**changes: str) -> dict[str, Any]:
    ann = {
        P + "kube-subnet-manager": "true",
        P + "backend-type": "vxlan",
        P + "backend-data": VXLAN_DATA,
        P + "backend-v6-data": '{"VNI":1,"VtepMAC":"9a:4b:1c:22:33:44"}',
        P + "public-ip": "192.168.1.10",
        P + "public-ipv6": "fd00::10",
    }
    ann.update({P + k.replace("_", "-"): v for k, v in changes.items()})
    return node(ann)


# --- names (§7.2) --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "backend_type"),
    [
        ("flannel.alpha.coreos.com", "flannel.alpha.coreos.com/backend-type"),
        ("flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/backend-type"),
        ("flannel.alpha.coreos.com/prefix", "flannel.alpha.coreos.com/prefix-backend-type"),
        ("flannel.alpha.coreos.com/prefix-", "flannel.alpha.coreos.com/prefix-backend-type"),
        ("org.com", "org.com/backend-type"),
        ("org9.com", "org9.com/backend-type"),
        ("org.com/9", "org.com/9-backend-type"),
    ],
)
def test_upstream_prefix_vectors_give_the_backend_type_name(prefix: str, backend_type: str) -> None:
    assert annotation_names(prefix).backend_type == backend_type


@pytest.mark.parametrize("prefix", ["org", "org/", "org/prefix", "org.COM", "org.com/PREFIX"])
def test_upstream_invalid_prefixes_are_rejected_with_upstream_text(prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"^subnet/kube: prefix must be in a format: fqdn/\[0-9a-z-_\]\*$"):
        annotation_names(prefix)


def test_two_slashes_are_rejected_with_upstream_text() -> None:
    with pytest.raises(ConfigError) as err:
        annotation_names("a.com/b/c")
    assert str(err.value) == "subnet/kube: prefix can contain at most single slash"


@pytest.mark.parametrize(("prefix", "normalised"), [("Xorg.com", "Xorg.com/"), ("not fqdn! a.b", "not fqdn! a.b/")])
def test_prefix_regex_is_unanchored_at_the_start_like_upstream(prefix: str, normalised: str) -> None:
    assert annotation_names(prefix).prefix == normalised


def test_default_prefix_gives_every_upstream_name() -> None:
    n = annotation_names("flannel.alpha.coreos.com")
    assert (
        n.kube_subnet_manager,
        n.backend_type,
        n.backend_data,
        n.backend_v6_data,
        n.public_ip,
        n.public_ipv6,
        n.public_ip_overwrite,
        n.public_ipv6_overwrite,
        n.node_public_ip,
        n.node_public_ipv6,
    ) == tuple(
        P + s
        for s in (
            "kube-subnet-manager",
            "backend-type",
            "backend-data",
            "backend-v6-data",
            "public-ip",
            "public-ipv6",
            "public-ip-overwrite",
            "public-ipv6-overwrite",
            "node-public-ip",
            "node-public-ipv6",
        )
    )


def test_custom_prefix_applies_to_every_name() -> None:
    n = annotation_names("example.org/net")
    assert n.backend_data == "example.org/net-backend-data"
    assert n.node_public_ipv6 == "example.org/net-node-public-ipv6"


# --- flannel-managed nodes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "managed"), [("true", True), ("True", False), ("false", False), ("", False), (None, False)]
)
def test_only_kube_subnet_manager_true_marks_a_flannel_node(value: str | None, managed: bool) -> None:
    ann = {} if value is None else {P + "kube-subnet-manager": value}
    assert is_flannel_node(node(ann), NAMES) is managed


def test_node_without_metadata_or_annotations_is_not_a_flannel_node() -> None:
    assert not is_flannel_node({}, NAMES)
    assert not is_flannel_node(node(None), NAMES)
    assert not is_flannel_node({"metadata": {"annotations": None}}, NAMES)


# --- update relevance (§7.1) ----------------------------------------------------------------------


def test_resync_update_with_identical_node_is_not_relevant() -> None:
    assert not lease_relevant_change(go_dual_node(), go_dual_node(), NAMES, DUAL)


def test_dual_stack_ipv4_only_change_is_relevant_unlike_upstream() -> None:
    new = go_dual_node(backend_data='{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}')
    assert lease_relevant_change(go_dual_node(), new, NAMES, DUAL)
    assert lease_relevant_change(go_dual_node(), go_dual_node(public_ip="192.168.1.11"), NAMES, DUAL)


def test_dual_stack_ipv6_change_is_relevant() -> None:
    assert lease_relevant_change(go_dual_node(), go_dual_node(public_ipv6="fd00::11"), NAMES, DUAL)


def test_ipv6_change_is_ignored_when_ipv6_is_disabled() -> None:
    assert not lease_relevant_change(go_dual_node(), go_dual_node(public_ipv6="fd00::11"), NAMES, V4)


def test_ipv4_change_is_ignored_when_ipv4_is_disabled() -> None:
    assert not lease_relevant_change(go_dual_node(), go_dual_node(public_ip="192.168.1.11"), NAMES, V6)


def test_backend_type_change_is_relevant_for_either_family() -> None:
    assert lease_relevant_change(go_dual_node(), go_dual_node(backend_type="host-gw"), NAMES, V4)
    assert lease_relevant_change(go_dual_node(), go_dual_node(backend_type="host-gw"), NAMES, V6)


def test_unrelated_annotation_change_is_not_relevant() -> None:
    new = go_dual_node(public_ip_overwrite="1.2.3.4")
    new["metadata"]["annotations"]["other/thing"] = "x"
    assert not lease_relevant_change(go_dual_node(), new, NAMES, DUAL)


def test_update_of_a_node_that_is_not_flannel_managed_is_not_relevant() -> None:
    old = go_dual_node(kube_subnet_manager="false")
    assert not lease_relevant_change(old, go_dual_node(kube_subnet_manager="false", public_ip="1.1.1.1"), NAMES, V4)


def test_node_becoming_flannel_managed_is_relevant() -> None:
    assert lease_relevant_change(go_dual_node(kube_subnet_manager="false"), go_dual_node(), NAMES, V4)


# --- own-node patch (§7.4 step 4) -------------------------------------------------------------------


def vxlan_attrs(**kw: Any) -> LeaseAttrs:
    return LeaseAttrs(public_ip=IPv4Address("192.168.1.10"), backend_type="vxlan", backend_data=VXLAN_DATA, **kw)


def ann_of(patch: dict[str, Any] | None) -> dict[str, str]:
    assert patch is not None and list(patch) == ["metadata"] and list(patch["metadata"]) == ["annotations"]
    return {k.removeprefix(P): v for k, v in patch["metadata"]["annotations"].items()}


def apply(n: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    if patch is not None:
        n["metadata"].setdefault("annotations", {}).update(patch["metadata"]["annotations"])
    return n


def test_fresh_node_gets_every_vxlan_annotation() -> None:
    assert ann_of(own_annotation_patch(node(None), NAMES, vxlan_attrs())) == {
        "backend-type": "vxlan",
        "backend-data": VXLAN_DATA,
        "public-ip": "192.168.1.10",
        "kube-subnet-manager": "true",
    }


def test_node_already_annotated_by_go_flanneld_needs_no_patch() -> None:
    assert own_annotation_patch(go_dual_node(), NAMES, vxlan_attrs()) is None


def test_patch_holds_only_the_changed_annotations() -> None:
    patch = own_annotation_patch(go_dual_node(public_ip="10.0.0.1"), NAMES, vxlan_attrs())
    assert ann_of(patch) == {"public-ip": "192.168.1.10"}


def test_public_ip_overwrite_is_copied_into_public_ip_and_then_stays_put() -> None:
    n = node({P + "public-ip-overwrite": "203.0.113.7"})
    patch = own_annotation_patch(n, NAMES, vxlan_attrs())
    assert ann_of(patch)["public-ip"] == "203.0.113.7"
    assert own_annotation_patch(apply(n, patch), NAMES, vxlan_attrs()) is None


def test_backend_without_data_writes_null() -> None:
    attrs = LeaseAttrs(public_ip=IPv4Address("10.0.0.5"), backend_type="host-gw")
    assert ann_of(own_annotation_patch(node({}), NAMES, attrs))["backend-data"] == "null"


def test_udp_writes_an_empty_backend_type() -> None:
    got = ann_of(own_annotation_patch(node({}), NAMES, LeaseAttrs(public_ip=IPv4Address("10.0.0.5"))))
    assert got["backend-type"] == "" and got["backend-data"] == "null"


def test_vxlan_ipv6_only_sets_neither_backend_data_nor_public_ip() -> None:
    v6_data = '{"VNI":1,"VtepMAC":"9a:4b:1c:22:33:44"}'
    attrs = LeaseAttrs(public_ipv6=IPv6Address("fd00::3"), backend_type="vxlan", backend_v6_data=v6_data)
    assert ann_of(own_annotation_patch(node({}), NAMES, attrs)) == {
        "backend-type": "vxlan",
        "backend-v6-data": v6_data,
        "public-ipv6": "fd00::3",
        "kube-subnet-manager": "true",
    }


def test_vxlan_dual_stack_sets_both_families() -> None:
    attrs = vxlan_attrs(public_ipv6=IPv6Address("fd00::10"), backend_v6_data='{"VNI":1,"VtepMAC":"9a:4b:1c:22:33:44"}')
    got = ann_of(own_annotation_patch(node({}), NAMES, attrs))
    assert got["public-ipv6"] == "fd00::10" and got["public-ip"] == "192.168.1.10"
    assert own_annotation_patch(go_dual_node(), NAMES, attrs) is None


def test_public_ipv6_overwrite_is_copied_into_public_ipv6() -> None:
    attrs = LeaseAttrs(public_ip=IPv4Address("10.0.0.5"), public_ipv6=IPv6Address("fd00::5"), backend_type="host-gw")
    got = ann_of(own_annotation_patch(node({P + "public-ipv6-overwrite": "2001:db8::5"}), NAMES, attrs))
    assert got["public-ipv6"] == "2001:db8::5" and got["backend-v6-data"] == "null"


@pytest.mark.parametrize(
    ("btype", "v6_data", "has_v6_keys"),
    [
        ("host-gw", None, True),
        ("extension", None, True),
        ("wireguard", '{"PublicKey":"k","Port":51821}', True),
        ("ipip", None, False),
        ("ipsec", None, False),
    ],
)
def test_which_backends_publish_v6_annotations(btype: str, v6_data: str | None, has_v6_keys: bool) -> None:
    attrs = LeaseAttrs(
        public_ip=IPv4Address("10.0.0.5"),
        public_ipv6=IPv6Address("fd00::5"),
        backend_type=btype,
        backend_v6_data=v6_data,
    )
    got = ann_of(own_annotation_patch(node({}), NAMES, attrs))
    assert ("public-ipv6" in got) is has_v6_keys
    assert ("backend-v6-data" in got) is has_v6_keys


def test_wireguard_without_public_ipv6_publishes_no_v6_annotations() -> None:
    attrs = LeaseAttrs(
        public_ip=IPv4Address("10.0.0.5"), backend_type="wireguard", backend_v6_data='{"PublicKey":"k","Port":1}'
    )
    got = ann_of(own_annotation_patch(node({}), NAMES, attrs))
    assert "backend-v6-data" not in got and "public-ipv6" not in got


def test_ipv4_mapped_public_ipv6_is_written_as_go_prints_it() -> None:
    attrs = LeaseAttrs(
        public_ip=IPv4Address("10.0.0.5"), public_ipv6=IPv6Address("::ffff:10.0.0.5"), backend_type="host-gw"
    )
    assert ann_of(own_annotation_patch(node({}), NAMES, attrs))["public-ipv6"] == "10.0.0.5"


# --- stored MAC and node public IPs ------------------------------------------------------------------


def test_stored_vtep_mac_reads_go_flanneld_backend_data() -> None:
    assert stored_vtep_mac(go_dual_node(), NAMES) == "6e:2f:8c:8a:11:5c"
    assert stored_vtep_mac(go_dual_node(), NAMES, v6=True) == "9a:4b:1c:22:33:44"


def test_stored_vtep_mac_works_with_a_prefix_containing_a_slash() -> None:
    names = annotation_names("example.org/net")
    assert stored_vtep_mac(node({"example.org/net-backend-data": VXLAN_DATA}), names) == "6e:2f:8c:8a:11:5c"


@pytest.mark.parametrize(
    "data",
    [None, "null", "", "{not json", '{"PublicKey":"abc","Port":51820}', '{"VNI":1,"VtepMAC":"zz"}', '"x"'],
)
def test_stored_vtep_mac_is_none_without_a_usable_mac(data: str | None) -> None:
    ann = {} if data is None else {P + "backend-data": data}
    assert stored_vtep_mac(node(ann), NAMES) is None


def test_stored_vtep_mac_accepts_any_key_case_and_key_order_and_lowers_the_mac() -> None:
    assert stored_vtep_mac(node({P + "backend-data": '{"vtepmac":"6E:2F:8C:8A:11:5C","VNI":1}'}), NAMES) == (
        "6e:2f:8c:8a:11:5c"
    )


def test_node_public_ips_reads_the_admin_annotations() -> None:
    n = node({P + "node-public-ip": "198.51.100.1", P + "node-public-ipv6": "2001:db8::1"})
    assert node_public_ips(n, NAMES) == ("198.51.100.1", "2001:db8::1")
    assert node_public_ips(node(None), NAMES) == ("", "")
