"""Running delegate plugins: find one on ``CNI_PATH``, exec it, and agree on a spec version with it.

This is the CNI library's ``invoke`` package (v1.3.0) in the plugin's terms: the delegate gets our
environment with ``CNI_COMMAND`` replaced and the config on stdin; its stdout is the result, or on failure a
CNI error object that is passed on unchanged (as upstream's plugin does). What the library leaves to the
caller, and this module adds, is version negotiation: when a delegate answers "incompatible CNI versions",
it is called again with the highest version both sides speak. The versions it speaks are read from that
refusal (the CNI library lists them there) or, failing that, asked for with the VERSION command.

Standard streams go through ``memfd`` files rather than pipes: no reader threads, no ``select``, no deadlock
whatever the delegate writes, and no ``subprocess`` import (7 ms of start-up). System calls go to ``posix``
directly (:mod:`flannel.cni.posixenv` says why).
"""

from __future__ import annotations

import posix

from flannel.atomicfile import read_bounded, write_atomically
from flannel.cni.errors import INCOMPATIBLE_VERSION, INTERNAL, CNIError
from flannel.cni.lite import JSONError, dataclass, dumps, load_object
from flannel.cni.posixenv import basename, join
from flannel.cni.versions import CURRENT_VERSION, choose_version, go_quote, go_quote_list

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

_TEXT_BUSY_RETRIES = 5
"""Like the CNI library: a plugin binary being replaced right now is retried, once a second."""
_ETXTBSY = 26
"""``errno.ETXTBSY`` on Linux (the ``errno`` module is not worth its import here)."""
_SEEK_SET = 0
"""``os.SEEK_SET`` (``posix`` leaves it to ``os``)."""
_DEFAULT_SIGNALS = (13, 25)
"""SIGPIPE and SIGXFSZ, which Python ignores and a child would inherit ignored (``subprocess`` resets them too)."""


@dataclass(frozen=True)
class Outcome:
    """How one run of a plugin ended."""

    status: int
    """Exit status (negative: killed by that signal)."""
    stdout: bytes
    stderr: bytes


def find_plugin(name: str, paths: tuple[str, ...]) -> str:
    """The executable ``name`` in the first directory of ``paths`` that has it."""
    if not name:
        raise CNIError(INTERNAL, "no plugin name provided")
    if "/" in name:
        raise CNIError(INTERNAL, f"invalid plugin name: {name}")
    if not paths:
        raise CNIError(INTERNAL, "no paths provided")
    for directory in paths:
        candidate = join(directory, name)
        try:
            if posix.stat(candidate).st_mode & 0o170000 == 0o100000:  # a regular file
                return candidate
        except OSError:
            continue
    raise CNIError(INTERNAL, f"failed to find plugin {go_quote(name)} in path [{' '.join(paths)}]")


def plugin_env(environ: Mapping[str, str], command: str, **overrides: str | None) -> dict[str, str]:
    """The caller's environment with ``CNI_COMMAND`` (and any ``overrides``; None removes) set."""
    env = dict(environ)
    env["CNI_COMMAND"] = command
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run(path: str, stdin: bytes, env: Mapping[str, str]) -> Outcome:
    """Exec ``path`` with ``stdin`` and ``env``; wait for it and collect what it wrote."""
    fds = [_memfd("stdin", stdin), _memfd("stdout"), _memfd("stderr")]
    try:
        actions = [(posix.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)]
        for attempt in range(_TEXT_BUSY_RETRIES + 1):
            try:
                pid = posix.posix_spawn(path, [path], env, file_actions=actions, setsigdef=_DEFAULT_SIGNALS)
                break
            except OSError as exc:
                if exc.errno == _ETXTBSY and attempt < _TEXT_BUSY_RETRIES:
                    import time

                    time.sleep(1.0)
                    continue
                reason = (exc.strerror or str(exc)).lower()
                msg = f"netplugin failed with no error message: fork/exec {path}: {reason}"
                raise CNIError(INTERNAL, msg) from None
        _, wait_status = posix.waitpid(pid, 0)
        return Outcome(posix.waitstatus_to_exitcode(wait_status), _read_all(fds[1]), _read_all(fds[2]))
    finally:
        for fd in fds:
            posix.close(fd)


def plugin_error(outcome: Outcome) -> CNIError:
    """The error a failed plugin reported: its CNI error object, else a message built from its output."""
    if not outcome.stdout.strip():
        if outcome.stderr.strip():
            return CNIError(INTERNAL, f"netplugin failed: {go_quote(outcome.stderr.decode(errors='replace'))}")
        return CNIError(INTERNAL, f"netplugin failed with no error message: exit status {outcome.status}")
    try:
        obj = load_object(outcome.stdout)
    except JSONError as exc:
        text = outcome.stdout.decode(errors="replace")
        return CNIError(INTERNAL, f"netplugin failed but error parsing its diagnostic message {go_quote(text)}: {exc}")
    code, msg, details = obj.get("code"), obj.get("msg"), obj.get("details")
    if not isinstance(msg, str) or not msg:
        msg = f"netplugin failed: {go_quote(outcome.stdout.decode(errors='replace'))}"
    return CNIError(
        code if isinstance(code, int) and not isinstance(code, bool) and code > 0 else INTERNAL,
        msg,
        details if isinstance(details, str) else "",
    )


def version_info(path: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    """The spec versions the plugin at ``path`` supports (its VERSION answer)."""
    env = plugin_env(environ, "VERSION", CNI_NETNS="dummy", CNI_IFNAME="dummy", CNI_PATH="dummy")
    outcome = run(path, f'{{"cniVersion":"{CURRENT_VERSION}"}}'.encode(), env)
    if outcome.status != 0:
        err = plugin_error(outcome)
        if err.msg == "unknown CNI_COMMAND: VERSION":  # older than the VERSION command: 0.1.0 only
            return ("0.1.0",)
        raise err
    try:
        info = load_object(outcome.stdout)
    except JSONError as exc:
        raise CNIError(INTERNAL, f"decoding version info from {path}: {exc}") from None
    versions = info.get("supportedVersions")
    if not versions and info.get("cniVersion") == "0.2.0":
        return ("0.1.0", "0.2.0")
    if not isinstance(versions, list) or not versions or not all(isinstance(v, str) for v in versions):
        raise CNIError(INTERNAL, f"decoding version info from {path}: missing field supportedVersions")
    return tuple(versions)


def call(
    path: str,
    config: bytes,
    env: Mapping[str, str],
    requested: str,
    minimum: str = "0.1.0",
    cache_dir: str | None = None,
) -> tuple[bytes, str]:
    """Run the delegate; if it refuses ``requested``, agree on another version and run it again.

    Returns the delegate's stdout and the version it was called with. A ``prevResult`` in the config is
    converted to that version too. Raises the delegate's own error when it fails for any other reason.
    With ``cache_dir``, the versions learnt from a refusal are remembered there (``.versions-<plugin>``,
    keyed by the binary's inode, size and mtime), so that later calls skip the refused run.
    """
    known = _cached_versions(cache_dir, path)
    if known is not None and requested not in known:
        used = choose_version(requested, known, minimum)
        if used is not None:
            try:
                return _run_as(path, config, env, requested, used), used
            except CNIError as refused:
                if refused.code != INCOMPATIBLE_VERSION:
                    raise
                # The remembered versions are wrong after all: learn them again below.
    outcome = run(path, config, env)
    if outcome.status == 0:
        _pass_stderr(outcome)
        return outcome.stdout, requested
    err = plugin_error(outcome)
    if err.code != INCOMPATIBLE_VERSION:
        _pass_stderr(outcome)
        raise err
    offered = supported_in_refusal(err.details) or version_info(path, env)
    used = choose_version(requested, offered, minimum)
    if used is None or used == requested:
        raise CNIError(err.code, err.msg, f"{err.details}; {path} supports {go_quote_list(offered)}".lstrip("; "))
    _remember_versions(cache_dir, path, offered)
    return _run_as(path, config, env, requested, used), used


def _run_as(path: str, config: bytes, env: Mapping[str, str], requested: str, used: str) -> bytes:
    """Run the delegate with ``config`` rewritten for spec version ``used``; its stdout, or its error raised."""
    try:
        conf = load_object(config)
        conf["cniVersion"] = used
        if conf.get("prevResult") is not None:
            from flannel.cni.results import convert_result

            conf["prevResult"] = convert_result(conf["prevResult"], used, requested)
    except ValueError as exc:  # JSONError included
        raise CNIError(INTERNAL, f"cannot call {path} with CNI version {used}: {exc}") from None
    outcome = run(path, dumps(conf).encode(), env)
    _pass_stderr(outcome)
    if outcome.status != 0:
        raise plugin_error(outcome)
    return outcome.stdout


def _binary_identity(path: str) -> str:
    st = posix.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _cached_versions(cache_dir: str | None, path: str) -> tuple[str, ...] | None:
    """The versions remembered for this very binary (a replaced binary has another identity), or None."""
    if cache_dir is None:
        return None
    try:
        # Never through a link, never a FIFO, never more than a line or two.
        data = read_bounded(join(cache_dir, _cache_name(path)), 4096, follow=False)
        identity, versions = data.decode("ascii").split("\n")[:2]
        if identity != _binary_identity(path) or not versions:
            return None
    except (OSError, ValueError):  # absent, unreadable or not ours: run the delegate and learn again
        return None
    return tuple(versions.split(","))


def _remember_versions(cache_dir: str | None, path: str, versions: tuple[str, ...]) -> None:
    """Best effort: the cache is a hint, so it is written atomically but not synced, and failures are ignored.

    The data directory exists and was checked by the time a delegate runs (``state`` opened it first).
    """
    if cache_dir is None:
        return
    try:
        data = f"{_binary_identity(path)}\n{','.join(versions)}\n".encode()
        write_atomically(join(cache_dir, _cache_name(path)), data, 0o600, sync=False)
    except (OSError, ValueError):
        return


def _cache_name(path: str) -> str:
    return f".versions-{basename(path)}"


def supported_in_refusal(details: str) -> tuple[str, ...] | None:
    """The versions listed in the CNI library's refusal, ``config is "1.1.0", plugin supports ["0.1.0" …]``.

    Reading them there saves running the delegate a third time (for VERSION); None when the text differs.
    """
    _, found, rest = details.partition('plugin supports ["')
    if not found or not rest.endswith('"]'):
        return None
    versions = tuple(rest[:-2].split('" "'))
    return versions if all(v and v.replace(".", "").isdigit() for v in versions) else None


def _memfd(name: str, data: bytes = b"") -> int:
    fd = posix.memfd_create(name, posix.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[posix.write(fd, view) :]
    posix.lseek(fd, 0, _SEEK_SET)
    return fd


def _read_all(fd: int) -> bytes:
    posix.lseek(fd, 0, _SEEK_SET)
    chunks = []
    while chunk := posix.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _pass_stderr(outcome: Outcome) -> None:
    """What the delegate logged goes to our stderr, which the runtime logs (the CNI library does the same)."""
    write_stderr(outcome.stderr)


def write_stderr(data: bytes) -> None:
    """Write to fd 2 without ``sys``'s text layer; a closed stderr is not worth failing a pod for."""
    view = memoryview(data)
    try:
        while view:
            view = view[posix.write(2, view) :]
    except OSError:
        return
