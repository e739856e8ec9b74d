"""The vxlan backend's own ``Backend`` section (spec §10.2).

Each backend parses its own keys, so a typo in one backend's section is reported by that backend with the
key's name. Keys are matched case-insensitively, as Go does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flannel.errors import ConfigError
from flannel.gojson import fold

log = logging.getLogger(__name__)

_FIELDS = ["Type", "VNI", "Port", "MTU", "GBP", "Learning", "DirectRouting", "MacPrefix", "Name"]
_WINDOWS_ONLY = {"MacPrefix", "Name"}
VXLAN_OVERHEAD = 50
"""Bytes of outer headers upstream subtracts from the MTU (⚠ it uses 50 even over an IPv6 underlay)."""
VXLAN6_OVERHEAD = 70
"""The kernel's headroom for a vxlan device over an IPv6 underlay (``VXLAN6_HEADROOM``)."""


def v6_device_mtu(mtu: int, underlay_mtu: int) -> int:
    """The MTU to give ``flannel-v6.<VNI>``: ``mtu``, capped at what the kernel allows over an IPv6 underlay.

    Upstream asks for ``mtu`` (underlay − 50) and the kernel silently caps a new device at underlay − 70, but
    it *rejects* (EINVAL) setting the larger MTU on an existing device, which adopting one on restart does.
    """
    return min(mtu, underlay_mtu - VXLAN6_OVERHEAD)


@dataclass(frozen=True)
class VXLANConfig:
    """Settings of the vxlan data plane."""

    vni: int = 1
    """VXLAN network identifier; also names the device ``flannel.<VNI>``."""
    port: int = 0
    """UDP destination port; 0 keeps the kernel default (8472)."""
    mtu: int = 0
    """Underlay MTU to derive the device MTU from; 0 means the external interface's MTU."""
    gbp: bool = False
    """Enable the VXLAN Group Based Policy extension."""
    learning: bool = False
    """Let the kernel learn FDB entries from traffic (off: flannel programs them)."""
    direct_routing: bool = False
    """Route directly over the underlay to peers on the same L2 segment instead of encapsulating."""

    @property
    def device_name(self) -> str:
        """The IPv4 device name."""
        return f"flannel.{self.vni}"

    @property
    def v6_device_name(self) -> str:
        """The IPv6 device name."""
        return f"flannel-v6.{self.vni}"


def parse_vxlan_config(backend: dict[str, Any]) -> VXLANConfig:
    """Read the ``Backend`` object; raise ``ConfigError`` naming ``Backend.<key>`` on a bad value."""
    known = {f.lower() for f in _FIELDS}
    for key in backend:
        if key.lower() not in known:
            log.warning("vxlan backend: ignoring unknown key Backend.%s", key)
    raw = fold(backend, _FIELDS)
    for key in _WINDOWS_ONLY & raw.keys():
        log.info("vxlan backend: Backend.%s only applies on Windows; ignored", key)
    cfg = VXLANConfig(
        vni=_int(raw, "VNI", 1),
        port=_int(raw, "Port", 0),
        mtu=_int(raw, "MTU", 0),
        gbp=_bool(raw, "GBP"),
        learning=_bool(raw, "Learning"),
        direct_routing=_bool(raw, "DirectRouting"),
    )
    if not 0 <= cfg.vni <= 0xFFFFFF:
        raise ConfigError(f"Backend.VNI must be between 0 and 16777215, got {cfg.vni}", "Backend.VNI")
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"Backend.Port must be between 0 and 65535, got {cfg.port}", "Backend.Port")
    if cfg.mtu < 0 or (cfg.mtu and cfg.mtu <= VXLAN_OVERHEAD + 68):
        raise ConfigError(f"Backend.MTU {cfg.mtu} is too small for vxlan", "Backend.MTU")
    return cfg


def _int(raw: dict[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ConfigError(f"Backend.{key} must be an integer, got {value!r}", f"Backend.{key}")
    return int(value)


def _bool(raw: dict[str, Any], key: str) -> bool:
    value = raw.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(f"Backend.{key} must be true or false, got {value!r}", f"Backend.{key}")
    return value
