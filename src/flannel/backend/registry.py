"""The table of backends, by ``Backend.Type``.

Backends are listed in one explicit table rather than registered by import side effects, so it is obvious
what exists and what is still to come. Each factory imports its backend lazily: only the chosen backend's
module (and its optional dependencies, such as a cloud SDK) is ever loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from flannel.backend.base import Backend, BackendContext
from flannel.config import NetworkConfig
from flannel.errors import ConfigError, FlannelError, NotImplementedYetError

BackendFactory = Callable[[BackendContext, NetworkConfig], Backend]


def _not_yet(name: str) -> BackendFactory:
    def factory(ctx: BackendContext, config: NetworkConfig) -> Backend:
        raise NotImplementedYetError(f"backend {name!r} is not implemented yet in this release (use vxlan)")

    return factory


def _vxlan(ctx: BackendContext, config: NetworkConfig) -> Backend:
    from flannel.backend.vxlan import VXLANBackend  # imported lazily: only the chosen backend loads

    return VXLANBackend(ctx, config)


def _host_gw(ctx: BackendContext, config: NetworkConfig) -> Backend:
    from flannel.backend.hostgw import HostGWBackend

    return HostGWBackend(ctx, config)


def _udp(ctx: BackendContext, config: NetworkConfig) -> Backend:
    from flannel.backend.udp import UDPBackend

    return UDPBackend(ctx, config)


def _ipip(ctx: BackendContext, config: NetworkConfig) -> Backend:
    from flannel.backend.ipip import IPIPBackend

    return IPIPBackend(ctx, config)


def _ipsec(ctx: BackendContext, config: NetworkConfig) -> Backend:
    from flannel.backend.ipsec import IPsecBackend

    return IPsecBackend(ctx, config)


def _wireguard(ctx: BackendContext, config: NetworkConfig) -> Backend:
    from flannel.backend.wireguard import WireGuardBackend

    return WireGuardBackend(ctx, config)


def _extension(ctx: BackendContext, config: NetworkConfig) -> Backend:
    from flannel.backend.extension import ExtensionBackend

    return ExtensionBackend(ctx, config)


def _alloc(ctx: BackendContext, config: NetworkConfig) -> Backend:
    from flannel.backend.alloc import AllocBackend

    return AllocBackend(ctx, config)


def _aws_vpc(ctx: BackendContext, config: NetworkConfig) -> Backend:
    # daemon/entry.py keeps ``ssl`` out of an etcd-mode daemon (sys.modules["ssl"] = None) because nothing
    # there speaks TLS through it; the EC2 API does (HTTPS), so the block is lifted for this backend only.
    if "ssl" in sys.modules and sys.modules["ssl"] is None:
        del sys.modules["ssl"]
    try:
        from flannel.backend.awsvpc import AWSVPCBackend  # loads boto3: only on nodes configured for aws-vpc
    except ImportError as exc:
        raise FlannelError(f"the aws-vpc backend needs boto3: pip install 'flannel[aws]' ({exc})") from None

    return AWSVPCBackend(ctx, config)


BACKENDS: dict[str, BackendFactory] = {
    "vxlan": _vxlan,
    "host-gw": _host_gw,
    "udp": _udp,
    "ipip": _ipip,
    "ipsec": _ipsec,
    "wireguard": _wireguard,
    "extension": _extension,
    "alloc": _alloc,
    "tencent-vpc": _not_yet("tencent-vpc"),
    "aws-vpc": _aws_vpc,
}


def create_backend(ctx: BackendContext, config: NetworkConfig) -> Backend:
    """Look up ``Backend.Type`` (case-insensitively, as upstream) and construct the backend."""
    factory = BACKENDS.get(config.backend_type.lower())
    if factory is None:
        raise ConfigError(f"unknown backend type: {config.backend_type}", field="Backend.Type")
    return factory(ctx, config)
