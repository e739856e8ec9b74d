"""flanneld's flags as data (spec §1.1), and Go's value syntax for them.

Kept apart from the parser so that the one table drives parsing, the ``FLANNELD_*`` environment, the usage
text and the ``Options`` fields. Names, defaults and help strings are upstream's, so scripts and manifests
written for Go flanneld work unchanged; values are parsed with Go's rules (``strconv.ParseBool``, base-prefix
``ParseInt``, klog's own setters), and the error texts are Go's.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

from flannel.secret import Secret


class Kind(enum.Enum):
    """How a flag's value is written and parsed."""

    STRING = "string"
    BOOL = "bool"
    INT = "int"
    LIST = "list"
    LEVEL = "level"
    VMODULE = "vmodule"
    BACKTRACE = "backtrace"
    SECRET = "secret"
    """A string credential: held as ``flannel.secret.Secret`` and never echoed in a message."""


@dataclass(frozen=True)
class FlagSpec:
    """One flag: its Go name, value kind, default and help text."""

    name: str
    """The flag name as typed after ``-``/``--`` (upstream spelling)."""
    kind: Kind
    """How the value is parsed; BOOL flags take no separate value word."""
    default: Any
    """The default, already parsed (``()`` for repeatable flags)."""
    help: str
    """Upstream's usage text."""

    @property
    def field(self) -> str:
        """The ``Options`` attribute holding the value."""
        return self.name.replace("-", "_")

    @property
    def env_var(self) -> str:
        """The ``FLANNELD_*`` variable that supplies the value when the flag is not on the command line."""
        return "FLANNELD_" + self.name.replace("-", "_").upper()


_S, _B, _I, _L = Kind.STRING, Kind.BOOL, Kind.INT, Kind.LIST

FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec("etcd-endpoints", _S, "http://127.0.0.1:4001,http://127.0.0.1:2379",
             "a comma-delimited list of etcd endpoints"),
    FlagSpec("etcd-prefix", _S, "/coreos.com/network", "etcd prefix"),
    FlagSpec("etcd-keyfile", _S, "", "SSL key file used to secure etcd communication"),
    FlagSpec("etcd-certfile", _S, "", "SSL certification file used to secure etcd communication"),
    FlagSpec("etcd-cafile", _S, "", "SSL Certificate Authority file used to secure etcd communication"),
    FlagSpec("etcd-username", _S, "", "username for BasicAuth to etcd"),
    FlagSpec("etcd-password", Kind.SECRET, Secret(""), "password for BasicAuth to etcd"),
    FlagSpec("iface", _L, (),
             "interface to use (IP or name) for inter-host communication. Can be specified multiple times to "
             "check each option in order. Returns the first match found."),
    FlagSpec("iface-regex", _L, (),
             "regex expression to match the first interface to use (IP or name) for inter-host "
             "communication. Can be specified multiple times to check each regex in order. Returns the "
             "first match found. Regexes are checked after specific interfaces specified by the iface "
             "option have already been checked."),
    FlagSpec("iface-can-reach", _S, "",
             "detect interface to use (IP or name) for inter-host communication based on which will be used "
             "for provided IP. This is exactly the interface to use of command 'ip route get <ip-address>'"),
    FlagSpec("subnet-file", _S, "/run/flannel/subnet.env",
             "filename where env variables (subnet, MTU, ... ) will be written to"),
    FlagSpec("public-ip", _S, "", "IP accessible by other nodes for inter-host communication"),
    FlagSpec("public-ipv6", _S, "", "IPv6 accessible by other nodes for inter-host communication"),
    FlagSpec("subnet-lease-renew-margin", _I, 60,
             "subnet lease renewal margin, in minutes, ranging from 1 to 1439"),
    FlagSpec("ip-masq", _B, False,
             "setup IP masquerade rule for traffic destined outside of overlay network"),
    FlagSpec("ip-masq-fully-random-disable", _B, False, "disable fully-random mode for MASQUERADE"),
    FlagSpec("kube-subnet-mgr", _B, False,
             "contact the Kubernetes API for subnet assignment instead of etcd."),
    FlagSpec("kube-api-url", _S, "",
             "Kubernetes API server URL. Does not need to be specified if flannel is running in a pod."),
    FlagSpec("kube-annotation-prefix", _S, "flannel.alpha.coreos.com",
             'Kubernetes annotation prefix. Can contain single slash "/", otherwise it will be appended at '
             "the end."),
    FlagSpec("kubeconfig-file", _S, "",
             "kubeconfig file location. Does not need to be specified if flannel is running in a pod."),
    FlagSpec("version", _B, False, "print version and exit"),
    FlagSpec("healthz-ip", _S, "0.0.0.0", "the IP address for healthz server to listen"),
    FlagSpec("healthz-port", _I, 0, "the port for healthz server to listen(0 to disable)"),
    FlagSpec("iptables-resync", _I, 5, "resync period for iptables rules, in seconds"),
    FlagSpec("iptables-forward-rules", _B, True, "add default accept rules to FORWARD chain in iptables"),
    FlagSpec("ip-blackhole-route", _B, False, "add blackroute route ont the node for the local podCIDR"),
    FlagSpec("net-config-path", _S, "/etc/kube-flannel/net-conf.json",
             "path to the network configuration file"),
    FlagSpec("set-node-network-unavailable", _B, True, "set NodeNetworkUnavailable after ready"),
    # Not in upstream: how often the backend compares the kernel with the leases and repairs drift.
    FlagSpec("reconcile-interval", _I, 10,
             "seconds between comparisons of kernel routes, neighbours and FDB entries with the leases "
             "(drift is repaired and logged; not in upstream flannel)"),
    # Not in upstream: the live network map and the overlay probe (docs/map.md).
    FlagSpec("map-port", _I, 0,
             "port for the live network map page and /map.json (0 to disable; not in upstream flannel)"),
    FlagSpec("map-address", _S, "127.0.0.1",
             "the IP address the network map server listens on (not in upstream flannel)"),
    FlagSpec("probe-interval", _I, 0,
             "seconds between probes of every peer over the overlay (0: only with --map-port, every 5 s; "
             "not in upstream flannel)"),
    FlagSpec("v", Kind.LEVEL, 0, "number for the log level verbosity"),
    FlagSpec("vmodule", Kind.VMODULE, "",
             "comma-separated list of pattern=N settings for file-filtered logging"),
    FlagSpec("log_backtrace_at", Kind.BACKTRACE, "", "when logging hits line file:N, emit a stack trace"),
)  # fmt: skip

BY_NAME: dict[str, FlagSpec] = {spec.name: spec for spec in FLAGS}

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_DECIMAL_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)


def go_quote(text: str) -> str:
    """Close enough to Go's ``%q`` for error messages."""
    return json.dumps(text, ensure_ascii=False)


def parse_go_bool(text: str) -> bool:
    """``strconv.ParseBool``; ``ValueError("parse error")`` (the flag package's text) otherwise."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("parse error")


def _underscore_ok(s: str) -> bool:
    # Go's rule for base-0 literals: an underscore must sit between digits (a base prefix counts as one).
    saw = "^"
    i = 0
    if s[:1] in ("+", "-"):
        s = s[1:]
    hexa = False
    if len(s) >= 2 and s[0] == "0" and s[1].lower() in "box":
        i, saw, hexa = 2, "0", s[1].lower() == "x"
    for ch in s[i:]:
        if "0" <= ch <= "9" or (hexa and "a" <= ch.lower() <= "f"):
            saw = "0"
        elif ch == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
    return saw != "_"


def parse_go_int(text: str, bits: int = 64) -> int:
    """``strconv.ParseInt(text, 0, bits)`` as the flag package reports it.

    Accepts ``0x``/``0o``/``0b`` prefixes, a leading ``0`` for octal and ``_`` separators; raises
    ``ValueError("parse error")`` or ``ValueError("value out of range")``.
    """
    s = text
    negative = s[:1] == "-"
    if s[:1] in ("+", "-"):
        s = s[1:]
    if not s:
        raise ValueError("parse error")
    base, body = 10, s
    if s[0] == "0":
        if len(s) >= 3 and s[1].lower() in "box":
            base, body = {"b": 2, "o": 8, "x": 16}[s[1].lower()], s[2:]
        else:
            base, body = 8, s[1:]
    if "_" in body and not _underscore_ok(s):
        raise ValueError("parse error")
    value = 0
    for ch in body:
        if ch == "_":
            continue
        digit = _DIGITS.find(ch.lower()) if ch.isascii() else -1
        if not 0 <= digit < base:
            raise ValueError("parse error")
        value = value * base + digit
    limit = 1 << (bits - 1)
    if value > limit or (value == limit and not negative):
        raise ValueError("value out of range")
    return -value if negative else value


def parse_klog_level(text: str) -> int:
    """klog's ``Level.Set``: ``strconv.ParseInt(text, 10, 32)``, with the full ``NumError`` text."""
    if not _DECIMAL_RE.fullmatch(text):
        raise ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: invalid syntax")
    value = int(text)
    if not -(1 << 31) <= value < 1 << 31:
        raise ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: value out of range")
    return value


def check_vmodule(text: str) -> str:
    """klog's ``-vmodule`` syntax: comma-separated ``pattern=N`` with N ≥ 0; empty items are ignored."""
    for item in text.split(","):
        if not item:
            continue
        parts = item.split("=")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ValueError("syntax error: expect comma-separated list of filename=N")
        try:
            level = parse_klog_level(parts[1])
        except ValueError:
            raise ValueError("syntax error: expect comma-separated list of filename=N") from None
        if level < 0:
            raise ValueError("negative value for vmodule level")
    return text


def check_backtrace(text: str) -> str:
    """klog's ``-log_backtrace_at`` syntax: empty, or ``file.go:N`` with N > 0."""
    if not text:
        return text
    fields = text.split(":")
    if len(fields) != 2 or "." not in fields[0] or not _DECIMAL_RE.fullmatch(fields[1]):
        raise ValueError("syntax error: expect file.go:234")
    if int(fields[1]) <= 0:
        raise ValueError("negative or zero value for level")
    return text


def parse_value(spec: FlagSpec, text: str) -> Any:
    """Parse one value for ``spec`` (a single element for LIST flags); ``ValueError`` with Go's text."""
    if spec.kind is Kind.BOOL:
        return parse_go_bool(text)
    if spec.kind is Kind.INT:
        return parse_go_int(text)
    if spec.kind is Kind.LEVEL:
        return parse_klog_level(text)
    if spec.kind is Kind.VMODULE:
        return check_vmodule(text)
    if spec.kind is Kind.BACKTRACE:
        return check_backtrace(text)
    if spec.kind is Kind.SECRET:
        return Secret(text)
    return text
