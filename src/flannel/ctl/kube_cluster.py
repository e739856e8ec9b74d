"""``flannelctl leases`` in Kubernetes mode: every node's pod CIDR and flannel annotations, read as leases.

In kube mode a lease is not stored anywhere: flanneld derives it from a node (``kube_nodes.node_to_lease``, the
rule its node watch applies to every peer). So one paginated node list, through the client flanneld uses, gives
every lease, and the checks are the etcd mode's (``leases.check``). A node flanneld has not annotated yet (no
public-IP annotation) is a warning; a node whose annotations cannot be read is an error. Expiry and
reservations do not exist in this mode, and the config is ``--net-config-path``, unchecked as flanneld reads it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from flannel.config import NetworkConfig, parse_network_config
from flannel.ctl.datastore import Record, StoreUnreachable
from flannel.daemon.flags import Options
from flannel.errors import ConfigError, DatastoreUnavailableError, LeaseDecodeError
from flannel.subnet.kube_annotations import AnnotationNames, annotation_names, node_annotations, node_name
from flannel.subnet.kube_nodes import node_to_lease
from flannel.subnet.kvstore import KV


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
    from flannel.kube.config import load_client_config
    from flannel.kube.errors import KubeApiError

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
