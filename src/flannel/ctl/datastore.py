"""The cluster as ``flannelctl`` reads it: every record under etcd's ``<prefix>/subnets/``, or every node.

flanneld's own listing (``EtcdSubnetManager.list_leases``) drops what it cannot decode, with a log line,
because a daemon must go on. An operator's tool must do the opposite: show every key, say which ones are
garbage and why, and attach what etcd knows about each lease's life (remaining and granted TTL). The store,
the key layout (``join_key``) and the decoders are flanneld's own, so what is shown is what flanneld sees.

The store is asked with a bounded wait (``--timeout``), so an unreachable etcd ends the command with a message
naming the endpoints instead of hanging in flanneld's retry loops.

In Kubernetes mode a lease is not stored anywhere: flanneld derives it from a node (``kube_nodes.node_to_lease``,
the rule its node watch applies to every peer). So one paginated node list, through the client flanneld uses,
gives every lease as a ``Record`` of source ``kube``, and the checks are the etcd mode's. A node flanneld has not
annotated yet is ``pending``. Expiry and reservations do not exist there, and the config is
``--net-config-path``, unchecked as flanneld reads it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any, TypeVar

from flannel.config import NetworkConfig, check_network_config, parse_network_config
from flannel.daemon.flags import Options
from flannel.errors import ConfigError, DatastoreUnavailableError, LeaseDecodeError
from flannel.lease import Lease, LeaseAttrs, parse_subnet_key
from flannel.secret import redact_urls
from flannel.subnet.etcd_choice import etcd_client_class
from flannel.subnet.etcd_manager import CONFIG_NOT_FOUND, join_key
from flannel.subnet.etcd_options import EtcdStoreOptions
from flannel.subnet.kube_annotations import AnnotationNames, annotation_names, node_annotations, node_name
from flannel.subnet.kube_nodes import node_to_lease
from flannel.subnet.kvstore import KV, EtcdClient

T = TypeVar("T")


class StoreUnreachable(Exception):
    """etcd did not answer within the bounded wait; ``str()`` names the endpoints and the reason."""


@dataclass(frozen=True)
class Record:
    """One key under ``<prefix>/subnets/``, decoded as far as it goes."""

    kv: KV
    """The raw key and value with their revisions and etcd lease."""
    subnets: tuple[IPv4Network, IPv6Network | None] | None
    """The subnets the key names; None when the key is not a subnet key."""
    lease: Lease | None
    """The decoded lease; None when the key or the value cannot be read."""
    error: str
    """Why it could not be decoded (empty when it could)."""
    ttl: int | None
    """Remaining seconds of its etcd lease; None for a reservation (no etcd lease) or when unknown."""
    granted: int | None
    """The TTL the etcd lease was granted with (renewed ago = granted - ttl); None as ``ttl``."""
    source: str = "etcd"
    """``etcd`` (a subnet key) or ``kube`` (a node: ``kv.key`` is ``node/<name>``, nothing is reserved)."""
    pending: bool = False
    """kube: a node flanneld has not annotated yet (no lease to read, and nothing wrong with that alone)."""

    @property
    def name(self) -> str:
        """The key's last element, e.g. ``10.5.52.0-24``."""
        return self.kv.key.rsplit("/", 1)[-1]

    @property
    def reserved(self) -> bool:
        """A reservation: a key without an etcd lease (spec §6.8)."""
        return self.source == "etcd" and self.kv.lease_id == 0


def store_options(opts: Options, timeout: float) -> EtcdStoreOptions:
    """flanneld's ``--etcd-*`` flags as store options, each request bounded by ``timeout``."""
    return EtcdStoreOptions.from_flag(opts.etcd_endpoints, keyfile=opts.etcd_keyfile, certfile=opts.etcd_certfile,
                                      cafile=opts.etcd_cafile, username=opts.etcd_username,
                                      password=opts.etcd_password, request_timeout=timeout)


@asynccontextmanager
async def connected(opts: Options, timeout: float) -> AsyncIterator[EtcdClient]:
    """An open store; ``StoreUnreachable`` when no endpoint answers within ``timeout`` seconds."""
    options = store_options(opts, timeout)
    store = etcd_client_class(os.environ)(options)
    try:
        try:
            async with asyncio.timeout(timeout):
                await store.connect()
        except (DatastoreUnavailableError, TimeoutError) as exc:
            why = str(exc) or f"no answer within {timeout:g}s"
            endpoints = ",".join(options.endpoints)
            raise StoreUnreachable(redact_urls(f"cannot reach etcd at {endpoints}: {why}")) from None
        try:
            yield store
        except StoreUnreachable as exc:
            raise StoreUnreachable(redact_urls(f"cannot reach etcd at {','.join(options.endpoints)}: {exc}")) from None
    finally:
        await store.close()


async def bounded(coro: Awaitable[T], timeout: float, what: str) -> T:
    """Await ``coro`` for at most ``timeout`` seconds; ``StoreUnreachable`` naming ``what`` otherwise (``connected``
    adds the endpoints to its message)."""
    try:
        async with asyncio.timeout(timeout):
            return await coro
    except (DatastoreUnavailableError, TimeoutError) as exc:
        raise StoreUnreachable(f"{what}: {exc or f'no answer within {timeout:g}s'}") from None


def config_key(opts: Options) -> str:
    return join_key(opts.etcd_prefix, "config")


def subnets_prefix(opts: Options) -> str:
    return join_key(opts.etcd_prefix, "subnets") + "/"


async def read_config(store: EtcdClient, opts: Options, timeout: float) -> tuple[KV | None, NetworkConfig | None, str]:
    """The stored config record, the checked config and the error flanneld would log (empty when valid)."""
    key = config_key(opts)
    kv: KV | None = await bounded(store.get(key), timeout, f"read {key}")
    if kv is None:
        return None, None, CONFIG_NOT_FOUND
    try:
        return kv, check_network_config(parse_network_config(kv.value)), ""
    except ConfigError as exc:
        return kv, None, f"{key}: {exc}"


def decode(kv: KV, ttl: int | None = None, granted: int | None = None) -> Record:
    """One record, decoded with flanneld's parsers; never raises."""
    subnets = parse_subnet_key(kv.key)
    if subnets is None:
        return Record(kv, None, None, "not a subnet key", ttl, granted)
    try:
        attrs = LeaseAttrs.from_json(kv.value)
    except LeaseDecodeError as exc:
        return Record(kv, subnets, None, str(exc), ttl, granted)
    expiration = time.time() + ttl if ttl is not None and ttl >= 0 else 0.0
    lease = Lease(subnets[0], subnets[1], attrs, expiration, kv.mod_revision, reserved=kv.lease_id == 0)
    return Record(kv, subnets, lease, "", ttl, granted)


async def read_records(store: EtcdClient, opts: Options, timeout: float, ttls: bool = True) -> list[Record]:
    """Every key under ``<prefix>/subnets/``, oldest first (by creation revision: the first holder of a contested
    subnet comes first, as in flanneld's lease guard), with each etcd lease's remaining and granted TTL."""
    prefix = subnets_prefix(opts)
    kvs, _ = await bounded(store.get_prefix(prefix), timeout, f"list {prefix}")
    records = []
    for kv in sorted(kvs, key=lambda kv: (kv.create_revision, kv.key)):
        ttl = granted = None
        if ttls and kv.lease_id:
            remaining, given = await bounded(store.lease_times(kv.lease_id), timeout, f"look up lease of {kv.key}")
            ttl, granted = (remaining, given) if remaining >= 0 else (0, given)
        records.append(decode(kv, ttl, granted))
    return records


def read_net_conf(path: str) -> tuple[NetworkConfig | None, str]:
    """net-conf.json as flanneld's kube manager reads it, with its error texts."""
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 20)
    except OSError as exc:
        return None, f"failed to read net conf: {exc}"
    try:
        return parse_network_config(text), ""
    except ConfigError as exc:
        return None, f"error parsing subnet config: {path}: {exc}"


def node_record(node: Mapping[str, Any], index: int, names: AnnotationNames, config: NetworkConfig) -> Record:
    """One node as a record: its lease, or why it has none."""
    name = node_name(node) or f"#{index}"
    kv = KV(f"node/{name}", b"", 0, 0, index)
    if not node_annotations(node).get(names.public_ip):
        return Record(kv, None, None, f"node {name} has no {names.public_ip} annotation", None, None, "kube",
                      pending=True)
    try:
        lease = node_to_lease(node, names, config)
    except LeaseDecodeError as exc:
        return Record(kv, None, None, str(exc), None, None, "kube")
    subnets = (lease.subnet, lease.ipv6_subnet) if lease.subnet is not None else None
    return Record(kv, subnets, lease, "", None, None, "kube")


async def read_nodes(opts: Options, timeout: float) -> tuple[NetworkConfig | None, str, list[Record]]:
    """The config, its error, and one record per node in the API server's order (by name)."""
    from flannel.kube.client import KubeClient
    from flannel.kube.errors import KubeApiError
    from flannel.kube.loading import load_client_config

    config, config_error = read_net_conf(opts.net_config_path)
    names = annotation_names(opts.kube_annotation_prefix)
    client_config = load_client_config(opts.kube_api_url, opts.kubeconfig_file, os.environ)
    records: list[Record] = []
    try:
        async with asyncio.timeout(timeout), KubeClient(client_config, request_timeout=timeout) as client:
            async for page in client.list_nodes():
                records += [node_record(node, len(records) + i, names, config or NetworkConfig())
                            for i, node in enumerate(page)]
    except (KubeApiError, DatastoreUnavailableError, OSError, TimeoutError) as exc:
        why = str(exc) or f"no answer within {timeout:g}s"
        raise StoreUnreachable(f"cannot list nodes from the API server {client_config.server}: {why}") from None
    return config, config_error, records
