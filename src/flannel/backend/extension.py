"""The extension backend (spec §10.8): the data plane is the operator's own commands.

Four optional commands: ``PreStartupCommand`` (its output becomes the lease's ``BackendData``),
``PostStartupCommand`` (once the lease is held), and ``SubnetAddCommand`` / ``SubnetRemoveCommand`` per remote
lease. Each runs through ``/bin/sh -c`` (⚠ upstream ≥ v0.28.2 runs the split words without a shell, which
broke its own documented examples; see docs/backends.md), with the variables below in its environment, stdin
fed, bounded in time. A failing start-up command is fatal; a failing per-lease command is logged with its
exit status and stderr, retried briefly (``flannel.retry``), and never stops the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from flannel.backend.base import BackendContext, LeasedNetwork
from flannel.config import NetworkConfig
from flannel.errors import ConfigError, FlannelError
from flannel.gojson import compact, fold
from flannel.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.retry import retry
from flannel.subnet.lease_tracker import LeaseTracker
from flannel.subnet.manager import WatchResult

log = logging.getLogger(__name__)

SHELL = "/bin/sh"
COMMAND_TIMEOUT = 30.0
"""Seconds a command may run before it is killed (with its whole process group) and counted as failed."""
SUBNET_COMMAND_ATTEMPTS = 3
"""Tries of a failing SubnetAdd/RemoveCommand (back-off 0.1 s, 0.2 s, plus jitter) before it is logged."""
_FIELDS = ["Type", "PreStartupCommand", "PostStartupCommand", "SubnetAddCommand", "SubnetRemoveCommand"]


class CommandError(FlannelError):
    """A command exited non-zero, timed out or could not be started."""


@dataclass(frozen=True)
class ExtensionConfig:
    """The four commands; an empty string means "none"."""

    pre_startup: str = ""
    """Run before the lease; its stdout becomes BackendData (a JSON string)."""
    post_startup: str = ""
    """Run once the lease is held."""
    subnet_add: str = ""
    """Run for each remote lease added (or changed)."""
    subnet_remove: str = ""
    """Run for each remote lease removed."""


def parse_extension_config(backend: dict[str, Any]) -> ExtensionConfig:
    """Read the ``Backend`` object (keys case-insensitive); every command must be a string."""
    known = {f.lower() for f in _FIELDS}
    for key in backend:
        if key.lower() == "shutdowncommand":
            log.warning("extension backend: Backend.%s is not implemented (as upstream); ignored", key)
        elif key.lower() not in known:
            log.warning("extension backend: ignoring unknown key Backend.%s", key)
    raw = fold(backend, _FIELDS)
    values: dict[str, str] = {}
    for key in _FIELDS[1:]:
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"Backend.{key} must be a string, got {value!r}", f"Backend.{key}")
        values[key] = (value or "").strip()
    return ExtensionConfig(pre_startup=values["PreStartupCommand"], post_startup=values["PostStartupCommand"],
                           subnet_add=values["SubnetAddCommand"], subnet_remove=values["SubnetRemoveCommand"])


async def run_command(name: str, command: str, env: Mapping[str, str], stdin: str = "",
                      timeout: float = COMMAND_TIMEOUT) -> str:
    """Run ``/bin/sh -c command`` with ``env`` added to flanneld's environment and ``stdin + "\\n"`` as input.

    Returns stdout, trimmed. Raises ``CommandError`` naming the command, its exit status and its stderr.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            SHELL, "-c", command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, **env}, start_new_session=True)
    except OSError as exc:
        raise CommandError(f"{name} {command!r} could not be started: {exc}") from None
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate((stdin + "\n").encode())
    except BaseException as exc:  # timeout or cancellation: leave nothing running behind us
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise CommandError(f"{name} {command!r} timed out after {timeout:g}s and was killed") from None
        raise
    if proc.returncode != 0:
        raise CommandError(f"{name} {command!r} exited with status {proc.returncode}: "
                           f"{err.decode(errors='replace').strip() or '(no stderr)'}")
    if err.strip():
        log.info("%s stderr: %s", name, err.decode(errors="replace").strip())
    return out.decode(errors="replace").strip()


def lease_env(lease: Lease) -> dict[str, str]:
    """``SUBNET`` and ``PUBLIC_IP``, plus ``IPV6SUBNET`` and ``PUBLIC_IPV6`` when the lease has them."""
    env = {"PUBLIC_IP": str(lease.attrs.public_ip)}
    if lease.subnet is not None:
        env["SUBNET"] = str(lease.subnet)
    if lease.ipv6_subnet is not None:
        env["IPV6SUBNET"] = str(lease.ipv6_subnet)
    if lease.attrs.public_ipv6 is not None:
        env["PUBLIC_IPV6"] = str(lease.attrs.public_ipv6)
    return env


def backend_stdin(lease: Lease) -> str:
    """The lease's BackendData decoded as a JSON string ("" when absent); ``ValueError`` when it is not one."""
    text = lease.attrs.backend_data
    if not text:
        return ""
    value = json.loads(text)
    if not isinstance(value, str):
        raise ValueError(f"BackendData is not a JSON string: {text[:80]}")
    return value


class ExtensionBackend:
    """Runs the start-up commands around acquiring the lease."""

    def __init__(self, ctx: BackendContext, config: NetworkConfig) -> None:
        self.cfg = parse_extension_config(config.backend)
        self.ctx = ctx

    async def register_network(self, config: NetworkConfig) -> ExtensionNetwork:
        ext = self.ctx.ext_iface
        data = None
        if self.cfg.pre_startup:
            output = await run_command("PreStartupCommand", self.cfg.pre_startup, {})
            data = compact(output)
            log.info("PreStartupCommand output: %s", output)
        attrs = LeaseAttrs(  # ⚠ upstream: the interface address, not --public-ip
            public_ip=ext.iface_addr if config.enable_ipv4 and ext.iface_addr else LeaseAttrs().public_ip,
            public_ipv6=ext.iface_v6_addr if config.enable_ipv6 else None,
            backend_type="extension",
            backend_data=data,
        )
        lease = await self.ctx.subnet_manager.acquire_lease(attrs)
        if self.cfg.post_startup:
            env = {"NETWORK": str(config.network) if config.network else "", **lease_env(lease)}
            output = await run_command("PostStartupCommand", self.cfg.post_startup, env)
            log.info("PostStartupCommand output: %s", output)
        return ExtensionNetwork(lease, ext.mtu, self.cfg)


class ExtensionNetwork(LeasedNetwork):
    """Runs SubnetAddCommand / SubnetRemoveCommand for remote leases, in event order."""

    def __init__(self, lease: Lease, mtu: int, cfg: ExtensionConfig, timeout: float = COMMAND_TIMEOUT) -> None:
        super().__init__(lease, mtu)
        self.cfg = cfg
        self.timeout = timeout
        self.tracker = LeaseTracker(lease)
        self.applied: dict[str, Lease] = {}
        """The leases SubnetAddCommand last succeeded for, by key."""


    async def run(self, results: AsyncIterator[WatchResult]) -> None:
        async for result in results:
            await self.handle_events(self.tracker.apply(result))

    async def handle_events(self, events: list[LeaseEvent]) -> None:
        """Run the commands an event calls for; an unchanged re-add (a renewal) runs nothing."""
        for ev in events:
            lease = ev.lease
            if lease.attrs.backend_type != "extension":
                if ev.type is EventType.ADDED:
                    log.info("ignoring non-extension lease %s (BackendType %r)", lease.key,
                             lease.attrs.backend_type)
                old = self.applied.pop(lease.key, None)
                if old is not None:  # it switched backends: what we added for it must go
                    await self._command("SubnetRemoveCommand", self.cfg.subnet_remove, old)
                continue
            old = self.applied.get(lease.key)
            if ev.type is EventType.REMOVED:
                self.applied.pop(lease.key, None)
                await self._command("SubnetRemoveCommand", self.cfg.subnet_remove, old or lease)
                continue
            if old is not None and (old.subnet, old.ipv6_subnet, old.attrs) == (
                    lease.subnet, lease.ipv6_subnet, lease.attrs):
                continue
            if old is not None:  # changed (e.g. a new public IP): undo the old one first
                await self._command("SubnetRemoveCommand", self.cfg.subnet_remove, old)
                self.applied.pop(lease.key, None)
            if await self._command("SubnetAddCommand", self.cfg.subnet_add, lease):
                self.applied[lease.key] = lease

    async def _command(self, name: str, command: str, lease: Lease) -> bool:
        """Run one per-lease command; log and swallow any failure. True when it succeeded (or there is none)."""
        if not command:
            return True
        try:
            stdin = backend_stdin(lease)
        except ValueError as exc:
            log.warning("skipping %s for lease %s: %s", name, lease.key, exc)
            return False
        env = lease_env(lease)
        try:
            output = await retry(lambda: run_command(name, command, env, stdin, self.timeout),
                                 attempts=SUBNET_COMMAND_ATTEMPTS, what=f"{name} for {lease.key}",
                                 retry_on=CommandError)
        except CommandError as exc:
            log.error("%s for lease %s failed: %s", name, lease.key, exc)
            return False
        log.info("%s for lease %s done%s", name, lease.key, f": {output}" if output else "")
        return True
