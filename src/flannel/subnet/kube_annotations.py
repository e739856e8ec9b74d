"""The node annotations that carry a lease in Kubernetes mode (spec §7.2, §7.4 step 4).

In kube mode there is no datastore of leases: each flanneld publishes its ``LeaseAttrs`` as annotations on
its own Node object, and reads everybody else's from theirs. Go and Python nodes share those annotations, so
their names, their values and the decision of when to rewrite them must match upstream exactly. Everything
here is pure: nodes come in as the JSON dicts the API server returns, and patches go out as dicts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flannel.config import NetworkConfig
from flannel.errors import ConfigError
from flannel.gojson import fold, loads
from flannel.ipaddr import go_ip_text
from flannel.lease import LeaseAttrs

DEFAULT_PREFIX = "flannel.alpha.coreos.com"

# Upstream's regex, searched unanchored at the start as Go's MatchString does (so "Xorg.com" passes).
# ``\Z`` stands for Go's ``$``: without (?m) Go's ``$`` is the end of text, Python's also matches before a
# final newline.
_PREFIX_RE = re.compile(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?\Z", re.ASCII)
_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}", re.ASCII | re.IGNORECASE)

TRUE = "true"
"""The value of ``kube-subnet-manager`` on a flannel-managed node."""
NULL = "null"
"""The backend-data annotation of a backend without data (host-gw, ipip, udp ...)."""


@dataclass(frozen=True, slots=True)
class AnnotationNames:
    """The full annotation names for one prefix."""

    prefix: str
    """The normalised prefix, ending in ``/`` or ``-`` (e.g. ``flannel.alpha.coreos.com/``)."""
    kube_subnet_manager: str
    """``"true"`` marks a flannel-managed node; watchers ignore every other node."""
    backend_type: str
    """The backend type of the node's lease (``""`` for udp, alloc, tencent-vpc)."""
    backend_data: str
    """``BackendData`` as JSON text, ``null`` when the backend has none."""
    backend_v6_data: str
    """``BackendV6Data`` as JSON text."""
    public_ip: str
    """The IPv4 address peers use (the overwrite value when one is set)."""
    public_ipv6: str
    """The IPv6 address peers use (the v6 overwrite value when one is set)."""
    public_ip_overwrite: str
    """Set by the admin (NAT): copied into ``public_ip`` for peers; the local device keeps the detected one."""
    public_ipv6_overwrite: str
    """IPv6 equivalent of ``public_ip_overwrite``."""
    node_public_ip: str
    """Set by the admin: replaces ``--public-ip`` at startup."""
    node_public_ipv6: str
    """Set by the admin: replaces ``--public-ipv6`` at startup."""


def annotation_names(prefix: str = DEFAULT_PREFIX) -> AnnotationNames:
    """Build the names from ``--kube-annotation-prefix``; ``ConfigError`` with upstream's texts when invalid."""
    slashes = prefix.count("/")
    if slashes > 1:
        raise ConfigError("subnet/kube: prefix can contain at most single slash", "kube-annotation-prefix")
    if slashes == 0:
        prefix += "/"
    if not prefix.endswith(("/", "-")):
        prefix += "-"
    if _PREFIX_RE.search(prefix) is None:
        raise ConfigError("subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*", "kube-annotation-prefix")
    return AnnotationNames(
        prefix=prefix,
        kube_subnet_manager=prefix + "kube-subnet-manager",
        backend_type=prefix + "backend-type",
        backend_data=prefix + "backend-data",
        backend_v6_data=prefix + "backend-v6-data",
        public_ip=prefix + "public-ip",
        public_ipv6=prefix + "public-ipv6",
        public_ip_overwrite=prefix + "public-ip-overwrite",
        public_ipv6_overwrite=prefix + "public-ipv6-overwrite",
        node_public_ip=prefix + "node-public-ip",
        node_public_ipv6=prefix + "node-public-ipv6",
    )


def node_annotations(node: Mapping[str, Any]) -> dict[str, str]:
    """``metadata.annotations`` of a node dict; ``{}`` when absent, non-string values dropped.

    Go reads a missing key of a ``map[string]string`` as ``""``; callers use ``.get(name, "")`` for that.
    """
    meta = node.get("metadata")
    raw = meta.get("annotations") if isinstance(meta, Mapping) else None
    if not isinstance(raw, Mapping):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}


def node_name(node: Mapping[str, Any]) -> str:
    """``metadata.name`` of a node dict (``""`` when absent)."""
    meta = node.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name if isinstance(name, str) else ""


def is_flannel_node(node: Mapping[str, Any], names: AnnotationNames) -> bool:
    """Whether a node is flannel-managed (``kube-subnet-manager: "true"``); watchers ignore all others."""
    return node_annotations(node).get(names.kube_subnet_manager) == TRUE


def lease_relevant_change(
    old: Mapping[str, Any], new: Mapping[str, Any], names: AnnotationNames, config: NetworkConfig
) -> bool:
    """Whether a node update must be passed on as an Added event (spec §7.1, with two fixes).

    Relevant annotations: for IPv4 ``backend-data``, ``backend-type``, ``public-ip``; for IPv6
    ``backend-v6-data``, ``backend-type``, ``public-ipv6``. A resync (old == new) is never relevant, and
    neither is an update of a node that is not flannel-managed.

    Fixed on purpose: upstream lets the IPv6 comparison overwrite the IPv4 result, so in dual stack an
    IPv4-only change (say a new VtepMAC of ``flannel.1``) is ignored while the IPv6 annotations stay equal
    (quirk §17.8). Here either family's change counts. Also fixed: a node that *becomes* flannel-managed
    counts even if its lease annotations were already there, since upstream would never report it.
    """
    if not is_flannel_node(new, names):
        return False
    if not is_flannel_node(old, names):
        return True
    before, after = node_annotations(old), node_annotations(new)

    def differs(*keys: str) -> bool:
        return any(before.get(k, "") != after.get(k, "") for k in keys)

    v4 = config.enable_ipv4 and differs(names.backend_data, names.backend_type, names.public_ip)
    v6 = config.enable_ipv6 and differs(names.backend_v6_data, names.backend_type, names.public_ipv6)
    return v4 or v6


def backend_data_text(data: str | None) -> str:
    """What ``json.RawMessage.MarshalJSON`` gives for the attrs' data: the JSON text, ``null`` when empty."""
    return data or NULL


def own_annotation_patch(node: Mapping[str, Any], names: AnnotationNames, attrs: LeaseAttrs) -> dict[str, Any] | None:
    """The strategic-merge patch that publishes ``attrs`` on the own node, or None when nothing would change.

    Follows upstream's ``AcquireLease`` step 4 (spec §7.4): a rewrite is considered when the v4 annotations,
    ``kube-subnet-manager`` or a differing non-empty ``public-ip-overwrite`` disagree with ``attrs`` (and the
    v6 ones when the lease has a public IPv6). The rewrite sets ``backend-type``; ``backend-data`` and
    ``public-ip`` unless this is vxlan without v4 data (IPv6-only); the v6 pair for vxlan with v6 data,
    wireguard with v6 data and a public IPv6, host-gw or extension with a public IPv6; and
    ``kube-subnet-manager``. Overwrite annotations are copied into the public-ip ones. Upstream sends the
    two-way merge patch old → new, which holds exactly the changed keys; when there are none it sends an
    empty patch, which we skip (the node ends up the same).
    """
    ann = node_annotations(node)
    bd = backend_data_text(attrs.backend_data)
    bd6 = backend_data_text(attrs.backend_v6_data)
    btype = attrs.backend_type
    pip = go_ip_text(attrs.public_ip)
    pip6 = go_ip_text(attrs.public_ipv6) if attrs.public_ipv6 is not None else None
    over, over6 = ann.get(names.public_ip_overwrite, ""), ann.get(names.public_ipv6_overwrite, "")

    def stale(data_key: str, data: str, ip_key: str, ip: str, overwrite: str) -> bool:
        return (
            ann.get(data_key, "") != data
            or ann.get(names.backend_type, "") != btype
            or ann.get(ip_key, "") != ip
            or ann.get(names.kube_subnet_manager, "") != TRUE
            or (overwrite != "" and overwrite != ip)
        )

    v4_stale = stale(names.backend_data, bd, names.public_ip, pip, over)
    v6_stale = pip6 is not None and stale(names.backend_v6_data, bd6, names.public_ipv6, pip6, over6)
    if not (v4_stale or v6_stale):
        return None
    want: dict[str, str] = {names.backend_type: btype}
    if not (btype == "vxlan" and bd == NULL):
        want[names.backend_data] = bd
        want[names.public_ip] = over or pip
    if (
        (btype == "vxlan" and bd6 != NULL)
        or (btype == "wireguard" and bd6 != NULL and pip6 is not None)
        or (btype in ("host-gw", "extension") and pip6 is not None)
    ):
        want[names.backend_v6_data] = bd6
        if over6 or pip6 is not None:  # upstream would print a nil address here; we leave the key alone
            want[names.public_ipv6] = over6 or str(pip6)
    want[names.kube_subnet_manager] = TRUE
    changed = {k: v for k, v in want.items() if ann.get(k) != v}
    if not changed:
        return None
    return {"metadata": {"annotations": changed}}


def stored_vtep_mac(node: Mapping[str, Any], names: AnnotationNames, v6: bool = False) -> str | None:
    """The VtepMAC this node advertised before a restart, to recreate ``flannel[-v6].<VNI>`` with it (§10.2).

    Upstream reads ``"<raw prefix>/backend-data"`` (quirk §17.10), which misses the annotation whenever the
    prefix already contains a slash (including ``flannel.alpha.coreos.com/``); we read the computed names.
    Upstream also cuts the MAC out of the text by trimming and splitting on ``:"``; we parse the JSON and
    take ``VtepMAC`` (matched case-insensitively, as Go decodes). For ``{"VNI":1,"VtepMAC":"…"}`` both give
    the same MAC; for anything else upstream yields garbage where we give None (→ a random MAC).
    Returned lower-case.
    """
    text = node_annotations(node).get(names.backend_v6_data if v6 else names.backend_data, "")
    if not text:
        return None
    try:
        value = loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    mac = fold(value, ["VtepMAC"]).get("VtepMAC")
    if not isinstance(mac, str) or _MAC_RE.fullmatch(mac) is None:
        return None
    return mac.lower()


def node_public_ips(node: Mapping[str, Any], names: AnnotationNames) -> tuple[str, str]:
    """The admin's ``node-public-ip`` and ``node-public-ipv6`` texts (``""`` when unset), read at startup.

    They replace ``--public-ip`` / ``--public-ipv6`` (spec §2 step 8); the caller validates them.
    """
    ann = node_annotations(node)
    return ann.get(names.node_public_ip, ""), ann.get(names.node_public_ipv6, "")
