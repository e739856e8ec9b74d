"""The ``flannelctl`` console script: its command line, and one function per subcommand.

flannelctl runs where flanneld runs, with the same unit file's environment, so it takes flanneld's own flags
and ``FLANNELD_*`` variables through flanneld's own parser (``daemon/flags.py``): ``--etcd-endpoints``,
``--etcd-prefix``, TLS, ``FLANNELD_ETCD_PASSWORD``, ``--subnet-file``, ``--healthz-ip``/``--healthz-port`` and
the rest mean exactly what they mean to flanneld. Only a handful of flags are flannelctl's (``-o``,
``--timeout``, ``--force``); they and the positional words are taken out first, and the remainder goes to
flanneld's parser, in any order and in every Go spelling (``-x v``, ``--x=v``).

Exit codes: 0 healthy, 1 problems found (or a request refused, or the store unreachable), 2 usage error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from flannel import UPSTREAM_VERSION
from flannel.ctl.output import ERROR, EXIT_PROBLEMS, EXIT_USAGE, Finding, emit, render_findings, use_colour
from flannel.daemon import flags
from flannel.daemon.flag_table import BY_NAME, Kind, parse_go_bool
from flannel.errors import ConfigError
from flannel.secret import redact_urls

if TYPE_CHECKING:
    from flannel.subnet.kvstore import EtcdClient

DEFAULT_TIMEOUT = 5.0

USAGE = """\
Usage: flannelctl [FLAGS] COMMAND [ARGS]

Commands:
  status                           this node: lease, flanneld readiness, kernel drift (vxlan, host-gw)
  leases                           every lease in the cluster, with conflicts
  reserve SUBNET --public-ip IP    reserve a subnet for the node with that public IP (etcd)
  unreserve SUBNET                 delete a reservation
  config get                       print the network config stored in etcd, and check it
  config validate FILE             check a config file with flanneld's own rules ('-': stdin)
  config set FILE                  validate, then store a config file in etcd

flannelctl flags:
  -o, --output table|json          output format (default table; json keys: docs/flannelctl.md)
  --timeout SECONDS                how long to wait for etcd and flanneld (default 5)
  --force                          reserve/unreserve: overwrite or delete another node's record

Every flanneld flag and FLANNELD_* variable is accepted with flanneld's meaning (--etcd-endpoints,
--etcd-prefix, --etcd-cafile/certfile/keyfile, --etcd-username, FLANNELD_ETCD_PASSWORD, --subnet-file,
--healthz-ip, --healthz-port, --kube-subnet-mgr, ...); see flanneld -h.

Exit status: 0 healthy, 1 problems found, 2 usage error.
"""


class Usage(Exception):
    """A usage error: printed with a pointer to ``--help``; exit 2."""


class Args:
    """The parsed command line: flannelctl's own settings, positional words and flanneld's options."""

    def __init__(self) -> None:
        self.output = "table"
        self.timeout = DEFAULT_TIMEOUT
        self.force = False
        self.words: list[str] = []
        self.opts: flags.Options | None = None


def parse(argv: list[str], environ: Mapping[str, str]) -> Args:
    """Split flannelctl's flags and words from flanneld's flags, and parse the latter with flanneld's parser."""
    args = Args()
    passed: list[str] = []
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            args.words += rest
            break
        if len(arg) < 2 or not arg.startswith("-"):
            args.words.append(arg)
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name in ("h", "help"):
            raise flags.HelpRequested()
        if name in ("o", "output", "timeout"):
            if not eq:
                if not rest:
                    raise Usage(f"flag needs an argument: -{name}")
                value = rest.pop(0)
            if name == "timeout":
                try:
                    args.timeout = float(value)
                except ValueError:
                    raise Usage(f"invalid value {value!r} for flag -timeout") from None
                if not 0 < args.timeout <= 3600:
                    raise Usage("-timeout must be between 0 and 3600 seconds")
            elif value not in ("table", "json"):
                raise Usage(f"invalid value {value!r} for flag -{name}: table or json")
            else:
                args.output = value
        elif name == "force":
            try:
                args.force = parse_go_bool(value) if eq else True
            except ValueError:
                raise Usage(f"invalid boolean value {value!r} for -force") from None
        elif name in BY_NAME:
            passed.append(arg)
            if not eq and BY_NAME[name].kind is not Kind.BOOL:
                if not rest:
                    raise Usage(f"flag needs an argument: -{name}")
                passed.append(rest.pop(0))
        else:
            raise Usage(f"flag provided but not defined: -{name}")
    try:
        args.opts = flags.parse_args(passed, environ)
    except flags.UsageError as exc:
        raise Usage(exc.message) from None
    return args


def _need(words: list[str], n: int, form: str) -> None:
    if len(words) != n:
        raise Usage(f"usage: flannelctl {form}")


async def _dispatch(args: Args, out: TextIO) -> int:
    """Run the command named by the words; its exit code."""
    from flannel.ctl import leases, netconfig, reserve, status
    from flannel.ctl.datastore import config_key, connected, read_config, read_nodes, read_records

    opts, words, timeout = args.opts, args.words, args.timeout
    assert opts is not None
    as_json, colour = args.output == "json", use_colour(out) and args.output != "json"
    command = words[0] if words else ""
    if command == "config" and words[1:2] == ["validate"]:
        _need(words, 3, "config validate FILE")
        text, source = _read_input(words[2])
        v = netconfig.validate(text, source, etcd_mode=not opts.kube_subnet_mgr)
        doc, human = netconfig.report(v, source)
        return emit(out, doc, _invalid(v.error, source), human, as_json)
    if opts.kube_subnet_mgr and command == "leases":
        _need(words, 1, "leases")
        config, config_error, records = await read_nodes(opts, timeout)
        doc, findings, human = leases.build(records, config, config_error, opts.net_config_path, colour)
        return emit(out, doc, findings, human, as_json)
    if opts.kube_subnet_mgr:
        raise Usage(f"flannelctl {command}: only etcd mode is supported in this release (--kube-subnet-mgr is set)")
    if command == "status":
        _need(words, 1, "status")
        doc, findings = await status.collect(opts, timeout)
        return emit(out, doc, findings, status.render(doc, findings, colour), as_json)
    if command not in ("leases", "reserve", "unreserve", "config"):
        raise Usage(f"unknown command {command!r}" if command else "no command given")
    async with connected(opts, timeout) as store:
        kv, config, config_error = await read_config(store, opts, timeout)
        key = config_key(opts)
        if command == "leases":
            _need(words, 1, "leases")
            records = await read_records(store, opts, timeout)
            doc, findings, human = leases.build(records, config, config_error, key, colour)
            return emit(out, doc, findings, human, as_json)
        if command == "config":
            return await _config(store, args, kv.value if kv else None, key, out)
        if command == "reserve" and "public-ip" not in opts.explicit:
            raise Usage("usage: flannelctl reserve SUBNET --public-ip IP")
        _need(words, 2, f"{command} SUBNET")
        records = await read_records(store, opts, timeout, ttls=False)
        try:
            if command == "reserve":
                if config is None:
                    raise reserve.Refused(f"cannot check the subnet against the network config: {config_error}")
                doc, findings = await reserve.reserve(store, opts, timeout, config, records, words[1], opts.public_ip,
                                                      args.force)
            else:
                doc, findings = await reserve.unreserve(store, opts, timeout, records, words[1], args.force)
        except reserve.Refused as exc:
            return emit(out, {"key": words[1], "action": "refused"}, [Finding(ERROR, "refused", words[1], str(exc))],
                        f"refused: {exc}", as_json)
        return emit(out, doc, findings, f"{doc['action']} {doc['key']}\n{render_findings(findings, colour)}",
                    as_json)


async def _config(store: EtcdClient, args: Args, stored: bytes | None, key: str, out: TextIO) -> int:
    from flannel.ctl import netconfig
    from flannel.ctl.datastore import bounded

    words, as_json = args.words, args.output == "json"
    if words[1:2] == ["get"]:
        _need(words, 2, "config get")
        if stored is None:
            from flannel.subnet.etcd_manager import CONFIG_NOT_FOUND

            return emit(out, {"key": key, "config": None}, [Finding(ERROR, "config", key, CONFIG_NOT_FOUND)],
                        f"{key}: {CONFIG_NOT_FOUND}", as_json)
        v = netconfig.validate(stored, key)
        doc, human = netconfig.report(v, key)
        text = stored.decode("utf-8", "replace")
        return emit(out, {**doc, "key": key, "config": text}, _invalid(v.error, key), f"{text.rstrip()}\n\n{human}",
                    as_json)
    if words[1:2] == ["set"]:
        _need(words, 3, "config set FILE")
        data, source = _read_input(words[2])
        v = netconfig.validate(data, source)
        doc, human = netconfig.report(v, source)
        if v.error:
            return emit(out, {**doc, "key": key, "written": False}, _invalid(v.error, source),
                        f"{human}\nnothing written to {key}", as_json)
        await bounded(store.put(key, data.decode() if isinstance(data, bytes) else data, None), args.timeout,
                      f"write {key}")
        return emit(out, {**doc, "key": key, "written": True}, [], f"{human}\nwritten to {key}", as_json)
    raise Usage("usage: flannelctl config get|set FILE|validate FILE")


def _invalid(error: str, source: str) -> list[Finding]:
    return [Finding(ERROR, "config_invalid", source, error)] if error else []


def _read_input(path: str) -> tuple[bytes, str]:
    if path == "-":
        return sys.stdin.buffer.read(1 << 20), "<stdin>"
    try:
        return Path(path).read_bytes()[: 1 << 20], path
    except OSError as exc:
        raise Usage(f"cannot read {path}: {exc.strerror or exc}") from None


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Run one command; returns the exit code (0 healthy, 1 problems, 2 usage)."""
    from flannel.ctl.datastore import StoreUnreachable

    out, err = stdout or sys.stdout, stderr or sys.stderr
    env = os.environ if environ is None else environ
    try:
        args = parse(sys.argv[1:] if argv is None else argv, env)
    except flags.HelpRequested:
        out.write(USAGE)
        return 0
    except flags.VersionRequested:
        out.write(UPSTREAM_VERSION + "\n")
        return 0
    except Usage as exc:
        err.write(f"flannelctl: {exc}\nRun 'flannelctl --help' for usage.\n")
        return EXIT_USAGE
    assert args.opts is not None
    logging.basicConfig(level=logging.DEBUG if args.opts.v > 0 else logging.ERROR, stream=err,
                        format="flannelctl: %(levelname)s %(message)s")
    try:
        if not args.opts.kube_subnet_mgr:
            from flannel.subnet.etcd_options import check_etcd_flags

            check_etcd_flags(args.opts.etcd_endpoints, args.opts.etcd_keyfile, args.opts.etcd_certfile,
                             args.opts.etcd_cafile)
        return asyncio.run(_dispatch(args, out))
    except (Usage, ConfigError) as exc:
        err.write(f"flannelctl: {exc}\nRun 'flannelctl --help' for usage.\n")
        return EXIT_USAGE
    except StoreUnreachable as exc:
        where = (args.opts.kube_api_url or args.opts.kubeconfig_file or "in-cluster API server") \
            if args.opts.kube_subnet_mgr else args.opts.etcd_endpoints
        finding = Finding(ERROR, "store_unreachable", redact_urls(where), str(exc))
        if args.output == "json":
            return emit(out, {}, [finding], "", True)
        err.write(f"flannelctl: {exc}\n")
        return EXIT_PROBLEMS


def run() -> None:
    """Entry point of the ``flannelctl`` script."""
    sys.exit(main())
