"""Which etcd client flanneld and flannelctl use: ``FLANNEL_ETCD_CLIENT`` picks it, and only that one is imported.

Kept apart from ``etcd_options`` (which both clients import for their options) so that choosing a client does
not make the options module import the clients back: no import circle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from flannel.errors import ConfigError
from flannel.subnet.etcd_options import CLIENT_ENV, EtcdStoreOptions

if TYPE_CHECKING:
    from flannel.subnet.kvstore import EtcdClient


def etcd_client_class(environ: Mapping[str, str]) -> Callable[[EtcdStoreOptions], EtcdClient]:
    """The etcd client ``FLANNEL_ETCD_CLIENT`` names; only that one is imported.

    ``gateway`` (default): etcd's JSON gateway over HTTP/1.1 (``EtcdGatewayStore``), ~20 MiB less RSS than
    gRPC (issue #16, docs/performance.md). ``grpc``: ``EtcdStore`` over etcd3aio/grpcio, installed with the
    ``flannel[grpc]`` extra. ``ConfigError`` for another value, or for ``grpc`` without its packages.
    """
    choice = environ.get(CLIENT_ENV, "") or "gateway"
    if choice == "gateway":
        from flannel.subnet.etcd_gateway import EtcdGatewayStore

        return EtcdGatewayStore
    if choice != "grpc":
        raise ConfigError(f"{CLIENT_ENV}={choice!r}: use gateway (the default) or grpc", CLIENT_ENV)
    try:
        from flannel.subnet.etcd_store import EtcdStore
    except ImportError as exc:
        raise ConfigError(f"{CLIENT_ENV}=grpc needs the gRPC client, which is not installed ({exc}): install "
                          f"flannel[grpc], or leave {CLIENT_ENV} unset for the JSON-gateway client",
                          CLIENT_ENV) from None
    return EtcdStore
