"""The table of backends, by ``Backend.Type``.

Backends are listed in one explicit table rather than registered by import side effects, so it is obvious
what exists. Each factory imports its backend lazily: only the chosen backend's
module (and its optional dependencies, such as a cloud SDK) is ever loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from flannel.backend.base import Backend, BackendContext
from flannel.config import NetworkConfig
from flannel.errors import ConfigError, FlannelError

BackendFactory = Callable[[BackendContext, NetworkConfig], Backend]


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


def _cloud(module: str, cls: str, extra: str, package: str) -> BackendFactory:
    """A cloud route backend: its module imports the cloud's SDK, so a missing SDK names the extra to install."""

    def factory(ctx: BackendContext, config: NetworkConfig) -> Backend:
        import importlib

        # The daemon keeps ``ssl`` out in etcd mode (daemon/entry.py); a cloud API is HTTPS, so let it back in.
        if "ssl" in sys.modules and sys.modules["ssl"] is None:
            del sys.modules["ssl"]
        try:
            mod = importlib.import_module(f"flannel.backend.{module}")
        except ImportError as exc:
            raise FlannelError(f"backend {config.backend_type!r} needs the Python package {package} ({exc.name} "
                               f"is missing): pip install 'flannel[{extra}]'") from None
        backend: Backend = getattr(mod, cls)(ctx, config)
        return backend

    return factory


BACKENDS: dict[str, BackendFactory] = {
    "vxlan": _vxlan,
    "host-gw": _host_gw,
    "udp": _udp,
    "ipip": _ipip,
    "ipsec": _ipsec,
    "wireguard": _wireguard,
    "extension": _extension,
    "alloc": _alloc,
    "ali-vpc": _cloud("alivpc", "AliVPCBackend", "ali", "aliyun-python-sdk-vpc"),
    "aws-vpc": _cloud("awsvpc", "AWSVPCBackend", "aws", "boto3"),
    "gce": _cloud("gce", "GCEBackend", "gce", "google-api-python-client"),
    "tencent-vpc": _cloud("tencentvpc", "TencentVPCBackend", "tencent", "tencentcloud-sdk-python-common"),
}


def create_backend(ctx: BackendContext, config: NetworkConfig) -> Backend:
    """Look up ``Backend.Type`` (case-insensitively, as upstream) and construct the backend."""
    factory = BACKENDS.get(config.backend_type.lower())
    if factory is None:
        raise ConfigError(f"unknown backend type: {config.backend_type}", field="Backend.Type")
    return factory(ctx, config)
