"""The ``flannel`` CNI plugin's entry point: one function per CNI verb, dispatched on ``CNI_COMMAND``.

ADD reads ``subnet.env``, builds the delegate config (``delegate.build_delegate``), saves it under
``dataDir/<containerID>`` and runs the delegate (``bridge`` by default). DEL replays the saved config, so it
works while flanneld is down, and keeps the file when the delegate fails, so that a retried DEL can still
clean up (upstream removes it regardless). CHECK runs the delegate's CHECK against the saved config. STATUS
and GC are CNI 1.1's: "can ADD work now?" and "forget every attachment not in this list".

Imports are deliberately few and local to the verb that needs them: see the package docstring. Not even
``os`` is imported on a verb's way (:mod:`flannel.cni.posixenv`).
"""

from __future__ import annotations

import posix
import sys

from flannel.cni.errors import (
    DECODING_FAILURE,
    INCOMPATIBLE_VERSION,
    INTERNAL,
    INVALID_ENVIRONMENT,
    INVALID_NETWORK_CONFIG,
    PLUGIN_NOT_AVAILABLE,
    UNKNOWN_CONTAINER,
    CNIError,
)
from flannel.cni.netconf import CniArgs, NetConf, parse_netconf, read_args
from flannel.cni.posixenv import environ
from flannel.cni.versions import CURRENT_VERSION, SUPPORTED_VERSIONS, at_least

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

GC_IFNAME = "eth0"
"""The interface name GC assumes for an attachment it releases by replaying DEL (see ``cmd_gc``)."""
_MINIMUM_VERSION = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}


def main() -> NoReturn:
    """The ``flannel`` executable: run one verb, then leave without the interpreter's teardown.

    Everything is written and closed by then, and nothing registers exit handlers; skipping the teardown
    saves 1.7 ms per call (measured), a tenth of the plugin's whole overhead budget.
    """
    try:
        code = run()
        sys.stdout.flush()
        sys.stderr.flush()  # a traceback (bug path) goes through sys.stderr
    except OSError:  # stdout is gone, so there is nobody left to tell
        code = 1
    posix._exit(code)


def run() -> int:
    """Run the verb named by ``CNI_COMMAND``; print its result, or a CNI error object, on stdout."""
    env = environ()
    command = env.get("CNI_COMMAND", "")
    version = CURRENT_VERSION  # of an error object, until the config says otherwise
    try:
        if not command:
            _about()
            return 0
        if command == "VERSION":
            return _write(cmd_version())
        handler = _HANDLERS.get(command)
        if handler is None:
            raise CNIError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {command}")
        args = read_args(env)
        conf = parse_netconf(sys.stdin.buffer.read())
        version = conf.version
        minimum = _MINIMUM_VERSION.get(command)
        if minimum and not at_least(conf.version, minimum):
            raise CNIError(INCOMPATIBLE_VERSION, f"config version does not allow {command}")
        return _write(handler(args, conf))
    except CNIError as err:
        _write(err.to_json(version).encode())
        return 1
    except Exception as exc:  # a bug; the runtime still gets an error object, the log gets the traceback
        import traceback

        traceback.print_exc()
        _write(CNIError(INTERNAL, f"internal error in the flannel plugin: {exc!r}").to_json(version).encode())
        return 1


def cmd_version() -> bytes:
    """The spec versions this plugin speaks (the input config is ignored, as the CNI library does)."""
    versions = ",".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    return f'{{"cniVersion":"{CURRENT_VERSION}","supportedVersions":[{versions}]}}\n'.encode()


def cmd_add(args: CniArgs, conf: NetConf) -> bytes:
    """Build the delegate config from ``subnet.env``, save it, run the delegate's ADD, print its result."""
    from flannel.cni import delegate, invoke, state
    from flannel.cni.subnet_file import load_subnet_env

    delegate.check_delegate(conf.delegate)  # a config error is reported even while flanneld is down
    netconf = delegate.build_delegate(conf, load_subnet_env(conf.subnet_file))
    data = delegate.render(netconf)
    invoke.write_stderr(b"delegateAdd: netconf sent to delegate plugin:\n" + data + b"\n")
    plugin = invoke.find_plugin(netconf["type"], args.path)
    state.save(conf.data_dir, args.container_id, data)  # before the delegate: a failed ADD is followed by DEL
    env = invoke.plugin_env(environ(), "ADD")
    stdout, used = invoke.call(plugin, data, env, conf.version, cache_dir=conf.data_dir)
    return stdout if used == conf.version else _convert(stdout, conf.version, used)


def cmd_del(args: CniArgs, conf: NetConf) -> bytes:
    """Replay the saved config to the delegate's DEL; no saved config means there is nothing to undo."""
    from flannel.cni import invoke, state

    saved = _load_saved(conf.data_dir, args.container_id)
    if saved is None:
        return b""
    data, netconf = saved
    plugin = invoke.find_plugin(netconf["type"], args.path)
    env = invoke.plugin_env(environ(), "DEL")
    invoke.call(plugin, data, env, _version_of(netconf), cache_dir=conf.data_dir)
    state.remove(conf.data_dir, args.container_id)  # only now: a failed DEL keeps what a retry needs
    return b""


def cmd_check(args: CniArgs, conf: NetConf) -> bytes:
    """The delegate's CHECK with the saved config and the runtime's ``prevResult``: is the pod still wired?"""
    from flannel.cni import delegate, invoke
    from flannel.cni.lite import dumps, fold_keys

    saved = _load_saved(conf.data_dir, args.container_id)
    if saved is None:
        raise CNIError(
            UNKNOWN_CONTAINER,
            f"no saved delegate config for container {args.container_id} in {conf.data_dir}",
            "the container was not added through flannel, or it was deleted",
        )
    _, netconf = saved
    netconf["cniVersion"] = conf.cni_version
    prev = fold_keys(conf.raw, ("prevResult",)).get("prevResult")
    if prev is not None:
        netconf["prevResult"] = delegate.with_route_gateways(prev)
    plugin = invoke.find_plugin(netconf["type"], args.path)
    env = invoke.plugin_env(environ(), "CHECK")
    minimum = _MINIMUM_VERSION["CHECK"]
    invoke.call(plugin, dumps(netconf).encode(), env, conf.version, minimum, cache_dir=conf.data_dir)
    return b""


def cmd_status(args: CniArgs, conf: NetConf) -> bytes:
    """Success when an ADD could work now: ``subnet.env`` is readable and valid, the delegate is installed.

    A delegate that speaks CNI 1.1 is asked for its own STATUS as well.
    """
    from flannel.cni import delegate, invoke
    from flannel.cni.subnet_file import load_subnet_env
    from flannel.cni.versions import choose_version

    try:
        netconf = delegate.build_delegate(conf, load_subnet_env(conf.subnet_file))
        plugin = invoke.find_plugin(netconf["type"], args.path)
    except CNIError as err:
        raise CNIError(PLUGIN_NOT_AVAILABLE, err.msg, err.details) from None
    used = choose_version(conf.version, invoke.version_info(plugin, environ()), minimum="1.1.0")
    if used is not None:
        netconf["cniVersion"] = used
        outcome = invoke.run(plugin, delegate.render(netconf), invoke.plugin_env(environ(), "STATUS"))
        if outcome.status != 0:
            raise invoke.plugin_error(outcome)
    return b""


def cmd_gc(args: CniArgs, conf: NetConf) -> bytes:
    """Release every saved attachment whose container is not in ``cni.dev/valid-attachments``.

    Each stale config is replayed to the delegate's DEL (with ``CNI_IFNAME=eth0``, what kubelet uses: the
    saved config does not record the interface name) and removed once that succeeded. Then a delegate that
    speaks CNI 1.1 gets the GC itself, so that it (and its IPAM) can release what it still holds.
    """
    import time

    from flannel.cni import invoke, state

    valid = _valid_container_ids(conf.raw)
    state.remove_stale_tmp(conf.data_dir, time.time())
    failures = []
    for container_id in state.saved_ids(conf.data_dir):
        if container_id in valid:
            continue
        try:
            saved = _load_saved(conf.data_dir, container_id)
            if saved is not None:
                data, netconf = saved
                plugin = invoke.find_plugin(netconf["type"], args.path)
                env = invoke.plugin_env(
                    environ(), "DEL", CNI_CONTAINERID=container_id, CNI_IFNAME=GC_IFNAME, CNI_NETNS=None, CNI_ARGS=None
                )
                invoke.call(plugin, data, env, _version_of(netconf), cache_dir=conf.data_dir)
                state.remove(conf.data_dir, container_id)
        except CNIError as err:
            failures.append(f"{container_id}: {err}")
    try:
        _delegate_gc(args, conf)
    except CNIError as err:
        failures.append(f"delegate GC: {err}")
    if failures:
        raise CNIError(INTERNAL, f"GC failed for {len(failures)} item(s), their state is kept", "; ".join(failures))
    return b""


def _delegate_gc(args: CniArgs, conf: NetConf) -> None:
    from flannel.cni import delegate, invoke
    from flannel.cni.subnet_file import SubnetFileError, load_subnet_env
    from flannel.cni.versions import choose_version

    try:
        env = load_subnet_env(conf.subnet_file)
    except SubnetFileError as err:  # nothing to build the delegate's config from; our own part is done
        invoke.write_stderr(f"GC: delegate GC skipped: {err.reason}\n".encode())
        return
    netconf = delegate.build_delegate(conf, env)
    plugin = invoke.find_plugin(netconf["type"], args.path)
    used = choose_version(conf.version, invoke.version_info(plugin, environ()), minimum="1.1.0")
    if used is None:
        return
    netconf["cniVersion"] = used
    netconf["cni.dev/valid-attachments"] = _valid_attachments(conf.raw)
    outcome = invoke.run(plugin, delegate.render(netconf), invoke.plugin_env(environ(), "GC"))
    if outcome.status != 0:
        raise invoke.plugin_error(outcome)


def _valid_attachments(raw: dict[str, Any]) -> list[Any]:
    """``cni.dev/valid-attachments`` (or its first spelling, ``cni.dev/attachments``); null means none.

    A config without either key is refused rather than read as "nothing is valid", which would release
    every pod on the node.
    """
    from flannel.cni.lite import fold_keys

    keys = ("cni.dev/valid-attachments", "cni.dev/attachments")
    fields = fold_keys(raw, keys)
    if not fields:
        raise CNIError(INVALID_NETWORK_CONFIG, "GC needs 'cni.dev/valid-attachments' in the config")
    value = fields.get(keys[0], fields.get(keys[1]))
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(a, dict) for a in value):
        raise CNIError(INVALID_NETWORK_CONFIG, "'cni.dev/valid-attachments' must be a list of objects")
    return value


def _valid_container_ids(raw: dict[str, Any]) -> set[str]:
    from flannel.cni.lite import fold_keys

    ids = set()
    for attachment in _valid_attachments(raw):
        container_id = fold_keys(attachment, ("containerID",)).get("containerID")
        if not isinstance(container_id, str):
            raise CNIError(INVALID_NETWORK_CONFIG, f"valid attachment without a 'containerID' string: {attachment}")
        ids.add(container_id)
    return ids


def _load_saved(data_dir: str, container_id: str) -> tuple[bytes, dict[str, Any]] | None:
    """The saved bytes and their decoded config; a corrupt file is an error, and is left in place."""
    from flannel.cni import state
    from flannel.cni.lite import JSONError, load_object

    data = state.load(data_dir, container_id)
    if data is None:
        return None
    path = state.saved_path(data_dir, container_id)
    try:
        netconf = load_object(data)
        if not isinstance(netconf.get("type"), str) or not netconf["type"]:
            raise JSONError("no 'type' string")
    except JSONError as exc:
        raise CNIError(
            DECODING_FAILURE,
            f"saved delegate config {path} is corrupt: {exc}",
            "the file is kept for inspection; once the pod's interface and address are cleaned up by hand, "
            "remove it and retry",
        ) from None
    return data, netconf


def _version_of(netconf: dict[str, Any]) -> str:
    version = netconf.get("cniVersion")
    return version if isinstance(version, str) and version else "0.1.0"


def _convert(stdout: bytes, requested: str, used: str) -> bytes:
    from flannel.cni.lite import dumps, load_object
    from flannel.cni.results import convert_result

    try:
        return dumps(convert_result(load_object(stdout), requested, used)).encode()
    except ValueError as exc:  # lite.JSONError included
        raise CNIError(INTERNAL, f"cannot convert the delegate's {used} result to {requested}: {exc}") from None


def _about() -> None:
    from flannel import __version__
    from flannel.cni.invoke import write_stderr

    machine = posix.uname().machine
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    write_stderr(
        f"CNI Plugin flannel version {__version__} (linux/{arch})\n"
        f"CNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n".encode()
    )


def _write(data: bytes) -> int:
    if data:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0


_HANDLERS: dict[str, Callable[[CniArgs, NetConf], bytes]] = {
    "ADD": cmd_add,
    "DEL": cmd_del,
    "CHECK": cmd_check,
    "STATUS": cmd_status,
    "GC": cmd_gc,
}
