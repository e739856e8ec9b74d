"""The wireguard backend's settings: its ``Backend`` section (spec §10.6) and the node's own choices.

The ``Backend`` section is shared by every node of the cluster (Go ones too), so it holds only upstream's keys
with upstream's types: a keepalive given as ``"25s"`` is refused as Go refuses it, and an unknown ``Mode``
gets upstream's ``no valid Mode configured``. What differs per node (kernel or userspace WireGuard, whether
to delete the devices on shutdown, the key file) comes from the node's environment instead, where a Go
node never looks.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flannel.backend.backend_config import int_key, read_section, str_key
from flannel.errors import ConfigError
from flannel.secret import NO_SECRET_BYTES, Secret

_FIELDS = ["ListenPort", "ListenPortV6", "MTU", "PSK", "PersistentKeepaliveInterval", "Mode"]
WG_OVERHEAD = 80
"""Bytes upstream subtracts from the MTU: outer IPv6 header (40), UDP (8), WireGuard header (16), tag (16)."""
DEVICE = "flannel-wg"
"""The IPv4 device in ``separate`` mode, the only device in the other modes."""
DEVICE_V6 = "flannel-wg-v6"
"""The IPv6 device in ``separate`` mode."""
DEFAULT_KEY_FILE = "/run/flannel/wgkey"
KEY_LEN = 32
MIN_DEVICE_MTU = 68
"""The kernel's smallest MTU for a link carrying IPv4; the device's MTU is ``MTU - 80``."""

ENV_KEY_FILE = "WIREGUARD_KEY_FILE"
"""Upstream's variable for the private key's path."""
ENV_IMPL = "FLANNEL_WIREGUARD_IMPL"
"""``auto`` (default), ``kernel`` or ``userspace``: how this node talks to WireGuard."""
ENV_REMOVE = "FLANNEL_WIREGUARD_REMOVE_ON_SHUTDOWN"
"""``true``: delete the devices when flanneld stops, as upstream does (default ``false``: keep them)."""
ENV_WG_GO = "FLANNEL_WIREGUARD_GO"
"""The ``wireguard-go`` program to start for the userspace implementation (default: found on ``PATH``)."""


class Mode(enum.Enum):
    """Which devices carry which family (upstream's ``Mode``)."""

    SEPARATE = "separate"
    AUTO = "auto"
    IPV4 = "ipv4"
    IPV6 = "ipv6"


class Impl(enum.Enum):
    """How WireGuard is reached on this node."""

    AUTO = "auto"
    KERNEL = "kernel"
    USERSPACE = "userspace"


@dataclass(frozen=True)
class WireGuardConfig:
    """Settings of the wireguard data plane (the ``Backend`` section)."""

    listen_port: int = 51820
    """UDP port of ``flannel-wg``."""
    listen_port_v6: int = 51821
    """UDP port of ``flannel-wg-v6`` (``separate`` mode only)."""
    mtu: int = 0
    """Underlay MTU the device MTU is derived from (``MTU - 80``); 0 means the external interface's."""
    psk: Secret[bytes] = field(default=NO_SECRET_BYTES)
    """Pre-shared key given to every peer (32 bytes; empty: none)."""
    keepalive: int = 0
    """Persistent keepalive interval in seconds, 0 for none."""
    mode: Mode = Mode.SEPARATE
    """Device layout and, in single-device modes, the endpoint family."""


@dataclass(frozen=True)
class NodeSettings:
    """Per-node choices, from the environment."""

    key_file: str = DEFAULT_KEY_FILE
    """Where the private key is kept."""
    impl: Impl = Impl.AUTO
    """Kernel WireGuard, ``wireguard-go``, or whichever is available (kernel first)."""
    remove_on_shutdown: bool = False
    """Delete the devices when flanneld stops (upstream's behaviour)."""
    wireguard_go: str = "wireguard-go"
    """The userspace implementation's program."""


def parse_key(text: str, what: str) -> bytes:
    """A WireGuard key in base64 (44 characters for 32 bytes), as Go's ``wgtypes.ParseKey`` reads it."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ConfigError(f"{what} is not valid base64", what) from None
    if len(raw) != KEY_LEN:
        raise ConfigError(f"{what} must decode to {KEY_LEN} bytes, got {len(raw)}", what)
    return raw


def parse_wireguard_config(backend: Mapping[str, Any]) -> WireGuardConfig:
    """Read the ``Backend`` object; raise ``ConfigError`` naming ``Backend.<key>`` on a bad value."""
    raw = read_section("wireguard", backend, _FIELDS)
    mode_text = raw.get("Mode")
    if mode_text is None:  # absent or JSON null: Go keeps the default
        mode_text = Mode.SEPARATE.value
    if not isinstance(mode_text, str) or mode_text not in {m.value for m in Mode}:
        raise ConfigError(f"Backend.Mode {mode_text!r}: no valid Mode configured (want separate, auto, ipv4 or "
                          "ipv6)", "Backend.Mode")
    mtu = int_key(raw, "MTU", 0, lo=0, hi=65535)
    if mtu and mtu - WG_OVERHEAD < MIN_DEVICE_MTU:
        raise ConfigError(f"Backend.MTU {mtu} is too small: the device gets MTU - {WG_OVERHEAD}, which must be at "
                          f"least {MIN_DEVICE_MTU}", "Backend.MTU")
    psk_text = str_key(raw, "PSK")
    psk = Secret(parse_key(psk_text, "Backend.PSK")) if psk_text else NO_SECRET_BYTES
    return WireGuardConfig(
        listen_port=int_key(raw, "ListenPort", 51820, lo=1, hi=65535),
        listen_port_v6=int_key(raw, "ListenPortV6", 51821, lo=1, hi=65535),
        mtu=mtu,
        psk=psk,
        # Go decodes a time.Duration from a JSON number only (a string such as "25s" is an error), then
        # multiplies it by a second; the kernel keeps it in 16 bits.
        keepalive=int_key(raw, "PersistentKeepaliveInterval", 0, lo=0, hi=65535),
        mode=Mode(mode_text),
    )


def node_settings(env: Mapping[str, str] | None = None) -> NodeSettings:
    """This node's choices from ``env`` (default: the process environment); ``ConfigError`` names the variable."""
    env = os.environ if env is None else env
    impl_text = env.get(ENV_IMPL, "auto").strip().lower() or "auto"
    try:
        impl = Impl(impl_text)
    except ValueError:
        raise ConfigError(f"{ENV_IMPL}={impl_text!r}: want auto, kernel or userspace", ENV_IMPL) from None
    remove_text = env.get(ENV_REMOVE, "false").strip().lower() or "false"
    if remove_text not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{ENV_REMOVE}={remove_text!r}: want true or false", ENV_REMOVE)
    return NodeSettings(
        key_file=env.get(ENV_KEY_FILE, DEFAULT_KEY_FILE) or DEFAULT_KEY_FILE,
        impl=impl,
        remove_on_shutdown=remove_text in ("true", "1", "yes"),
        wireguard_go=env.get(ENV_WG_GO, "wireguard-go") or "wireguard-go",
    )
