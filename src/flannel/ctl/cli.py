"""The ``flannelctl`` console script: its command line, and one function per subcommand.

flannelctl runs where flanneld runs, with the same unit file's environment, so it takes flanneld's own flags
and ``FLANNELD_*`` variables through flanneld's own parser (``daemon/flags.py``): ``--etcd-endpoints``,
``--etcd-prefix``, TLS, ``FLANNELD_ETCD_PASSWORD``, ``--subnet-file``, ``--healthz-ip``/``--healthz-port`` and
the rest mean exactly what they mean to flanneld. Only a handful of flags are flannelctl's (``-o``,
``--timeout``, ``--force``, ``--cni-conf-dir``, ``--log-file``); they and the positional words are taken out
first, and the remainder goes to flanneld's parser, in any order and in every Go spelling (``-x v``, ``--x=v``).
``docker-opts`` is the exception: everything after it is ``mk-docker-opts``' own getopts flags, untouched.

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
  status                           this node: lease, flanneld readiness, kernel drift
  leases                           every lease in the cluster, with conflicts
  reserve SUBNET --public-ip IP    reserve a subnet for the node with that public IP (etcd)
  unreserve SUBNET                 delete a reservation
  config get                       print the network config stored in etcd, and check it
  config validate FILE             check a config file with flanneld's own rules ('-': stdin)
  config set FILE                  validate, then store a config file in etcd
  doctor                           check this node for the common causes of a broken fabric
  bundle FILE.tar.gz               logs, config, leases, kernel state and doctor output, secrets redacted
  docker-opts [mk-docker-opts flags]  write dockerd options from subnet.env (as mk-docker-opts)
  probe                            reach every peer over the overlay: RTT and the DF path MTU (needs root)

flannelctl flags:
  -o, --output table|json          output format (default table; json keys: docs/flannelctl.md)
  --timeout SECONDS                how long to wait for etcd and flanneld (default 5)
  --force                          reserve/unreserve: overwrite or delete another node's record
  --cni-conf-dir DIR               doctor, bundle: the runtime's CNI config directory (default /etc/cni/net.d)
  --log-file FILE                  bundle: a flanneld log file to include (repeatable)

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
        self.passed: list[str] = []
        """flanneld's flags as given (``bundle`` hands them to the commands it runs)."""
        self.cni_dir = "/etc/cni/net.d"
        self.log_files: list[str] = []


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
        if name in ("cni-conf-dir", "log-file"):  # doctor and bundle
            if not eq:
                if not rest:
                    raise Usage(f"flag needs an argument: -{name}")
                value = rest.pop(0)
            if name == "cni-conf-dir":
                args.cni_dir = value
            else:
                args.log_files.append(value)
            continue
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
    args.passed = passed
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
    if command == "doctor":
        from flannel.ctl import doctor

        _need(words, 1, "doctor")
        doc, findings = await doctor.collect(opts, timeout, args.cni_dir)
        return emit(out, doc, findings, doctor.render(doc, findings, colour), as_json)
    if opts.kube_subnet_mgr and command in ("reserve", "unreserve"):
        raise Usage(f"flannelctl {command}: reservations are an etcd feature (spec 6.8); in Kubernetes mode a "
                    "node's subnet is its spec.podCIDR, set by the controller manager")
    if opts.kube_subnet_mgr and command == "config":
        return _kube_config(args, out)
    if command == "probe":  # etcd and kube mode alike (ctl/probe.py)
        from flannel.ctl import probe as probe_cmd

        _need(words, 1, "probe")
        doc, findings = await probe_cmd.collect(opts, timeout)
        return emit(out, doc, findings, probe_cmd.render(doc, findings, colour), as_json)
    if opts.kube_subnet_mgr and command == "leases":
        _need(words, 1, "leases")
        config, config_error, records = await read_nodes(opts, timeout)
        doc, findings, human = leases.build(records, config, config_error, opts.net_config_path, colour)
        return emit(out, doc, findings, human, as_json)
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


def _kube_config(args: Args, out: TextIO) -> int:
    """``config get`` in kube mode: net-conf.json (``--net-config-path``) and its check as flanneld reads it."""
    from flannel.ctl import netconfig

    assert args.opts is not None
    words, path = args.words, args.opts.net_config_path
    if words[1:2] != ["get"]:
        raise Usage("flannelctl config set: in Kubernetes mode the config is the kube-flannel ConfigMap "
                    f"(mounted at {path}); edit it with kubectl")
    _need(words, 2, "config get")
    try:
        data = Path(path).read_bytes()[: 1 << 20]
    except OSError as exc:
        return emit(out, {"key": path, "config": None}, [Finding(ERROR, "config", path, f"failed to read net "
                    f"conf: {exc.strerror or exc}")], f"{path}: {exc.strerror or exc}", args.output == "json")
    v = netconfig.validate(data, path, etcd_mode=False)
    doc, human = netconfig.report(v, path)
    text = data.decode("utf-8", "replace")
    return emit(out, {**doc, "key": path, "config": text}, _invalid(v.error, path), f"{text.rstrip()}\n\n{human}",
                args.output == "json")


def _bundle(args: Args, environ: Mapping[str, str], out: TextIO) -> int:
    """``bundle FILE``: runs the reports through ``main`` itself (each with its own event loop), then the tools."""
    import io

    from flannel.ctl import bundle

    assert args.opts is not None
    _need(args.words, 2, "bundle FILE.tar.gz")

    def report(words: list[str]) -> tuple[int, str]:
        buf = io.StringIO()
        code = main([*words, *args.passed, f"--timeout={args.timeout:g}", f"--cni-conf-dir={args.cni_dir}", "-o",
                     "json"], environ, buf, io.StringIO())
        return code, buf.getvalue()

    try:
        manifest = bundle.build(args.words[1], report, environ, args.opts.subnet_file, args.log_files, args.cni_dir)
    except OSError as exc:
        raise Usage(f"cannot write {args.words[1]}: {exc.strerror or exc}") from None
    missing = [p["name"] for p in manifest["parts"] if p["exit_code"] is None]
    doc = {"file": args.words[1], **manifest}
    human = f"wrote {args.words[1]} ({len(manifest['parts'])} parts, secrets redacted)" + (
        f"\nnot collected: {', '.join(missing)}" if missing else "")
    return emit(out, doc, [], human, args.output == "json")


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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["docker-opts"]:  # mk-docker-opts' own getopts flags, untouched: one implementation
        from flannel import docker_opts

        return docker_opts.main(["flannelctl docker-opts", *argv[1:]], env)
    try:
        args = parse(argv, env)
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
        if args.words[:1] == ["bundle"]:
            return _bundle(args, env, out)
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
