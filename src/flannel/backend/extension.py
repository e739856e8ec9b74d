"""The extension backend (spec §10.8): the data plane is the operator's own commands.

Four optional commands: ``PreStartupCommand`` (its output becomes the lease's ``BackendData``),
``PostStartupCommand`` (once the lease is held), and ``SubnetAddCommand`` / ``SubnetRemoveCommand`` per remote
lease. Each runs through ``/bin/sh -c`` (⚠ upstream ≥ v0.28.2 runs the split words without a shell, which
broke its own documented examples; see docs/backends.md), with the variables below in its environment, stdin
fed, bounded in time. A failing start-up command is fatal; a failing per-lease command is logged with its
exit status and stderr, retried briefly (``flannel.retry``), and never stops the daemon.

Upstream runs ``SubnetAddCommand`` once per lease, so a route the command made and someone deleted stays
gone. With the opt-in ``SubnetAddResyncInterval`` (seconds, beyond upstream) the command is re-run for every
remote lease at that interval, which repairs such drift as the other backends' reconcile does; the commands
must then be idempotent (``ip route replace``, not ``add``).
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

from flannel.backend.backend_config import int_key, read_section, str_key
from flannel.backend.base import BackendContext, LeasedNetwork
from flannel.config import NetworkConfig
from flannel.errors import FlannelError
from flannel.gojson import compact
from flannel.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.retry import retry
from flannel.subnet.lease_guard import LeaseGuard
from flannel.subnet.lease_tracker import LeaseTracker
from flannel.subnet.manager import WatchResult

log = logging.getLogger(__name__)

SHELL = "/bin/sh"
COMMAND_TIMEOUT = 30.0
"""Seconds a command may run before it is killed (with its whole process group) and counted as failed."""
SUBNET_COMMAND_ATTEMPTS = 3
"""Tries of a failing SubnetAdd/RemoveCommand (back-off 0.1 s, 0.2 s, plus jitter) before it is logged."""
_COMMANDS = ["PreStartupCommand", "PostStartupCommand", "SubnetAddCommand", "SubnetRemoveCommand"]
RESYNC_KEY = "SubnetAddResyncInterval"
_IGNORED = {"shutdowncommand": "is not implemented (as upstream)"}


class CommandError(FlannelError):
    """A command exited non-zero, timed out or could not be started."""


@dataclass(frozen=True)
class ExtensionConfig:
    """The four commands (an empty string means "none") and the opt-in resync of SubnetAddCommand."""

    pre_startup: str = ""
    """Run before the lease; its stdout becomes BackendData (a JSON string)."""
    post_startup: str = ""
    """Run once the lease is held."""
    subnet_add: str = ""
    """Run for each remote lease added (or changed)."""
    subnet_remove: str = ""
    """Run for each remote lease removed."""
    resync_interval: int = 0
    """Seconds between re-runs of SubnetAddCommand for every remote lease; 0 (the default) never re-runs it."""


def parse_extension_config(backend: Mapping[str, Any]) -> ExtensionConfig:
    """Read the ``Backend`` object (keys case-insensitive); every command must be a string."""
    raw = read_section("extension", backend, [*_COMMANDS, RESYNC_KEY], ignored=_IGNORED)
    values = {key: str_key(raw, key).strip() for key in _COMMANDS}
    cfg = ExtensionConfig(pre_startup=values["PreStartupCommand"], post_startup=values["PostStartupCommand"],
                          subnet_add=values["SubnetAddCommand"], subnet_remove=values["SubnetRemoveCommand"],
                          resync_interval=int_key(raw, RESYNC_KEY, 0, lo=0))
    if cfg.resync_interval and not cfg.subnet_add:
        log.warning("extension backend: Backend.%s is set but there is no SubnetAddCommand to re-run", RESYNC_KEY)
    return cfg


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
        network = ExtensionNetwork(lease, ext.mtu, self.cfg)
        network.tracker.guard = LeaseGuard.for_network(config, lease, "extension")
        return network


class ExtensionNetwork(LeasedNetwork):
    """Runs SubnetAddCommand / SubnetRemoveCommand for remote leases, in event order (and, opted in, resyncs)."""

    def __init__(self, lease: Lease, mtu: int, cfg: ExtensionConfig, timeout: float = COMMAND_TIMEOUT) -> None:
        super().__init__(lease, mtu)
        self.cfg = cfg
        self.timeout = timeout
        self.tracker = LeaseTracker(lease)
        self.applied: dict[str, Lease] = {}
        """The leases SubnetAddCommand last succeeded for, by key."""
        self.failed: dict[str, Lease] = {}
        """Current remote leases whose SubnetAddCommand failed: a resync retries them."""
        self._lock = asyncio.Lock()
        """Held while a command runs, so a resync never interleaves with an event's remove-then-add."""

    async def run(self, results: AsyncIterator[WatchResult]) -> None:
        async with asyncio.TaskGroup() as tg:
            resync = None
            if self.cfg.resync_interval > 0 and self.cfg.subnet_add:
                resync = tg.create_task(self._resync_loop(), name="extension-resync")
            async for result in results:
                await self.handle_events(self.tracker.apply(result))
            if resync is not None:  # the watch ended: so does the network
                resync.cancel()

    async def handle_events(self, events: list[LeaseEvent]) -> None:
        """Run the commands an event calls for; an unchanged re-add (a renewal) runs nothing."""
        async with self._lock:
            for ev in events:
                await self._handle(ev)

    async def _handle(self, ev: LeaseEvent) -> None:
        lease = ev.lease
        if lease.attrs.backend_type != "extension":
            if ev.type is EventType.ADDED:
                log.info("ignoring non-extension lease %s (BackendType %r)", lease.key, lease.attrs.backend_type)
            self.failed.pop(lease.key, None)
            old = self.applied.pop(lease.key, None)
            if old is not None:  # it switched backends: what we added for it must go
                await self._command("SubnetRemoveCommand", self.cfg.subnet_remove, old)
            return
        old = self.applied.get(lease.key)
        if ev.type is EventType.REMOVED:
            self.applied.pop(lease.key, None)
            self.failed.pop(lease.key, None)
            await self._command("SubnetRemoveCommand", self.cfg.subnet_remove, old or lease)
            return
        if old is not None and (old.subnet, old.ipv6_subnet, old.attrs) == (
                lease.subnet, lease.ipv6_subnet, lease.attrs):
            return
        if old is not None:  # changed (e.g. a new public IP): undo the old one first
            await self._command("SubnetRemoveCommand", self.cfg.subnet_remove, old)
            self.applied.pop(lease.key, None)
        self.failed.pop(lease.key, None)
        if await self._command("SubnetAddCommand", self.cfg.subnet_add, lease):
            self.applied[lease.key] = lease
        elif _decodable(lease):  # an undecodable lease is skipped until it changes, not retried
            self.failed[lease.key] = lease

    async def resync(self) -> int:
        """Re-run SubnetAddCommand once for every remote lease added (and each whose add failed); returns failures.

        Serial, one lease at a time under the lock; a lease removed or changed meanwhile is left to its event.
        """
        failures = 0
        for key, lease in [*self.applied.items(), *self.failed.items()]:
            async with self._lock:
                if self.applied.get(key) is not lease and self.failed.get(key) is not lease:
                    continue
                try:
                    output = await self._run("SubnetAddCommand", self.cfg.subnet_add, lease, attempts=1)
                except (CommandError, ValueError) as exc:
                    log.warning("resync: SubnetAddCommand for lease %s failed: %s", lease.key, exc)
                    failures += 1
                    continue
                log.debug("resync: SubnetAddCommand for lease %s done%s", lease.key, f": {output}" if output else "")
                if self.failed.pop(key, None) is not None:
                    log.info("resync: SubnetAddCommand for lease %s succeeded after an earlier failure", key)
                self.applied[key] = lease
        return failures

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.resync_interval)
            await self.resync()

    async def _command(self, name: str, command: str, lease: Lease) -> bool:
        """Run one per-lease command; log and swallow any failure. True when it succeeded (or there is none)."""
        if not command:
            return True
        try:
            output = await self._run(name, command, lease, attempts=SUBNET_COMMAND_ATTEMPTS)
        except ValueError as exc:
            log.warning("skipping %s for lease %s: %s", name, lease.key, exc)
            return False
        except CommandError as exc:
            log.error("%s for lease %s failed: %s", name, lease.key, exc)
            return False
        log.info("%s for lease %s done%s", name, lease.key, f": {output}" if output else "")
        return True

    async def _run(self, name: str, command: str, lease: Lease, attempts: int) -> str:
        """The command for ``lease`` with its variables and stdin; ``ValueError`` for unusable BackendData."""
        stdin = backend_stdin(lease)
        env = lease_env(lease)
        return await retry(lambda: run_command(name, command, env, stdin, self.timeout), attempts=attempts,
                           what=f"{name} for {lease.key}", retry_on=CommandError)


def _decodable(lease: Lease) -> bool:
    try:
        backend_stdin(lease)
    except ValueError:
        return False
    return True
