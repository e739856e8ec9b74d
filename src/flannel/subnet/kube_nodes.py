"""Node objects → leases in Kubernetes mode (spec §7.3–§7.6).

In kube mode the lease of a node is not stored anywhere: it is derived from the node's pod CIDR (assigned
by the controller manager) and its flannel annotations. Watched nodes become the remote leases backends
program; the own node becomes the local lease. These rules, their error texts and the status patch are kept
pure here (dict in, ``Lease``/dict out) so the manager only does I/O and they can be tested exhaustively.
"""

from __future__ import annotations

import ipaddress
import sys
import time
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Any

from flannel.config import NetworkConfig
from flannel.errors import FlannelError, LeaseDecodeError
from flannel.gojson import compact, loads
from flannel.ipaddr import IPNetwork, go_net_text, ipv4_int, within
from flannel.lease import Lease, LeaseAttrs
from flannel.subnet.kube_annotations import AnnotationNames, node_annotations, node_name

if TYPE_CHECKING:
    from datetime import datetime

class OwnNodeError(FlannelError):
    """The own node cannot give this flanneld a lease (bad pod CIDRs, or outside the configured network)."""


class PodCidrNotAssignedError(OwnNodeError):
    """The own node has no pod CIDR yet. Upstream exits; the manager waits for the controller instead."""


class _NodeNamedError(ValueError):
    """A ``ValueError`` whose text already names the node (upstream's wording), so it is not prefixed again."""


def _parse_cidr(text: str) -> IPNetwork:
    """Go's ``net.ParseCIDR``: ``addr/decimal`` only, host bits masked; ``ValueError`` with Go's text."""
    addr, slash, bits = text.partition("/")
    try:
        if not slash or not (bits.isascii() and bits.isdigit()) or "%" in addr or addr != addr.strip():
            raise ValueError(text)
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"invalid CIDR address: {text}") from None


def _cidr4_ints(text: str) -> tuple[int, int] | None:
    """``_parse_cidr`` of an IPv4 CIDR in its plain form (``10.244.3.0/24``) as (network address, prefix length)
    numbers, without the network object; None for anything else, which ``_parse_cidr`` then decides."""
    addr, slash, bits = text.partition("/")
    if not slash or len(bits) > 2 or not (bits.isascii() and bits.isdigit()):
        return None
    value, plen = ipv4_int(addr), int(bits)
    if value is None or plen > 32:
        return None
    return value & ~((1 << (32 - plen)) - 1), plen


def _pod_cidr_texts(node: Mapping[str, Any]) -> tuple[str, list[str]]:
    """``spec.podCIDR`` and ``spec.podCIDRs`` (``""`` / ``[]`` when absent or not strings)."""
    spec = node.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    single = spec.get("podCIDR")
    many = spec.get("podCIDRs")
    return (
        single if isinstance(single, str) else "",
        [c for c in many if isinstance(c, str)] if isinstance(many, list) else [],
    )


def _cidr_texts(node: Mapping[str, Any]) -> list[str]:
    """The pod CIDR texts to look through, in upstream's order: ``podCIDRs``, else ``podCIDR``; more than two is
    an error naming the node."""
    single, many = _pod_cidr_texts(node)
    if len(many) >= 3:
        raise _NodeNamedError(f'node "{node_name(node)}" pod cidrs should be IPv4/IPv6 only or dualstack')
    return many or [single]


def _pick_cidr(node: Mapping[str, Any], version: int, last: bool) -> IPNetwork | None:
    """The pod CIDR of one family (spec §7.3): ``podCIDR`` when ``podCIDRs`` is empty, else first/last match.

    Parsing stops at the first match when ``last`` is False, as upstream's loop breaks there, so a bad entry
    after it is not noticed. Raises ``ValueError`` (Go's texts; the caller adds the node name).
    """
    found: IPNetwork | None = None
    for text in _cidr_texts(node):
        net = _parse_cidr(text)
        if net.version == version:
            found = net
            if not last:
                break
    return found


def _first_cidr4(node: Mapping[str, Any]) -> tuple[int, int] | None:
    """``_pick_cidr(node, 4, last=False)`` as numbers: what every watched node's lease needs (issue #16)."""
    for text in _cidr_texts(node):
        fast = _cidr4_ints(text)
        if fast is not None:
            return fast
        net = _parse_cidr(text)
        if net.version == 4:
            return int(net.network_address), net.prefixlen
    return None


def _parse_public_ip(text: str, version: int) -> IPv4Address | IPv6Address:
    """Upstream's ``ParseIP4`` / ``ParseIP6`` (Go ``net.ParseIP``: no zone); ``ValueError`` with Go's text."""
    try:
        if "%" in text:
            raise ValueError(text)
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("invalid IP address format") from None
    if version == 4:
        if isinstance(addr, IPv6Address):
            if addr.ipv4_mapped is None:
                raise ValueError("invalid IPv4 address format")
            return addr.ipv4_mapped
        return addr
    return IPv6Address(f"::ffff:{addr}") if isinstance(addr, IPv4Address) else addr


def _raw_json(text: str, what: str) -> str | None:
    """An annotation's JSON text as ``LeaseAttrs`` keeps it (compacted like ``from_json``); None for no data.

    Upstream takes the text verbatim as a ``json.RawMessage`` without checking it. We validate it here so a
    malformed value skips that one node instead of failing later in the backend, and we re-serialise it
    exactly as ``LeaseAttrs.from_json`` does, so a kube lease equals the etcd lease of the same node.
    """
    if text == "":
        return None
    try:
        value = loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from None
    return None if value is None else compact(value)


def node_to_lease(node: Mapping[str, Any], names: AnnotationNames, config: NetworkConfig) -> Lease:
    """The lease a watched node publishes (spec §7.5); ``LeaseDecodeError`` naming the node otherwise.

    Per enabled family, in upstream's order: the public IP annotation (missing or invalid → error), the
    backend data (verbatim JSON; ``null`` or absent → none), then the first pod CIDR of that family
    (none → ``missing IPv4 address on n.Spec.PodCIDRs``). ``BackendType`` comes from ``backend-type``.
    Upstream names the *own* node in the "pod cidrs should be…" error; we name the node at fault.
    """
    ann = node_annotations(node)
    name = node_name(node)
    # Interned: thousands of nodes name the same backend ("vxlan"), one decoded string each otherwise.
    attrs: dict[str, Any] = {"backend_type": sys.intern(ann.get(names.backend_type, ""))}
    v4: tuple[int, int] | None = None
    v6: IPv6Network | None = None
    try:
        if config.enable_ipv4:
            attrs["public_ip"] = _annotated_ip(ann, names.public_ip, 4)
            attrs["backend_data"] = _raw_json(ann.get(names.backend_data, ""), names.backend_data)
            v4 = _first_cidr4(node)
            if v4 is None:
                raise ValueError("missing IPv4 address on n.Spec.PodCIDRs")
        if config.enable_ipv6:
            attrs["public_ipv6"] = _annotated_ip(ann, names.public_ipv6, 6)
            attrs["backend_v6_data"] = _raw_json(ann.get(names.backend_v6_data, ""), names.backend_v6_data)
            net6 = _pick_cidr(node, 6, last=False)
            if not isinstance(net6, IPv6Network):
                raise ValueError("missing IPv6 address on n.Spec.PodCIDRs")
            v6 = net6
    except _NodeNamedError as exc:
        raise LeaseDecodeError(str(exc)) from None
    except ValueError as exc:
        raise LeaseDecodeError(f'node "{name}": {exc}') from None
    if v4 is None:
        return Lease(subnet=None, ipv6_subnet=v6, attrs=LeaseAttrs(**attrs))
    return Lease.from_ints(v4[0], v4[1], v6, LeaseAttrs(**attrs))


def _annotated_ip(ann: Mapping[str, str], key: str, version: int) -> IPv4Address | IPv6Address | int:
    """The public address in annotation ``key`` (IPv4 in its plain form as a number, which ``LeaseAttrs`` holds);
    ``ValueError`` naming the annotation and its value."""
    text = ann.get(key, "")
    if version == 4 and (value := ipv4_int(text)) is not None:
        return value
    try:
        return _parse_public_ip(text, version)
    except ValueError as exc:
        raise ValueError(f'annotation {key}="{text}": {exc}') from None


def own_pod_cidrs(node: Mapping[str, Any], config: NetworkConfig) -> tuple[IPv4Network | None, IPv6Network | None]:
    """The own lease's subnets (spec §7.4 steps 2 and 5), for the families the config enables.

    Raises ``PodCidrNotAssignedError`` while the node has no pod CIDR (upstream exits; we let the manager
    wait), and ``OwnNodeError`` for ≥ 3 or unparsable pod CIDRs and for a CIDR outside ``Network`` /
    ``IPv6Network`` (upstream's texts; an absent network fails the check too). When several CIDRs share a
    family the last one wins, as upstream does for the own node.

    Deliberate difference: upstream carries on with no IPv4 subnet when IPv4 is enabled but the node has
    only an IPv6 pod CIDR (and vice versa), leaving a broken subnet.env; we raise ``OwnNodeError``.

    The "IPv4-only unless vxlan, host-gw or wireguard" rule changes nothing here: upstream implements it by
    clearing the lease's EnableIPv6 flag while keeping its IPv6 subnet (so subnet.env still lists it), and
    nothing on Linux reads the own lease's flags.
    """
    name = node_name(node)
    single, many = _pod_cidr_texts(node)
    if not single and not many:  # upstream tests podCIDR alone; the API server sets both or neither
        raise PodCidrNotAssignedError(f'node "{name}" pod cidr not assigned')
    try:
        net4 = _pick_cidr(node, 4, last=True) if config.enable_ipv4 else None
        net6 = _pick_cidr(node, 6, last=True) if config.enable_ipv6 else None
    except ValueError as exc:
        raise OwnNodeError(str(exc)) from None
    v4 = net4 if isinstance(net4, IPv4Network) else None
    v6 = net6 if isinstance(net6, IPv6Network) else None
    if config.enable_ipv4:
        _check_own_cidr(name, v4, config.network, IPv4Network("0.0.0.0/0"), "IPv4", "PodCIDR")
    if config.enable_ipv6:
        _check_own_cidr(name, v6, config.ipv6_network, IPv6Network("::/0"), "IPv6", "IPv6 PodCIDR")
    return v4, v6


def _check_own_cidr(name: str, cidr: IPNetwork | None, network: IPNetwork | None, unset: IPNetwork,
                    family: str, what: str) -> None:
    """One enabled family of the own node: a pod CIDR of it, inside the configured network (upstream's text;
    an absent or empty network fails, and is printed as ``unset``)."""
    if cidr is None:
        raise OwnNodeError(f'node "{name}" has no {family} PodCIDR but {family} is enabled in the flannel net config')
    net = network or unset
    if network is None or _empty(net) or not contains_cidr(net, cidr):
        raise OwnNodeError(
            f'subnet "{go_net_text(net)}" specified in the flannel net config doesn\'t contain '
            f'"{cidr}" {what} of the "{name}" node'
        )


def _empty(net: IPNetwork) -> bool:
    # Upstream's IP4Net/IP6Net.Empty(): address 0 and prefix 0.
    return int(net.network_address) == 0 and net.prefixlen == 0


def contains_cidr(net: IPNetwork, cidr: IPNetwork) -> bool:
    """Upstream's ``containsCIDR``: ``cidr`` lies inside ``net`` (never across families)."""
    return within(cidr, net)


def network_unavailable_patch(now: datetime | float) -> dict[str, Any]:
    """The ``nodes/<name>/status`` strategic-merge patch that clears NetworkUnavailable (spec §7.6).

    Keys in the order Go marshals ``v1.NodeCondition``; times as ``metav1.Time`` writes them (UTC RFC 3339,
    whole seconds, ``Z``). ``now``: Unix time (``time.time()``), or a timezone-aware ``datetime`` (a naive one is
    ambiguous). flanneld passes Unix time: ``datetime`` is 0.5 MiB of resident memory to import (issue #16).
    """
    if not isinstance(now, int | float):
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("network_unavailable_patch needs a timezone-aware time")
        now = now.timestamp()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    condition = {
        "type": "NetworkUnavailable",
        "status": "False",
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": stamp,
        "reason": "FlannelIsUp",
        "message": "Flannel is running on this node",
    }
    return {"status": {"conditions": [condition]}}
