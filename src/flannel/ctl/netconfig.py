"""``flannelctl config get|set|validate``: the network config, checked by the code flanneld runs at start-up.

A config that flanneld would refuse should never reach etcd: every node would then loop on "failed to retrieve
network config" at its next restart. So validation is flanneld's own sequence, with its messages: the
document parse and ``CheckNetworkConfig`` (``config.py``, etcd mode), "none defined stack", the IPv6-only
refusal of etcd mode, and the backend's own parse of its ``Backend`` section (``backend.registry.create_backend``,
which each backend's constructor does without touching the kernel). The backend's warnings (an unknown key,
a Windows-only setting) are collected from its log records and shown too.

The backend is built against a placeholder interface whose public address is its own, because the interface
is a node's matter, not the config's: host-gw's NAT check, for one, belongs to ``status`` on a node.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from flannel.config import NetworkConfig, check_network_config, parse_network_config
from flannel.errors import ConfigError, FlannelError

PLACEHOLDER_V4 = IPv4Address("192.0.2.1")
PLACEHOLDER_V6 = IPv6Address("2001:db8::1")


@dataclass
class Validation:
    """The outcome of validating one document."""

    config: NetworkConfig | None = None
    """The checked config (defaults applied); None when invalid."""
    error: str = ""
    """flanneld's message for the first problem; empty when valid."""
    warnings: list[str] = field(default_factory=list)
    """What flanneld would log as warnings while accepting it."""


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _backend_warnings() -> Iterator[list[str]]:
    handler = _Collect()
    logger = logging.getLogger("flannel.backend")
    old_propagate, old_level = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False  # shown in the report, not a second time on stderr
    logger.setLevel(logging.WARNING)  # whatever the root logger's level: these are part of the answer
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = old_propagate, old_level


class _NoSubnetManager:
    """Never called: constructing a backend reads only its config."""

    def __getattr__(self, name: str) -> Any:
        raise FlannelError(f"validation must not use the subnet manager ({name})")


def _check_backend(config: NetworkConfig) -> None:
    from flannel.backend.base import BackendContext, ExternalInterface
    from flannel.backend.registry import create_backend

    ext = ExternalInterface(name="eth0", index=1, mtu=1500, iface_addr=PLACEHOLDER_V4, iface_v6_addr=PLACEHOLDER_V6,
                            ext_addr=PLACEHOLDER_V4, ext_v6_addr=PLACEHOLDER_V6)
    create_backend(BackendContext(_NoSubnetManager(), ext), config)


def validate(text: str | bytes, source: str, etcd_mode: bool = True) -> Validation:
    """Validate a config document as flanneld would on reading it from ``source`` (a key or a file name)."""
    out = Validation()
    try:
        config = parse_network_config(text)
        if etcd_mode:
            config = check_network_config(config)
    except ConfigError as exc:
        out.error = f"{source}: {exc}"
        return out
    if not (config.enable_ipv4 or config.enable_ipv6):
        out.error = "none defined stack"
        return out
    if etcd_mode and not config.enable_ipv4:
        out.error = "IPv6-only networks are not supported with etcd: subnet keys need an IPv4 part"
        return out
    if config.backend_missing:
        out.warnings.append(f"{source} has no Backend section: using upstream's default backend type 'udp'")
    with _backend_warnings() as warnings:
        try:
            _check_backend(config)
        except ConfigError as exc:
            out.error = f"{source}: {exc}"
        except FlannelError as exc:
            out.error = str(exc)
    out.warnings += warnings
    if not out.error:
        out.config = config
    return out


def report(v: Validation, source: str) -> tuple[dict[str, Any], str]:
    """The JSON and the text of a validation."""
    cfg = v.config
    doc: dict[str, Any] = {
        "source": source,
        "valid": not v.error,
        "error": v.error or None,
        "warnings": list(v.warnings),
        "network": str(cfg.network) if cfg and cfg.network else None,
        "ipv6_network": str(cfg.ipv6_network) if cfg and cfg.ipv6_network else None,
        "subnet_len": cfg.subnet_len if cfg else None,
        "backend_type": cfg.backend_type if cfg else None,
    }
    if v.error:
        text = f"{source}: invalid\n  {v.error}"
    else:
        assert cfg is not None
        text = (f"{source}: valid (network {cfg.network}, SubnetLen {cfg.subnet_len}, "
                f"backend {cfg.backend_type}{', IPv6 ' + str(cfg.ipv6_network) if cfg.enable_ipv6 else ''})")
    text += "".join(f"\n  warning: {w}" for w in v.warnings)
    return doc, text
