"""``flannelctl reserve`` / ``unreserve``: subnet reservations in etcd (spec §6.8).

A reservation is a subnet key written without an etcd lease: it never expires, and the node whose public IP
it names reuses it (flanneld keeps it without a TTL, ``etcd_manager._reuse``). Writing one by hand with
etcdctl is easy to get wrong in ways flanneld only notices later, silently: a subnet outside
``SubnetMin``..``SubnetMax`` or of the wrong length is ignored with a warning at that node's next start, and a
put over another node's live lease hands its pods' subnet to a second node. So the subnet is checked with
flanneld's own ``compatible_subnet``, overlaps with flanneld's ``overlaps_any``, and every write is
conditional on the record just read (a node renewing meanwhile makes the command fail, not overwrite).

``unreserve`` deletes the key. When the node named in it is running, its lease keeper finds its key gone and
creates it again with a TTL: the reservation has become an ordinary lease, as the operator intended.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from typing import Any

from flannel.config import NetworkConfig, compatible_subnet
from flannel.ctl.datastore import Record, bounded, subnets_prefix
from flannel.ctl.output import WARNING, Finding
from flannel.daemon.flags import Options
from flannel.lease import UNSET_IPV4, Lease, LeaseAttrs, make_subnet_key, parse_subnet_key
from flannel.subnet.allocate import overlaps_any
from flannel.subnet.kvstore import EtcdClient


class Refused(Exception):
    """The request is not carried out; ``str()`` says why (exit 1)."""


def parse_subnet(text: str) -> tuple[IPv4Network, IPv6Network | None]:
    """``10.5.1.0/24``, or a key ``10.5.1.0-24`` / ``10.5.1.0-24&fc00::-64``; ``ValueError`` otherwise."""
    if "/" in text:
        try:
            net = ip_network(text, strict=True)
        except ValueError as exc:
            raise ValueError(f"invalid subnet {text!r}: {exc}") from None
        if not isinstance(net, IPv4Network):
            raise ValueError(f"invalid subnet {text!r}: etcd keys need an IPv4 subnet (give a dual-stack one as "
                             "10.5.1.0-24&fc00::-64)")
        return net, None
    parsed = parse_subnet_key(text)
    if parsed is None or make_subnet_key(*parsed) != text:
        raise ValueError(f"invalid subnet {text!r}: give a CIDR (10.5.1.0/24) or a subnet key (10.5.1.0-24)")
    return parsed


def _key(opts: Options, v4: IPv4Network, v6: IPv6Network | None) -> str:
    return subnets_prefix(opts) + make_subnet_key(v4, v6)


async def reserve(store: EtcdClient, opts: Options, timeout: float, config: NetworkConfig, records: list[Record],
                  subnet: str, public_ip: str, force: bool) -> tuple[dict[str, Any], list[Finding]]:
    """Write the reservation; ``Refused`` (nothing written) when it would be ignored or would take a live lease."""
    try:
        v4, v6 = parse_subnet(subnet)
        ip = IPv4Address(public_ip)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    if ip == UNSET_IPV4:
        raise Refused("--public-ip 0.0.0.0 names no node")
    if not compatible_subnet(config, v4, v6):
        raise Refused(f"{make_subnet_key(v4, v6)} does not fit the network config (SubnetMin {config.subnet_min}, "
                      f"SubnetMax {config.subnet_max}, SubnetLen /{config.subnet_len}"
                      f"{', and an IPv6 part of /' + str(config.ipv6_subnet_len) if config.enable_ipv6 else ''}): "
                      "flanneld would ignore this reservation")
    key = _key(opts, v4, v6)
    findings: list[Finding] = []
    same = next((r for r in records if r.kv.key == key), None)
    others = [r.lease for r in records if r.kv.key != key and r.lease is not None]
    taken = overlaps_any(v4, v6, others + _undecodable(records, key))
    if taken is not None:
        why = f"{make_subnet_key(v4, v6)} overlaps lease {taken.key} (public IP {taken.attrs.public_ip})"
        if not force:
            raise Refused(f"{why}; use --force to write it anyway")
        findings.append(Finding(WARNING, "overlaps_lease", key, why + " (written with --force)"))
    value = LeaseAttrs(public_ip=ip).to_json()
    if same is not None and same.lease is not None and same.lease.attrs.public_ip == ip:
        value = same.kv.value.decode()  # the node's own record: it keeps its backend data, only the TTL goes
    elif same is not None:
        holder = same.lease.attrs.public_ip if same.lease is not None else "an unreadable record"
        kind = "reservation" if same.reserved else "live lease"
        if not force:
            raise Refused(f"{make_subnet_key(v4, v6)} is the {kind} of {holder}; use --force to replace it")
        findings.append(Finding(WARNING, "replaced", key, f"replaced the {kind} of {holder} (--force)"))
    for r in records:
        if r.kv.key != key and r.lease is not None and r.lease.attrs.public_ip == ip:
            findings.append(Finding(WARNING, "node_has_lease", r.kv.key,
                                    f"{ip} also holds this lease; the node may keep it instead of the reservation"))
    if same is None:
        written = await bounded(store.create(key, value, None), timeout, f"create {key}")
    else:
        written = await bounded(store.replace(key, value, None, same.kv.mod_revision), timeout, f"replace {key}")
    if written is None:
        raise Refused(f"{key} changed while it was being reserved; nothing written, try again")
    return {"key": key.rsplit("/", 1)[-1], "public_ip": str(ip), "action": "reserved", "value": value}, findings


def _undecodable(records: list[Record], key: str) -> list[Lease]:
    """Records that cannot be read still occupy their subnet, as in flanneld's allocation."""
    return [Lease(r.subnets[0], r.subnets[1]) for r in records
            if r.kv.key != key and r.lease is None and r.subnets is not None]


async def unreserve(store: EtcdClient, opts: Options, timeout: float, records: list[Record], subnet: str,
                    force: bool) -> tuple[dict[str, Any], list[Finding]]:
    """Delete a reservation; ``Refused`` when the key is missing, or a live lease without ``force``."""
    try:
        v4, v6 = parse_subnet(subnet)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    key = _key(opts, v4, v6)
    rec = next((r for r in records if r.kv.key == key), None)
    if rec is None:
        raise Refused(f"{key} does not exist")
    findings: list[Finding] = []
    if not rec.reserved:
        holder = rec.lease.attrs.public_ip if rec.lease is not None else "an unreadable record"
        if not force:
            raise Refused(f"{key} is not a reservation but the live lease of {holder}; use --force to delete it "
                          "(a running node then creates it again)")
        findings.append(Finding(WARNING, "deleted_live_lease", key, f"deleted the live lease of {holder} (--force)"))
    await bounded(store.delete(key), timeout, f"delete {key}")
    return {"key": key.rsplit("/", 1)[-1], "action": "unreserved"}, findings

