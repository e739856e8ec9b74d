"""flanneld's command line and ``FLANNELD_*`` environment (spec §1.1–§1.2), parsed as Go's ``flag`` does.

Existing unit files, manifests and Helm values pass these flags in every Go spelling (``-x``, ``--x=v``,
``--x v``), so the parser follows Go's ``flag`` package rule for rule. Two upstream quirks are fixed on
purpose: ``-h``/``--help`` prints to stdout and exits 0, and a parse error exits 2 instead of 0; leftover
positional arguments are an error too (Go would silently stop parsing at them, so ``--ip-masq false`` would
turn masquerading *on* and drop every later flag).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from flannel import UPSTREAM_VERSION
from flannel.daemon.flag_table import BY_NAME, FLAGS, FlagSpec, Kind, go_quote, parse_value
from flannel.errors import ConfigError
from flannel.secret import REDACTED, Secret

log = logging.getLogger(__name__)

__all__ = [
    "HelpRequested",
    "Options",
    "UsageError",
    "VersionRequested",
    "parse_args",
    "parse_or_exit",
    "secrets_on_command_line",
    "usage_text",
    "validate",
]


class UsageError(Exception):
    """The command line could not be parsed; ``str(err)`` is Go's message. The process exits 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HelpRequested(Exception):
    """``-h``/``--help`` was given: print the usage to stdout and exit 0."""


class VersionRequested(Exception):
    """``--version`` was given: print the version to stderr and exit 0 (checked before the environment)."""


@dataclass(frozen=True)
class Options:
    """Every flanneld flag after the command line and the environment were applied."""

    etcd_endpoints: str
    """``--etcd-endpoints``: comma-separated etcd v3 endpoints."""
    etcd_prefix: str
    """``--etcd-prefix``: root of the etcd key space."""
    etcd_keyfile: str
    """``--etcd-keyfile``: TLS client key."""
    etcd_certfile: str
    """``--etcd-certfile``: TLS client certificate."""
    etcd_cafile: str
    """``--etcd-cafile``: TLS CA bundle (used only with both keyfile and certfile)."""
    etcd_username: str
    """``--etcd-username``: etcd basic-auth user."""
    etcd_password: Secret[str]
    """``--etcd-password``: etcd basic-auth password; a ``Secret``, so no ``repr``, log line or message shows it.
    Prefer ``FLANNELD_ETCD_PASSWORD``: a command line is readable by every user (docs/security.md)."""
    iface: tuple[str, ...]
    """``--iface`` (repeatable): interface names or IPs, tried in order."""
    iface_regex: tuple[str, ...]
    """``--iface-regex`` (repeatable): regexes over interface IPs then names, tried after ``iface``."""
    iface_can_reach: str
    """``--iface-can-reach``: pick the interface the kernel would use to reach this IP."""
    subnet_file: str
    """``--subnet-file``: where subnet.env is written."""
    public_ip: str
    """``--public-ip``: IPv4 address other nodes use to reach this node."""
    public_ipv6: str
    """``--public-ipv6``: IPv6 address other nodes use to reach this node."""
    subnet_lease_renew_margin: int
    """``--subnet-lease-renew-margin``: minutes before expiry to renew (1..1439, see ``validate``)."""
    ip_masq: bool
    """``--ip-masq``: install the masquerade rules."""
    ip_masq_fully_random_disable: bool
    """``--ip-masq-fully-random-disable``: no ``--random-fully`` on MASQUERADE."""
    kube_subnet_mgr: bool
    """``--kube-subnet-mgr``: use the Kubernetes API instead of etcd."""
    kube_api_url: str
    """``--kube-api-url``: API server URL (optional in-cluster)."""
    kube_annotation_prefix: str
    """``--kube-annotation-prefix``: node annotation prefix."""
    kubeconfig_file: str
    """``--kubeconfig-file``: kubeconfig path (optional in-cluster)."""
    version: bool
    """``--version``: print the version and exit (handled by ``parse_args``)."""
    healthz_ip: str
    """``--healthz-ip``: listen address of the health server."""
    healthz_port: int
    """``--healthz-port``: health server port; 0 disables it."""
    iptables_resync: int
    """``--iptables-resync``: seconds between traffic-rule resyncs (and blackhole-route checks)."""
    iptables_forward_rules: bool
    """``--iptables-forward-rules``: install the FORWARD accept rules."""
    ip_blackhole_route: bool
    """``--ip-blackhole-route``: keep a blackhole route for the local lease subnet(s)."""
    net_config_path: str
    """``--net-config-path``: network config file (kube mode)."""
    set_node_network_unavailable: bool
    """``--set-node-network-unavailable``: clear the node's NetworkUnavailable condition when ready."""
    reconcile_interval: int
    """``--reconcile-interval``: seconds between kernel-vs-lease reconciles (not in upstream)."""
    map_port: int
    """``--map-port``: port of the network map server (flannel.netmap); 0 disables it (not in upstream)."""
    map_address: str
    """``--map-address``: listen address of the network map server; loopback unless told (not in upstream)."""
    probe_interval: int
    """``--probe-interval``: seconds between overlay probes of every peer; 0 probes only for the map (not in
    upstream)."""
    v: int
    """``-v``: klog verbosity level."""
    vmodule: str
    """``-vmodule``: klog per-file verbosity, ``pattern=N,...``."""
    log_backtrace_at: str
    """``-log_backtrace_at``: klog ``file:line`` at which to log a stack trace."""
    explicit: frozenset[str] = frozenset()
    """Names of the flags given on the command line (these are never overridden by the environment)."""


def _set(values: dict[str, Any], spec: FlagSpec, text: str) -> None:
    value = parse_value(spec, text)
    if spec.kind is Kind.LIST:
        values[spec.field] = (*values[spec.field], value)
    else:
        values[spec.field] = value


def _parse_command_line(argv: list[str]) -> tuple[dict[str, Any], set[str]]:
    values: dict[str, Any] = {spec.field: spec.default for spec in FLAGS}
    explicit: set[str] = set()
    args = list(argv)
    bare_bool = ""  # the previous flag, when it was a bool given without "=value"
    while args:
        s = args[0]
        if len(s) < 2 or s[0] != "-":
            hint = f" (a bool flag takes its value as -{bare_bool}={s})" if bare_bool else ""
            raise UsageError(f"unexpected argument {go_quote(s)}: flanneld takes no positional arguments{hint}")
        minuses = 2 if s[1] == "-" else 1
        if s == "--":  # terminates the flags; nothing may follow
            if len(args) > 1:
                raise UsageError(
                    f"unexpected argument {go_quote(args[1])}: flanneld takes no positional arguments"
                )
            break
        name = s[minuses:]
        if not name or name[0] in "-=":
            raise UsageError(f"bad flag syntax: {s}")
        args.pop(0)
        name, eq, value = name.partition("=")
        has_value = bool(eq)
        spec = BY_NAME.get(name)
        if spec is None:
            if name in ("help", "h"):
                raise HelpRequested()
            raise UsageError(f"flag provided but not defined: -{name}")
        bare_bool = name if spec.kind is Kind.BOOL and not has_value else ""
        if spec.kind is Kind.BOOL:
            try:
                _set(values, spec, value if has_value else "true")
            except ValueError as exc:
                raise UsageError(f"invalid boolean value {go_quote(value)} for -{name}: {exc}") from None
        else:
            if not has_value:
                if not args:
                    raise UsageError(f"flag needs an argument: -{name}")
                value = args.pop(0)
            try:
                _set(values, spec, value)
            except ValueError as exc:
                raise UsageError(f"invalid value {go_quote(value)} for flag -{name}: {exc}") from None
        explicit.add(name)
    return values, explicit


def _apply_env(values: dict[str, Any], explicit: set[str], environ: Mapping[str, str]) -> None:
    # Like coreos/pkg/flagutil.SetFlagsFromEnv: every flag not on the command line, in name order; an empty
    # variable is ignored, a repeatable flag takes the whole value as one element, a bad value is logged
    # and the default kept. ``version`` is skipped: upstream checks it before the environment is read.
    for spec in sorted(FLAGS, key=lambda s: s.name):
        if spec.name in explicit or spec.name == "version":
            continue
        text = environ.get(spec.env_var, "")
        if not text:
            continue
        try:
            _set(values, spec, text)
        except ValueError as exc:
            log.warning(
                "Failed to set flag %s from env: invalid value %s for %s: %s",
                spec.env_var,
                REDACTED if spec.kind is Kind.SECRET else go_quote(text),
                spec.env_var,
                exc,
            )


def parse_args(argv: list[str], environ: Mapping[str, str]) -> Options:
    """Parse ``argv`` (without the program name), then fill unset flags from ``FLANNELD_*`` variables.

    Raises ``HelpRequested``, ``VersionRequested`` (checked before the environment, so
    ``FLANNELD_VERSION`` has no effect) or ``UsageError``. Range checks are left to ``validate``.
    """
    values, explicit = _parse_command_line(argv)
    if values["version"]:
        raise VersionRequested()
    _apply_env(values, explicit, environ)
    return Options(**values, explicit=frozenset(explicit))


def secrets_on_command_line(options: Options) -> list[FlagSpec]:
    """The secret flags given on the command line rather than in the environment.

    Every local user can read a command line (``/proc/<pid>/cmdline``, ``ps``), and a Python process cannot
    blank its own argv portably (``sys.argv`` is a copy; the kernel's buffer is out of reach), so the caller
    warns and recommends the ``FLANNELD_*`` variable, whose ``/proc/<pid>/environ`` only the owner reads.
    """
    return [spec for spec in FLAGS if spec.kind is Kind.SECRET and spec.name in options.explicit]


def validate(options: Options) -> None:
    """Upstream's post-parse checks, and ours; ``ConfigError`` (exit 1) naming the flag on failure.

    Beyond upstream: ``--healthz-port`` must be a port number, and in etcd mode the endpoints must parse and
    the named TLS files exist (``etcd_options.check_etcd_flags``), since retrying could never fix them.
    Settings that have no effect (TLS files with ``http://`` endpoints) are logged as warnings.
    """
    if not 1 <= options.subnet_lease_renew_margin <= 24 * 60 - 1:
        raise ConfigError(
            "Invalid subnet-lease-renew-margin option, out of acceptable range", "subnet-lease-renew-margin"
        )
    if options.reconcile_interval < 1:
        raise ConfigError(
            f"--reconcile-interval must be at least 1 second, got {options.reconcile_interval}", "reconcile-interval"
        )
    if not 0 <= options.healthz_port <= 65535:
        raise ConfigError(
            f"--healthz-port must be between 0 and 65535 (0 disables the server), got {options.healthz_port}",
            "healthz-port",
        )
    if not 0 <= options.map_port <= 65535:
        raise ConfigError(f"--map-port must be between 0 and 65535 (0 disables the map), got {options.map_port}",
                          "map-port")
    if not 0 <= options.probe_interval <= 86400:
        raise ConfigError(f"--probe-interval must be between 0 and 86400 seconds, got {options.probe_interval}",
                          "probe-interval")
    if not options.kube_subnet_mgr:
        from flannel.subnet.etcd_options import check_etcd_flags  # no gRPC behind it

        for warning in check_etcd_flags(options.etcd_endpoints, options.etcd_keyfile, options.etcd_certfile,
                                        options.etcd_cafile):
            log.warning("%s", warning)


def _type_name(spec: FlagSpec) -> str:
    # What Go's flag.UnquoteUsage shows after the flag name.
    return {Kind.STRING: "string", Kind.SECRET: "string", Kind.INT: "int", Kind.BOOL: ""}.get(spec.kind, "value")


def _default_text(spec: FlagSpec) -> str:
    # Go prints the default only when it differs from the type's zero value; strings are quoted.
    default = spec.default
    if spec.kind in (Kind.LIST, Kind.SECRET) or default in ("", 0, False):
        return ""
    if spec.kind is Kind.STRING:
        return f" (default {go_quote(default)})"
    if spec.kind is Kind.BOOL:
        return " (default true)"
    return f" (default {default})"


def usage_text(prog: str = "flanneld") -> str:
    """The help text, laid out as Go's ``flag.PrintDefaults`` does (flags sorted by name)."""
    lines = [f"Usage: {prog} [OPTION]...\n"]
    for spec in sorted(FLAGS, key=lambda s: s.name):
        head = f"  -{spec.name}"
        if _type_name(spec):
            head += f" {_type_name(spec)}"
        head += "\t" if len(head) <= 4 else "\n    \t"
        lines.append(f"{head}{spec.help}{_default_text(spec)}\n")
    return "".join(lines)


def parse_or_exit(
    argv: list[str],
    environ: Mapping[str, str],
    *,
    prog: str = "flanneld",
    version_text: str = UPSTREAM_VERSION,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> Options:
    """``parse_args`` for ``main``: prints help/version/usage errors and raises ``SystemExit`` (0, 0, 2).

    ``validate`` is not called here; the daemon maps its ``ConfigError`` to exit 1.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        return parse_args(argv, environ)
    except HelpRequested:
        out.write(usage_text(prog))
        raise SystemExit(0) from None
    except VersionRequested:
        err.write(version_text + "\n")
        raise SystemExit(0) from None
    except UsageError as exc:
        err.write(f"{exc.message}\n{usage_text(prog)}")
        raise SystemExit(2) from None
