"""The vxlan backend's own ``Backend`` section (spec §10.2).

Each backend parses its own keys, so a typo in one backend's section is reported by that backend with the
key's name; the rules for doing so (case-insensitive keys, unknown keys warned about, errors naming
``Backend.<key>``) are the shared ones of ``backend_config.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flannel.backend.backend_config import bool_key, int_key, read_section
from flannel.errors import ConfigError

_FIELDS = ["VNI", "Port", "MTU", "GBP", "Learning", "DirectRouting", "NexthopObjects"]
_WINDOWS_ONLY = {"macprefix": "only applies on Windows", "name": "only applies on Windows"}
VXLAN_OVERHEAD = 50
"""Bytes of outer headers upstream subtracts from the MTU (⚠ it uses 50 even over an IPv6 underlay)."""
VXLAN6_OVERHEAD = 70
"""The kernel's headroom for a vxlan device over an IPv6 underlay (``VXLAN6_HEADROOM``)."""
IPV4_MIN_MTU, IP_MAX_MTU = 68, 65535
"""The kernel's range for the MTU of a link carrying IPv4 (``IPV4_MIN_MTU``, ``IP_MAX_MTU``)."""
MIN_MTU, MAX_MTU = IPV4_MIN_MTU + VXLAN_OVERHEAD + 1, IP_MAX_MTU
"""The range of ``Backend.MTU`` (0 = unset): the device MTU, ``MTU - 50``, must exceed 68 (as before), and the
underlay's MTU cannot exceed 65535."""


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
    nexthop_objects: bool = True
    """Ours, not upstream's: IPv4 peer routes name kernel nexthop objects (``nhid N``) where the kernel has them."""

    @property
    def device_name(self) -> str:
        """The IPv4 device name."""
        return f"flannel.{self.vni}"

    @property
    def v6_device_name(self) -> str:
        """The IPv6 device name."""
        return f"flannel-v6.{self.vni}"


def parse_vxlan_config(backend: Mapping[str, Any]) -> VXLANConfig:
    """Read the ``Backend`` object; raise ``ConfigError`` naming ``Backend.<key>`` on a bad value."""
    raw = read_section("vxlan", backend, _FIELDS, ignored=_WINDOWS_ONLY)
    cfg = VXLANConfig(
        vni=int_key(raw, "VNI", 1, lo=0, hi=0xFFFFFF),
        port=int_key(raw, "Port", 0, lo=0, hi=65535),
        mtu=int_key(raw, "MTU", 0),
        gbp=bool_key(raw, "GBP"),
        learning=bool_key(raw, "Learning"),
        direct_routing=bool_key(raw, "DirectRouting"),
        nexthop_objects=bool_key(raw, "NexthopObjects", True),
    )
    if cfg.mtu and not MIN_MTU <= cfg.mtu <= MAX_MTU:
        # Checked here: past this point the value would reach netlink (EINVAL) or overflow its u32 (struct.error).
        raise ConfigError(
            f"Backend.MTU {cfg.mtu} is too {'small' if cfg.mtu < MIN_MTU else 'large'} for vxlan: it must be "
            f"between {MIN_MTU} and {MAX_MTU} (the underlay MTU; the device gets MTU - {VXLAN_OVERHEAD}, which "
            f"must fit the kernel's IPv4 range {IPV4_MIN_MTU}..{IP_MAX_MTU})",
            "Backend.MTU",
        )
    return cfg
