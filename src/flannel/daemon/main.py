"""flanneld: wire the subnet manager, the backend and the subnet file together, then supervise them.

The start-up order follows upstream (spec §2) so that operators see the same behaviour: config first (retried
every second until valid), then the external interface, the backend (which acquires the lease), the traffic
rules, the subnet file, and finally the long-running subsystems.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from flannel import UPSTREAM_VERSION, __version__, metrics
from flannel.backoff import Backoff
from flannel.daemon import flags
from flannel.daemon.health import HealthServer, start_health_server
from flannel.daemon.lifecycle import install_signal_handlers, notify_systemd, supervise, until_stopped
from flannel.daemon.logs import setup_logging
from flannel.errors import (
    ConfigError,
    DatastoreUnavailableError,
    FlannelError,
    OutOfSubnetsError,
)

log = logging.getLogger("flanneld")
T = TypeVar("T")

CONFIG_RETRY_SECONDS = 1.0
BACKOFF_START, BACKOFF_CAP = 1.0, 4.0
"""Start-up retries: a node that starts while its datastore is away is ready within seconds of its return."""


def with_public_ip_overrides(opts: flags.Options, sm: object) -> flags.Options:
    """In kube mode the node's ``node-public-ip(v6)`` annotations replace ``--public-ip(v6)`` (spec §2 step 8).

    An optional capability of a subnet manager (the etcd one has no such override), hence ``getattr``.
    """
    overrides = getattr(sm, "public_ip_overrides", None)
    if overrides is None:
        return opts
    v4, v6 = overrides()
    if v4:
        log.info("using the node annotation's public IP %s instead of --public-ip", v4)
    if v6:
        log.info("using the node annotation's public IPv6 %s instead of --public-ipv6", v6)
    return dataclasses.replace(opts, public_ip=v4 or opts.public_ip, public_ipv6=v6 or opts.public_ipv6)


async def retry(what: str, fn: Callable[[], Awaitable[T]], stop: asyncio.Event, *, fixed: float | None = None) -> T:
    """Call ``fn`` until it succeeds: config errors every ``fixed`` seconds, datastore errors and a full
    subnet range with back-off.

    Every failure is logged with the reason; nothing else is touched meanwhile.
    """
    backoff = Backoff(BACKOFF_START, BACKOFF_CAP)
    while True:
        try:
            return await fn()
        except ConfigError as exc:
            log.error("%s: %s", what, exc)
            wait = fixed if fixed is not None else backoff.advance()
        except DatastoreUnavailableError as exc:
            wait = backoff.advance()
            log.error("%s: datastore unavailable: %s (retrying in %.0fs)", what, exc, wait)
        except OutOfSubnetsError as exc:
            # Waiting beats a crash loop: a subnet frees up when another node's lease expires or is deleted.
            wait = backoff.advance()
            log.error("%s: %s (retrying in %.0fs)", what, exc, wait)
        stopped, _ = await until_stopped(asyncio.sleep(wait), stop)
        if stopped:
            raise asyncio.CancelledError


async def run(opts: flags.Options) -> int:
    from flannel.backend.base import Backend, BackendContext
    from flannel.backend.registry import create_backend
    from flannel.config import NetworkConfig
    from flannel.daemon.startup import build_subnet_manager, check_br_netfilter, select_external, write_env

    stop = asyncio.Event()
    install_signal_handlers(stop)
    sm = build_subnet_manager(opts)
    source = getattr(sm, "config_key", "network config")

    async def load() -> tuple[NetworkConfig, Backend]:
        """The config and the backend built from it; a bad Backend section is a config error like any other."""
        config = await sm.get_network_config()
        if not (config.enable_ipv4 or config.enable_ipv6):
            raise FlannelError("none defined stack")
        check_br_netfilter(config)
        try:
            ext = select_external(with_public_ip_overrides(opts, sm), config)
        except ConfigError as exc:  # a bad --iface-regex or --public-ip: no config change can fix a flag
            raise FlannelError(str(exc)) from None
        if config.backend_missing:
            log.warning("%s has no Backend section: using upstream's default backend type 'udp'", source)
        try:
            return config, create_backend(BackendContext(sm, ext, float(opts.reconcile_interval)), config)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}", exc.field) from None

    health: HealthServer | None = None
    map_server: HealthServer | None = None
    try:
        if opts.healthz_port > 0:  # before the config and the lease, so /readyz says 503 meanwhile (spec §2)
            health = await start_health_server(opts.healthz_ip, opts.healthz_port)
        config, backend = await retry("failed to retrieve network config", load, stop, fixed=CONFIG_RETRY_SECONDS)
        metrics.set_build_info(config.backend_type)
        network = await retry("failed to register network", lambda: backend.register_network(config), stop)
        from flannel.traffic.keeper import TrafficSettings, start_traffic_rules

        # Traffic rules before subnet.env (spec §2 steps 11-13); a firewall failure is logged and retried, not fatal.
        traffic = await start_traffic_rules(TrafficSettings.from_flags(opts, config), config, network.lease)
        if write_env(opts, config, network):
            if health is not None:
                health.mark_ready()
            else:  # flannel_ready and the map's readiness, without a /readyz to serve it
                from flannel.readiness import READINESS

                READINESS.mark_started()
            log.info("flannel is ready (lease %s, MTU %d)", network.lease.key, network.mtu)
            notify_systemd()
        watch, observer = sm.watch_leases(), None
        if opts.map_port > 0 or opts.probe_interval > 0:  # the overlay probe and the network map (docs/map.md)
            from flannel.netmap import handler
            from flannel.netmap.observer import MAP_PROBE_INTERVAL, Observer
            from flannel.subnet.etcd_manager import EtcdSubnetManager

            etcd = sm if isinstance(sm, EtcdSubnetManager) else None  # kube mode: leases do not expire
            observer = Observer(config, network.lease, float(opts.probe_interval) or MAP_PROBE_INTERVAL,
                                lease_ttl=float(etcd.ttl) if etcd else 0.0,
                                ttl_lookup=etcd.remaining_ttl if etcd else None)
            watch = observer.tap(watch)
            if opts.map_port > 0:
                map_server = await start_health_server(opts.map_address, opts.map_port, handler(observer.document),
                                                       what="network map")
        subsystems = {
            "lease-watch": network.run(watch),
            "lease-renewal": sm.complete_lease(network.lease),
        }
        if observer is not None:
            subsystems["network-map"] = observer.run()
        if not traffic.plan.empty:
            subsystems["traffic-rules"] = traffic.keep()
        if opts.ip_blackhole_route:
            from flannel.daemon.blackhole import keep_blackholes

            own = [s for s in (network.lease.subnet if config.enable_ipv4 else None,
                               network.lease.ipv6_subnet if config.enable_ipv6 else None) if s is not None]
            subsystems["blackhole-route"] = keep_blackholes(own, float(max(opts.iptables_resync, 1)))  # 0 would spin
        code = await supervise(subsystems, stop)
    except asyncio.CancelledError:
        log.info("stopped during start-up")
        code = 0
    finally:
        if map_server is not None:
            await map_server.close()
        if health is not None:
            await health.close()
        await sm.close()
    if code == 0:
        log.info("Exiting cleanly...")
    return code


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit status."""
    try:
        opts = flags.parse_or_exit(sys.argv[1:] if argv is None else argv, os.environ,
                                   version_text=f"{UPSTREAM_VERSION} (flannel-py {__version__})")
    except SystemExit as exc:  # help, version, or a usage error (2): already printed
        return int(exc.code or 0)
    setup_logging(opts.v)
    for spec in flags.secrets_on_command_line(opts):
        log.warning("--%s is on the command line, where every local user can read it (/proc/%d/cmdline); set %s "
                    "in the environment instead (a Python process cannot blank its own argv)",
                    spec.name, os.getpid(), spec.env_var)
    try:
        flags.validate(opts)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    try:
        return asyncio.run(run(opts))
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    except FlannelError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 0
    except Exception:
        log.exception("unexpected error")
        return 1


def entry() -> None:
    """``flanneld`` console script."""
    sys.exit(main())
