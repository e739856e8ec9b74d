"""Running the firewall binaries (iptables, iptables-restore, nft) from the event loop.

Upstream shells out to these tools, and so do we (spec §18): their text formats are the compatibility surface,
and a netlink nftables encoder would be a large, fragile dependency. Each call is an asyncio subprocess with a
time limit, so a stuck xtables lock or a hung tool can delay one resync but never block the lease watch. Every
failure becomes a ``TrafficRuleError`` that names the command line and carries its stderr, so the log says
what to fix (a missing package, a kernel without the nat table, a rejected rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from flannel.traffic.base import TrafficRuleError

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 30.0
"""Seconds a firewall command may run before it is killed and counted as failed."""

_LINE_RE = re.compile(r"\bline:? (\d+)")
_VERSION_RE = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


class CommandNotFoundError(TrafficRuleError):
    """The binary is not on PATH: nothing of that tool can be installed, and nothing of it can exist."""


@dataclass(frozen=True)
class CommandResult:
    """A finished command."""

    argv: tuple[str, ...]
    """The command line as run."""
    returncode: int
    """Its exit status."""
    stdout: str
    """Its standard output, decoded."""
    stderr: str
    """Its standard error, decoded and stripped."""


def command_text(argv: Sequence[str]) -> str:
    """The command line as one would type it (for messages)."""
    return " ".join(argv)


def find_binary(name: str) -> str:
    """The full path of ``name`` on PATH; ``CommandNotFoundError`` with a hint otherwise."""
    path = which(name)
    if path is None:
        package = "nftables" if name.startswith("nft") else "iptables"
        raise CommandNotFoundError(f"{name}: command not found on PATH (install the {package} package)")
    return path


def which(name: str) -> str | None:
    """``shutil.which`` for an executable file, written out: importing ``shutil`` also loads ``bz2``, ``lzma``
    and ``fnmatch``, 0.7 MiB of flanneld's resident memory for one PATH lookup (issue #16)."""
    if os.path.dirname(name):
        return name if _executable(name) else None
    path = os.environ.get("PATH")
    if path is None:
        path = os.confstr("CS_PATH") or os.defpath
    if not path:
        return None
    seen: set[str] = set()
    for folder in path.split(os.pathsep):
        if folder in seen:
            continue
        seen.add(folder)
        candidate = os.path.join(folder, name)
        if _executable(candidate):
            return candidate
    return None


def _executable(path: str) -> bool:
    return os.path.exists(path) and os.access(path, os.F_OK | os.X_OK) and not os.path.isdir(path)


async def run_command(argv: Sequence[str], stdin: str | None = None, *, check: bool = True,
                      timeout: float = COMMAND_TIMEOUT, netns: str | None = None) -> CommandResult:
    """Run ``argv`` with ``stdin`` as input; with ``check``, a non-zero exit raises ``TrafficRuleError``.

    ``netns`` runs the command in that named network namespace (``ip netns exec``) while flanneld itself stays
    where it is: the tests drive namespaces this way, so a test can never touch the host's firewall.

    The error text is "`<command>` failed (exit N): <stderr>", plus the input line the tool complained
    about when its message names one (iptables-restore and nft both say "line N").
    """
    args: tuple[str, ...] = (find_binary(argv[0]), *argv[1:])
    if netns is not None:
        args = (find_binary("ip"), "netns", "exec", netns, *args)
    text = command_text(argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise TrafficRuleError(f"`{text}` could not be started: {exc}") from None
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    except BaseException as exc:  # timeout or cancellation: leave nothing running behind us
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise TrafficRuleError(f"`{text}` timed out after {timeout:g}s and was killed") from None
        raise
    result = CommandResult(tuple(argv), proc.returncode if proc.returncode is not None else -1,
                           out.decode(errors="replace"), err.decode(errors="replace").strip())
    if check and result.returncode != 0:
        raise TrafficRuleError(failure_text(result, stdin))
    return result


def failure_text(result: CommandResult, stdin: str | None = None) -> str:
    """The message for a failed command: what ran, its exit status, its stderr, and the offending input line."""
    msg = f"`{command_text(result.argv)}` failed (exit {result.returncode}): {result.stderr or '(no stderr)'}"
    m = _LINE_RE.search(result.stderr)
    if stdin is not None and m:
        lines = stdin.splitlines()
        n = int(m.group(1))
        if 1 <= n <= len(lines):
            msg += f" [input line {n}: {lines[n - 1]}]"
    return msg


def parse_version(text: str) -> tuple[int, int, int] | None:
    """The first ``vX.Y.Z`` in a ``--version`` output, e.g. ``iptables v1.8.9 (nf_tables)`` → (1, 8, 9)."""
    m = _VERSION_RE.search(text)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None
