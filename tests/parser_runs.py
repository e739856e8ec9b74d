"""Every parser of outside input, run the way flanneld and the CNI plugin run it, with its domain errors.

The corpus test (``tests/unit/test_corpus.py``) and the property tests (``tests/unit/test_parsers_property.py``)
share these runs and one property: a parser gives a valid result or its domain error (``ConfigError``,
``LeaseDecodeError``, ``CNIError``...) whose message or ``field`` names the field at fault; any other exception
is a bug. Each run returns ``(step, result-or-error)`` pairs, one per parser step it exercised.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Any

from flannel.backend.base import BackendContext, ExternalInterface
from flannel.backend.registry import create_backend
from flannel.cni.errors import CNIError
from flannel.cni.netconf import parse_netconf, read_args
from flannel.cni.subnet_file import parse_subnet_env
from flannel.config import NetworkConfig, check_network_config, parse_network_config
from flannel.daemon.flags import HelpRequested, UsageError, VersionRequested, parse_args, validate
from flannel.errors import ConfigError, FlannelError, LeaseDecodeError
from flannel.lease import Lease, LeaseAttrs, parse_subnet_key
from flannel.subnet.kube_annotations import annotation_names, stored_vtep_mac
from flannel.subnet.kube_nodes import OwnNodeError, node_to_lease, own_pod_cidrs
from flannel.subnetenv import read_cidr_list, read_single_cidr, read_subnet_env_values
from tests.backend_harness import FakeSubnetManager

Outcome = tuple[str, Any]
"""``(step, value)``: the parser's result (``None`` allowed where the parser returns it) or its domain error."""

EXT = ExternalInterface(name="eth0", index=2, mtu=1500, iface_addr=IPv4Address("198.18.0.1"), iface_v6_addr=None,
                        ext_addr=IPv4Address("198.18.0.1"), ext_v6_addr=None)
CLUSTER = NetworkConfig(network=IPv4Network("10.244.0.0/16"), ipv6_network=IPv6Network("fd00::/48"),
                        enable_ipv6=True, backend_type="vxlan")
"""The network a kube node is judged against: dual stack, so both families' annotations are read."""
NAMES = annotation_names()


def step(name: str, fn: Callable[[], Any], errors: tuple[type[BaseException], ...]) -> Outcome:
    """Run one parser step; its domain ``errors`` become the value, any other exception propagates."""
    try:
        return name, fn()
    except errors as exc:
        return name, exc


def network_config(data: bytes) -> list[Outcome]:
    """As flanneld reads ``<prefix>/config`` or net-conf.json: parse, build the backend (which reads its own
    ``Backend`` keys), then upstream's check (etcd mode)."""
    errors = (ConfigError,)
    name, parsed = step("parse", lambda: parse_network_config(data), errors)
    if not isinstance(parsed, NetworkConfig):
        return [(name, parsed)]
    sm = FakeSubnetManager(Lease(subnet=IPv4Network("10.244.7.0/24")))
    ctx = BackendContext(subnet_manager=sm, ext_iface=EXT)  # type: ignore[arg-type]
    return [(name, parsed), step("backend", lambda: create_backend(ctx, parsed), errors),
            step("check", lambda: check_network_config(parsed), errors)]


def lease_value(data: bytes) -> list[Outcome]:
    """An etcd lease value, and its backend data as a backend decodes it."""
    name, attrs = step("decode", lambda: LeaseAttrs.from_json(data), (LeaseDecodeError,))
    if not isinstance(attrs, LeaseAttrs):
        return [(name, attrs)]
    return [(name, attrs), step("data", lambda: attrs.backend_json(False), (LeaseDecodeError,)),
            step("v6data", lambda: attrs.backend_json(True), (LeaseDecodeError,))]


def subnet_key(text: str) -> list[Outcome]:
    """An etcd key: a subnet pair, or ``None`` for "not a subnet" (it never raises)."""
    return [step("key", lambda: parse_subnet_key(text), ())]


def kube_node(node: Any) -> list[Outcome]:
    """A Node object as watched (a remote lease) and as the own node (its pod CIDRs, its stored VtepMACs)."""
    return [step("lease", lambda: node_to_lease(node, NAMES, CLUSTER), (LeaseDecodeError,)),
            step("own", lambda: own_pod_cidrs(node, CLUSTER), (OwnNodeError,)),
            step("mac", lambda: stored_vtep_mac(node, NAMES), ()),
            step("mac6", lambda: stored_vtep_mac(node, NAMES, v6=True), ())]


def kube_prefix(text: str) -> list[Outcome]:
    """``--kube-annotation-prefix``."""
    return [step("prefix", lambda: annotation_names(text), (ConfigError,))]


def cni_stdin(data: bytes) -> list[Outcome]:
    """The CNI network config on stdin."""
    return [step("netconf", lambda: parse_netconf(data), (CNIError,))]


def cni_env(environ: dict[str, str]) -> list[Outcome]:
    """The ``CNI_*`` environment of one call."""
    return [step("args", lambda: read_args(environ), (CNIError,))]


def subnet_env(data: bytes) -> list[Outcome]:
    """subnet.env as the CNI plugin reads it (strict: a reason string is its error) and as flanneld reads its
    previous file back (tolerant: it never fails, it skips what it cannot use)."""
    text = data.decode("utf-8", "replace")
    plugin = step("plugin", lambda: parse_subnet_env(text, "/run/flannel/subnet.env"), (CNIError,))
    if isinstance(plugin[1], str):
        plugin = ("plugin", CNIError(6, plugin[1]))

    def daemon() -> list[Any]:
        values = read_subnet_env_values_from(data)
        return [read_single_cidr(values, key, 4 if "IPV6" not in key else 6) for key in
                ("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET", "FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK")] + [
                read_cidr_list(values, "FLANNEL_SUBNET")]

    return [plugin, step("daemon", daemon, ())]


def read_subnet_env_values_from(data: bytes) -> dict[str, str]:
    """``read_subnet_env_values`` reads a path; give it the bytes through a pipe-free temporary file."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".env") as f:
        f.write(data)
        f.flush()
        return read_subnet_env_values(f.name)


def flags(argv: list[str], environ: dict[str, str]) -> list[Outcome]:
    """flanneld's command line and ``FLANNELD_*`` environment: parse, then validate."""
    errors = (UsageError, ConfigError, HelpRequested, VersionRequested)
    name, opts = step("parse", lambda: parse_args(argv, environ), errors)
    if isinstance(opts, BaseException):
        return [(name, opts)]
    return [(name, opts), step("validate", lambda: validate(opts), errors)]


def names_field(exc: BaseException, field: str) -> bool:
    """Whether the domain error ``exc`` names ``field``: ``ConfigError.field`` (``-`` for the whole document),
    or the field's name in the message for the errors that carry none."""
    if isinstance(exc, ConfigError):
        return exc.field == ("" if field == "-" else field)
    return field in str(exc)


def error_names_some_field(exc: BaseException, fields: tuple[str, ...]) -> bool:
    """For property tests: the error names one of ``fields`` (a ``ConfigError`` may name the whole document)."""
    if isinstance(exc, ConfigError):
        return exc.field == "" or exc.field in fields or exc.field.startswith("Backend.")
    if isinstance(exc, HelpRequested | VersionRequested):
        return True
    return any(f in str(exc) for f in fields)


def is_domain_error(value: Any) -> bool:
    """A value a step returned that is one of the domain errors (as opposed to a result)."""
    return isinstance(value, FlannelError | CNIError | UsageError | HelpRequested | VersionRequested)


def env_lines(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (the corpus's environment files) as a dict; values are taken verbatim."""
    out = {}
    for line in text.split("\n"):
        if line:
            key, _, value = line.partition("=")
            out[key] = value
    return out

