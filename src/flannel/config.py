"""The network configuration document (spec §3): parsing, defaulting and validation.

Go and Python nodes read the same document from ``<prefix>/config`` (or net-conf.json), so it must be read
exactly as Go's ``encoding/json`` reads it into ``subnet.Config``: keys case-insensitive, the last duplicate
winning, the same type errors, and upstream's error strings. Defaulting/validation (``CheckNetworkConfig``)
runs in etcd mode only; the compatibility test decides whether a lease may be reused under this config.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from flannel.errors import ConfigError
from flannel.gojson import compact, fold, loads
from flannel.ipaddr import go_ip_text

__all__ = [
    "ConfigError",
    "NetworkConfig",
    "check_network_config",
    "compatible_subnet",
    "parse_network_config",
]

_FIELDS = [
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "Network",
    "IPv6Network",
    "Networks",
    "IPv6Networks",
    "SubnetMin",
    "SubnetMax",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "SubnetLen",
    "IPv6SubnetLen",
    "Backend",
]
_UINT_MAX = (1 << 64) - 1
_V4_ALL = (1 << 32) - 1


@dataclass(frozen=True)
class NetworkConfig:
    """The cluster-wide network config, as stored at ``<prefix>/config`` or in net-conf.json."""

    network: IPv4Network | None = None
    """The IPv4 cluster network (host bits masked)."""
    ipv6_network: IPv6Network | None = None
    """The IPv6 cluster network (host bits masked)."""
    enable_ipv4: bool = True
    """Whether IPv4 is enabled."""
    enable_ipv6: bool = False
    """Whether IPv6 is enabled."""
    enable_nftables: bool = False
    """Use nftables instead of iptables for traffic rules."""
    subnet_len: int = 0
    """Prefix length of each node's IPv4 subnet (0 = default it)."""
    subnet_min: IPv4Address | None = None
    """First allocatable IPv4 subnet (None = default it)."""
    subnet_max: IPv4Address | None = None
    """Last allocatable IPv4 subnet start (None = default it)."""
    ipv6_subnet_len: int = 0
    """Prefix length of each node's IPv6 subnet (0 = default it)."""
    ipv6_subnet_min: IPv6Address | None = None
    """First allocatable IPv6 subnet (None = default it)."""
    ipv6_subnet_max: IPv6Address | None = None
    """Last allocatable IPv6 subnet start (None = default it)."""
    backend_type: str = "udp"
    """``Backend.Type`` as written (lookups lower-case it); ``udp`` when ``Backend`` is absent."""
    backend: dict[str, Any] = field(default_factory=dict)
    """The raw ``Backend`` object, handed to the backend to parse its own keys."""
    backend_missing: bool = False
    """True when the document had no ``Backend`` key (the daemon logs a warning)."""


def parse_network_config(text: str | bytes) -> NetworkConfig:
    """Parse the JSON document; raise ``ConfigError`` naming the key on a type error.

    Mirrors Go's ``ParseConfig``: no defaulting beyond ``EnableIPv4=true`` and the backend type, so that the
    kube manager (which never runs the check) sees the values as written.
    """
    if not text.strip():
        raise ConfigError("unexpected end of JSON input")
    try:
        doc = loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid JSON: {exc}") from None
    if doc is None:  # Go leaves the struct untouched when decoding a JSON null.
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"json: cannot unmarshal {_json_kind(doc)} into Go value of type subnet.Config")
    raw = fold(doc, _FIELDS)
    values: dict[str, Any] = {}
    for key, attr in (
        ("EnableIPv4", "enable_ipv4"),
        ("EnableIPv6", "enable_ipv6"),
        ("EnableNFTables", "enable_nftables"),
    ):
        if raw.get(key) is not None:
            values[attr] = _bool(raw[key], key)
    for key, attr in (("SubnetLen", "subnet_len"), ("IPv6SubnetLen", "ipv6_subnet_len")):
        if raw.get(key) is not None:
            values[attr] = _uint(raw[key], key)
    if "Network" in raw:
        values["network"] = _v4_net(raw["Network"], "Network")
    if "IPv6Network" in raw:
        values["ipv6_network"] = _v6_net(raw["IPv6Network"], "IPv6Network")
    for key, attr in (("SubnetMin", "subnet_min"), ("SubnetMax", "subnet_max")):
        if key in raw:
            v4 = _v4_addr(raw[key], key)
            values[attr] = v4 if int(v4) else None
    for key, attr in (("IPv6SubnetMin", "ipv6_subnet_min"), ("IPv6SubnetMax", "ipv6_subnet_max")):
        if raw.get(key) is not None:  # a pointer field in Go: null leaves it unset
            v6 = _v6_addr(raw[key], key)
            values[attr] = v6 if int(v6) else None
    # Go decodes these MultiClusterCIDR leftovers (so bad values fail the parse) and then discards them.
    for key, parse_one in (("Networks", _v4_net), ("IPv6Networks", _v6_net)):
        if raw.get(key) is not None:
            if not isinstance(raw[key], list):
                raise ConfigError(
                    _type_error(raw[key], key, "[]ip.IP4Net" if key == "Networks" else "[]ip.IP6Net"), key
                )
            for item in raw[key]:
                parse_one(item, key)
    if "Backend" not in raw:
        values.update(backend_type="udp", backend={}, backend_missing=True)
    else:
        values.update(_backend(raw["Backend"]))
    return NetworkConfig(**values)


def _backend(value: Any) -> dict[str, Any]:
    # Go keeps Backend as raw JSON and reads only ``Type`` from it; ``null`` reads as an empty type.
    prefix = "error decoding Backend property of config: "
    if value is None:
        return {"backend_type": "", "backend": {}, "backend_missing": False}
    if not isinstance(value, dict):
        raise ConfigError(
            prefix
            + f"json: cannot unmarshal {_json_kind(value)} into Go value of type struct {{ Type string }}",
            "Backend",
        )
    btype = fold(value, ["Type"]).get("Type")
    if btype is not None and not isinstance(btype, str):
        raise ConfigError(
            prefix + f"json: cannot unmarshal {_json_kind(btype)} into Go struct field .Type of type string",
            "Backend",
        )
    return {"backend_type": btype or "", "backend": value, "backend_missing": False}


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return "object"


def _type_error(value: Any, key: str, go_type: str) -> str:
    kind = _json_kind(value)
    if kind == "number" and go_type == "uint":  # Go quotes the number only when it failed to parse as one
        kind = f"number {compact(value)}"
    return f"json: cannot unmarshal {kind} into Go struct field Config.{key} of type {go_type}"


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(_type_error(value, key, "bool"), key)
    return value


def _uint(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT_MAX:
        raise ConfigError(_type_error(value, key, "uint"), key)
    return value


def _literal(value: Any) -> str:
    # Go hands the custom unmarshalers the raw token with its quotes trimmed, so a number or null is
    # parsed as text (and fails).
    return value if isinstance(value, str) else compact(value)


def _cidr(value: Any, key: str) -> IPv4Network | IPv6Network:
    text = _literal(value)
    addr, _, bits = text.partition("/")
    try:
        # Go's ParseCIDR: "addr/decimal-length" only (no netmask form, no zone, no spaces).
        if not (bits.isascii() and bits.isdigit()) or "%" in addr or addr != addr.strip():
            raise ValueError(text)
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"invalid CIDR address: {text}", key) from None


def _v4_net(value: Any, key: str) -> IPv4Network:
    net = _cidr(value, key)
    if not isinstance(net, IPv4Network):
        raise ConfigError("invalid IPv4 CIDR format", key)
    return net


def _v6_net(value: Any, key: str) -> IPv6Network:
    net = _cidr(value, key)
    if not isinstance(net, IPv6Network):
        # Go would store an IPv4 CIDR here as nonsense (::ffff:a.b.c.d with an IPv4 prefix length).
        raise ConfigError("invalid IPv6 CIDR format", key)
    return net


def _addr(value: Any, key: str) -> IPv4Address | IPv6Address:
    text = _literal(value)
    try:
        if "%" in text:  # Go's ParseIP takes no zone
            raise ValueError(text)
        return ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError("invalid IP address format", key) from None


def _v4_addr(value: Any, key: str) -> IPv4Address:
    addr = _addr(value, key)
    if isinstance(addr, IPv6Address):
        if addr.ipv4_mapped is None:
            raise ConfigError("invalid IPv4 address format", key)
        return addr.ipv4_mapped
    return addr


def _v6_addr(value: Any, key: str) -> IPv6Address:
    addr = _addr(value, key)
    if isinstance(addr, IPv4Address):  # Go's 16-byte form of an IPv4 address
        return IPv6Address(f"::ffff:{addr}")
    return addr


def check_network_config(cfg: NetworkConfig) -> NetworkConfig:
    """Apply upstream's defaulting and validation, returning the completed config.

    Steps and error strings follow ``CheckNetworkConfig`` exactly (spec §3.3); the first error wins.
    """
    changes: dict[str, Any] = {}
    if cfg.enable_ipv4:
        changes.update(_check_v4(cfg))
    if cfg.enable_ipv6:
        changes.update(_check_v6(cfg))
    return dataclasses.replace(cfg, **changes)


def _check_v4(cfg: NetworkConfig) -> dict[str, Any]:
    net = cfg.network
    if net is None or (int(net.network_address) == 0 and net.prefixlen == 0):
        raise ConfigError("please define a correct Network parameter in the flannel config", "Network")
    prefix = net.prefixlen
    sublen = cfg.subnet_len
    if sublen > 0:
        if sublen > 30:
            raise ConfigError("SubnetLen must be less than /31", "SubnetLen")
        if sublen < prefix + 2:
            raise ConfigError("network must be able to accommodate at least four subnets", "SubnetLen")
    elif prefix > 28:
        raise ConfigError("network is too small. Minimum useful network prefix is /28", "Network")
    else:
        sublen = 24 if prefix <= 22 else prefix + 2
    size = 1 << (32 - sublen)
    base = int(net.network_address)
    smin = int(cfg.subnet_min) if cfg.subnet_min is not None else 0
    smax = int(cfg.subnet_max) if cfg.subnet_max is not None else 0
    if smin == 0:
        smin = (base + size) & _V4_ALL
    elif IPv4Address(smin) not in net:
        raise ConfigError("SubnetMin is not in the range of the Network", "SubnetMin")
    if smax == 0:
        smax = (base + (1 << (32 - prefix)) - size) & _V4_ALL  # uint32 arithmetic, as in Go
    elif IPv4Address(smax) not in net:
        raise ConfigError("SubnetMax is not in the range of the Network", "SubnetMax")
    mask = (_V4_ALL << (32 - sublen)) & _V4_ALL
    for name, value in (("SubnetMin", smin), ("SubnetMax", smax)):
        if value & mask != value:
            raise ConfigError(f"{name} is not on a SubnetLen boundary: {IPv4Address(value)}", name)
    return {"subnet_len": sublen, "subnet_min": IPv4Address(smin), "subnet_max": IPv4Address(smax)}


def _check_v6(cfg: NetworkConfig) -> dict[str, Any]:
    net = cfg.ipv6_network
    if net is None or (int(net.network_address) == 0 and net.prefixlen == 0):
        raise ConfigError(
            "please define a correct IPv6Network parameter in the flannel config", "IPv6Network"
        )
    prefix = net.prefixlen
    sublen = cfg.ipv6_subnet_len
    if sublen > 0:
        if sublen > 126:
            raise ConfigError("SubnetLen must be less than /127", "IPv6SubnetLen")
        if sublen < prefix + 2:
            raise ConfigError("network must be able to accommodate at least four subnets", "IPv6SubnetLen")
    elif prefix > 124:
        raise ConfigError("IPv6Network is too small. Minimum useful network prefix is /124", "IPv6Network")
    else:
        sublen = 64 if prefix <= 62 else prefix + 2
    size = 1 << (128 - sublen)
    base = int(net.network_address)
    smin = int(cfg.ipv6_subnet_min) if cfg.ipv6_subnet_min is not None else 0
    smax = int(cfg.ipv6_subnet_max) if cfg.ipv6_subnet_max is not None else 0
    if smin == 0:
        smin = base + size
    elif IPv6Address(smin) not in net:
        raise ConfigError("IPv6SubnetMin is not in the range of the IPv6Network", "IPv6SubnetMin")
    if smax == 0:
        smax = base + (1 << (128 - prefix)) - size
    elif IPv6Address(smax) not in net:
        raise ConfigError("IPv6SubnetMax is not in the range of the IPv6Network", "IPv6SubnetMax")
    low_bits = size - 1
    for name, value in (("IPv6SubnetMin", smin), ("IPv6SubnetMax", smax)):
        if value & low_bits:
            raise ConfigError(
                f"{name} is not on a SubnetLen boundary: {go_ip_text(IPv6Address(value))}", name
            )
    return {
        "ipv6_subnet_len": sublen,
        "ipv6_subnet_min": IPv6Address(smin),
        "ipv6_subnet_max": IPv6Address(smax),
    }


def compatible_subnet(cfg: NetworkConfig, v4: IPv4Network | None, v6: IPv6Network | None) -> bool:
    """Whether a lease's subnets still fit a *checked* config, so the lease may be reused (spec §6.3 step 3).

    IPv4: SubnetMin ≤ ip ≤ SubnetMax and the prefix equals SubnetLen (checked even when IPv4 is disabled,
    as upstream does; an absent subnet counts as ``0.0.0.0/0``). IPv6: when disabled the lease must have no
    IPv6 part; otherwise the same range and length test.
    """
    ip4 = int(v4.network_address) if v4 is not None else 0
    len4 = v4.prefixlen if v4 is not None else 0
    min4 = int(cfg.subnet_min) if cfg.subnet_min is not None else 0
    max4 = int(cfg.subnet_max) if cfg.subnet_max is not None else 0
    if not min4 <= ip4 <= max4 or len4 != cfg.subnet_len:
        return False
    v6_empty = v6 is None or (int(v6.network_address) == 0 and v6.prefixlen == 0)
    if not cfg.enable_ipv6:
        return v6_empty
    if v6_empty or cfg.ipv6_subnet_min is None or cfg.ipv6_subnet_max is None:
        return False
    assert v6 is not None
    if not cfg.ipv6_subnet_min <= v6.network_address <= cfg.ipv6_subnet_max:
        return False
    return v6.prefixlen == cfg.ipv6_subnet_len
