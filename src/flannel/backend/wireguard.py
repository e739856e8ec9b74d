"""The wireguard backend (spec §10.6): devices, the node's key, lease registration.

Upstream's layout and lease data, with what its users miss (issue #11):

* an existing device is **adopted** when its key and port are ours (upstream deletes and recreates it, losing
  traffic on every restart); one with another key or port, or of another kind, is recreated as upstream does;
* the devices are **kept on shutdown** (upstream deletes them), so a stop-and-start loses no packet;
  ``FLANNEL_WIREGUARD_REMOVE_ON_SHUTDOWN=true`` restores upstream's removal;
* in single-device modes ``BackendV6Data.Port`` is the port actually listened on (``ListenPort``); upstream
  writes ``ListenPortV6`` there, where nothing listens;
* peers whose key belongs to no lease are removed, and a periodic reconcile repairs peers, addresses and
  routes changed by hand (``wireguard_network.py``).

The kernel or ``wireguard-go`` is chosen per device in ``wireguard_device.py``.
"""

from __future__ import annotations

import logging
import socket

from flannel.backend.base import BackendContext
from flannel.backend.wireguard_config import (
    DEVICE,
    DEVICE_V6,
    WG_OVERHEAD,
    Mode,
    NodeSettings,
    WireGuardConfig,
    node_settings,
    parse_wireguard_config,
)
from flannel.backend.wireguard_device import choose_driver, describe
from flannel.backend.wireguard_key import b64, load_or_create, public_key
from flannel.backend.wireguard_model import Network
from flannel.backend.wireguard_network import WireGuardNetwork
from flannel.backend.wireguard_peers import PeerRules
from flannel.backend.wireguard_setup import WGDevice, ensure_device, ensure_layer3
from flannel.backend.wireguard_uapi import UAPIError
from flannel.config import NetworkConfig
from flannel.errors import ConfigError, FlannelError
from flannel.gojson import compact
from flannel.lease import Lease, LeaseAttrs
from flannel.netlink import Netlink, NetlinkError

log = logging.getLogger(__name__)


class WireGuardBackend:
    """Reads the settings and the key, makes the devices, registers the lease."""

    def __init__(self, ctx: BackendContext, config: NetworkConfig) -> None:
        self.ctx = ctx
        self.cfg: WireGuardConfig = parse_wireguard_config(config.backend)
        try:
            self.node: NodeSettings = node_settings()
        except ConfigError as exc:  # not the network config: waiting for it to change would not help
            raise FlannelError(str(exc)) from None
        if self.cfg.mode is Mode.IPV4 and not config.enable_ipv4:
            raise ConfigError("Backend.Mode ipv4 needs IPv4 (EnableIPv4)", "Backend.Mode")
        if self.cfg.mode is Mode.IPV6 and not config.enable_ipv6:
            raise ConfigError("Backend.Mode ipv6 needs IPv6 (EnableIPv6)", "Backend.Mode")

    def _layout(self, config: NetworkConfig) -> list[tuple[str, int, tuple[int, ...], int]]:
        fams = tuple(f for f, on in ((socket.AF_INET, config.enable_ipv4), (socket.AF_INET6, config.enable_ipv6))
                     if on)
        if self.cfg.mode is not Mode.SEPARATE:
            return [(DEVICE, self.cfg.listen_port, fams, 0)]
        out: list[tuple[str, int, tuple[int, ...], int]] = []
        if config.enable_ipv4:
            out.append((DEVICE, self.cfg.listen_port, (socket.AF_INET,), 0))
        if config.enable_ipv6:
            out.append((DEVICE_V6, self.cfg.listen_port_v6, (socket.AF_INET6,), 1))
        return out

    async def register_network(self, config: NetworkConfig) -> WireGuardNetwork:
        ext = self.ctx.ext_iface
        mtu = (self.cfg.mtu or ext.mtu) - WG_OVERHEAD
        key = load_or_create(self.node.key_file)
        pub = b64(public_key(key))
        nl = Netlink()
        try:
            devices = []
            for name, port, fams, slot in self._layout(config):
                driver = choose_driver(nl, name, mtu, self.node.impl, self.node.wireguard_go)
                dev = WGDevice(name=name, port=port, families=fams, slot=slot, driver=driver, mtu=mtu)
                try:
                    await ensure_device(nl, dev, key)
                except (NetlinkError, UAPIError, OSError) as exc:
                    raise FlannelError(f"cannot set up {name} ({describe(driver.impl)}): {exc}") from None
                log.info("%s uses %s, listening on UDP port %d", name, describe(driver.impl), port)
                devices.append(dev)
            # Single-device modes: the v6 data names the port the one device listens on (see module docstring).
            port6 = self.cfg.listen_port_v6 if self.cfg.mode is Mode.SEPARATE else self.cfg.listen_port
            attrs = LeaseAttrs(
                public_ip=ext.ext_addr if config.enable_ipv4 and ext.ext_addr else LeaseAttrs().public_ip,
                public_ipv6=ext.ext_v6_addr if config.enable_ipv6 else None,
                backend_type="wireguard",
                backend_data=compact({"PublicKey": pub, "Port": self.cfg.listen_port}) if config.enable_ipv4
                else None,
                backend_v6_data=compact({"PublicKey": pub, "Port": port6}) if config.enable_ipv6 else None,
            )
            lease = await self.ctx.subnet_manager.acquire_lease(attrs)
            for dev in devices:
                dev.addresses = _own_addresses(dev, lease, config)
                ensure_layer3(nl, dev)
        except BaseException:
            nl.close()
            raise
        rules = PeerRules(mode=self.cfg.mode, port=self.cfg.listen_port, port_v6=self.cfg.listen_port_v6,
                          network=config.network if config.enable_ipv4 else None,
                          network_v6=config.ipv6_network if config.enable_ipv6 else None,
                          own=lease.subnet, own_v6=lease.ipv6_subnet, ext_v4=ext.ext_addr, ext_v6=ext.ext_v6_addr,
                          psk=self.cfg.psk, keepalive=self.cfg.keepalive)
        return WireGuardNetwork(nl, lease, mtu, devices, key, rules, config, self.ctx.reconcile_interval,
                                remove_on_shutdown=self.node.remove_on_shutdown)


def _own_addresses(dev: WGDevice, lease: Lease, config: NetworkConfig) -> list[tuple[object, Network]]:
    out: list[tuple[object, Network]] = []
    for fam in dev.families:
        subnet = lease.subnet if fam == socket.AF_INET else lease.ipv6_subnet
        cluster = config.network if fam == socket.AF_INET else config.ipv6_network
        if subnet is None or cluster is None:
            raise FlannelError(f"lease {lease.key} has no subnet for a family {dev.name} carries")
        out.append((subnet.network_address, cluster))
    return out
