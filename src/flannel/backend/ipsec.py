"""The ipsec backend (spec §10.7): IKEv2 by strongSwan's charon, ESP by the kernel, policies by flanneld.

Per remote lease, flanneld installs three XFRM policies (out, in, fwd; ESP tunnel between the public IPs,
reqid 11), loads the PSK for the peer's public IP and loads one charon connection whose CHILD_SA carries the
same reqid; charon negotiates and installs the SAs. No device, no route: the kernel's policy lookup sends pod
traffic for a peer's subnet through ESP. The pods' MTU is the external MTU less the ESP overhead.

Beyond upstream, the periodic reconcile compares the kernel and charon with the leases: it restores policies
deleted by hand, sweeps reqid-11 policies for subnets no lease has (left by an earlier run or a lease that
went while flanneld was down), and loads again a connection or key that charon lost (unloaded by hand, or
charon restarted after a crash). A removed lease's connection, key and policies all go (upstream leaks keys).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from ipaddress import IPv4Address, IPv4Network

from flannel import metrics
from flannel.backend.base import BackendContext, LeasedNetwork, require_ipv4_only
from flannel.backend.ipsec_charon import VICI_PATH, CharonError, CharonProcess, Vici, find_charon
from flannel.backend.ipsec_config import (
    LIBIPSEC_DEVICE,
    REQID,
    IPsecConfig,
    Peer,
    connection,
    ipsec_mtu,
    parse_ipsec_config,
    shared_key,
    shared_key_id,
)
from flannel.backend.reconcile_loop import ReconcileLoop
from flannel.backend.route_plane import is_peer_subnet
from flannel.backoff import RepeatLimiter, repeats
from flannel.config import NetworkConfig
from flannel.errors import FlannelError, LeaseDecodeError
from flannel.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.netlink import Netlink, NetlinkError
from flannel.netlink.xfrm import Xfrm, XfrmPolicy
from flannel.readiness import READINESS
from flannel.subnet.lease_guard import LeaseGuard
from flannel.subnet.lease_tracker import LeaseTracker
from flannel.subnet.manager import WatchResult

log = logging.getLogger(__name__)

BACKEND_TYPE = "ipsec"
CHARON = "charon"
"""Readiness condition: charon cannot be reached over VICI, so new peers cannot be keyed."""
CONNECT_RETRY = 1.0
"""Seconds between attempts to reach charon and load this node's key (upstream's one second)."""
START_GRACE = 5.0
"""Seconds charon gets to open its VICI socket before a failure to reach it is reported."""
KEY_PREFIX = "flannel-"


class IPsecBackend:
    """Checks the config, acquires the lease; the network starts charon and does the rest."""

    def __init__(self, ctx: BackendContext, config: NetworkConfig) -> None:
        self.cfg = parse_ipsec_config(config.backend)
        require_ipv4_only(BACKEND_TYPE, ctx, config)
        self.ctx = ctx

    async def register_network(self, config: NetworkConfig) -> IPsecNetwork:
        ext = self.ctx.ext_iface
        charon = find_charon()  # before the lease: without charon there is nothing to run (fatal, as upstream)
        log.info("IPsec config: UDPEncap=%s ESPProposal=%s", self.cfg.udp_encap, self.cfg.esp_proposal)
        attrs = LeaseAttrs(public_ip=ext.ext_addr or IPv4Address(0), backend_type=BACKEND_TYPE)
        lease = await self.ctx.subnet_manager.acquire_lease(attrs)
        if lease.subnet is None or config.network is None:
            raise FlannelError(f"lease {lease.key} has no IPv4 subnet")
        mtu = ipsec_mtu(ext.mtu, self.cfg.udp_encap, self.cfg.userspace_esp)
        network = IPsecNetwork(lease, mtu, self.cfg, charon, config.network, self.ctx.reconcile_interval)
        network.tracker.guard = LeaseGuard.for_network(config, lease, BACKEND_TYPE)
        return network


class IPsecNetwork(LeasedNetwork):
    """charon's lifetime, the peers wanted by lease, and the loop that keeps kernel and charon in line."""

    def __init__(self, lease: Lease, mtu: int, cfg: IPsecConfig, charon_path: str, cluster: IPv4Network,
                 reconcile_interval: float, netns: str | None = None, vici_path: str | None = None) -> None:
        super().__init__(lease, mtu)
        assert lease.subnet is not None
        self.cfg = cfg
        self.cluster = cluster
        self.local_ip = lease.attrs.public_ip
        self.local_subnet = lease.subnet
        self.peers: dict[str, Peer] = {}
        """Wanted peer by lease key."""
        self.tracker = LeaseTracker(lease)
        self.synced = False
        self.netns = netns
        self.xfrm = Xfrm(netns)
        self.vici = Vici(vici_path or VICI_PATH)
        self.loop = ReconcileLoop(self.reconcile, reconcile_interval)
        self.charon = CharonProcess(charon_path, on_restart=self.loop.kick, vici_path=vici_path or VICI_PATH)
        self._quiet = RepeatLimiter(60.0)

    # -- running ------------------------------------------------------------------------------------

    async def run(self, results: AsyncIterator[WatchResult]) -> None:
        metrics.KNOWN_PEERS.set_function(lambda: len(self.tracker.leases))
        try:
            await self.charon.start()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.charon.supervise(), name="ipsec-charon")
                await self.load_own_key()
                tg.create_task(self.loop.run(), name="ipsec-reconcile")
                async for result in results:
                    await self.handle_events(self.tracker.apply(result))
                    if result.snapshot is not None and not self.synced:
                        self.synced = True
                        self.loop.kick()  # sweeps what no lease wants, now that "not wanted" means stale
        finally:
            await self.charon.stop()
            self.vici.close()
            self.xfrm.close()

    async def load_own_key(self) -> None:
        """Load the PSK for this node's own IP, every second until charon takes it (upstream's start).

        charon needs a moment to open its socket: failures in the first ``START_GRACE`` seconds are not reported.
        """
        started = time.monotonic()
        while True:
            try:
                await self.vici.load_shared(shared_key(self.local_ip, self.cfg.psk), str(self.local_ip))
            except CharonError as exc:
                if time.monotonic() - started < START_GRACE:
                    log.debug("charon not ready yet: %s", exc)
                    await asyncio.sleep(CONNECT_RETRY)
                    continue
                READINESS.problem(CHARON, str(exc))
                held = self._quiet.check(str(exc))
                if held is not None:
                    log.warning("cannot load this node's IKE key yet, retrying every %gs: %s%s", CONNECT_RETRY,
                                exc, repeats(held))
                await asyncio.sleep(CONNECT_RETRY)
                continue
            READINESS.resolved(CHARON)
            self._quiet.reset()
            log.info("loaded the IKE shared key for %s", self.local_ip)
            if self.cfg.userspace_esp:
                await self.check_libipsec()
            return

    async def check_libipsec(self) -> None:
        """With UserspaceESP, say so loudly when charon lacks kernel-libipsec: its SAs would go to a kernel
        that (presumably) has no ESP, and with no kernel policies either, pod traffic would leave unencrypted."""
        try:
            plugins = await self.vici.plugins()
        except CharonError as exc:
            log.warning("cannot list charon's plugins: %s", exc)
            return
        if "kernel-libipsec" in plugins:
            log.info("UserspaceESP: charon does ESP in userspace (kernel-libipsec)")
            self.check_libipsec_mtu()
        else:
            log.error("UserspaceESP is set but charon has no kernel-libipsec plugin (it loaded: %s); load it in "
                      "strongswan.conf (Debian: libcharon-extra-plugins)", " ".join(sorted(plugins)))

    def check_libipsec_mtu(self) -> None:
        """FLANNEL_MTU assumed ipsec0's MTU of strongSwan 5.9 (1400): say so when charon's device has less."""
        try:
            with Netlink(self.netns) as nl:
                link = nl.link_by_name(LIBIPSEC_DEVICE)
        except NetlinkError as exc:
            log.warning("cannot read %s: %s", LIBIPSEC_DEVICE, exc)
            return
        if link is None:
            log.warning("UserspaceESP: charon made no %s device", LIBIPSEC_DEVICE)
        elif link.mtu < self.mtu:
            log.error("UserspaceESP: %s has MTU %d, below FLANNEL_MTU %d: pods' largest packets will not pass",
                      LIBIPSEC_DEVICE, link.mtu, self.mtu)
        else:
            log.info("UserspaceESP: %s has MTU %d, FLANNEL_MTU is %d", LIBIPSEC_DEVICE, link.mtu, self.mtu)

    # -- lease events -------------------------------------------------------------------------------

    def peer_for(self, lease: Lease) -> Peer | None:
        """The tunnel a lease needs; None for none; ``LeaseDecodeError`` for a lease that must be skipped."""
        public = lease.attrs.public_ip
        if lease.subnet is None or public is None or int(public) == 0:
            return None
        if not is_peer_subnet(lease.subnet, self.cluster, self.local_subnet):
            raise LeaseDecodeError(f"subnet {lease.subnet} is not a peer subnet of the network {self.cluster}")
        return Peer(self.local_ip, self.local_subnet, public, lease.subnet)

    async def handle_events(self, events: Sequence[LeaseEvent]) -> None:
        """Add, change or remove peers. A failure is logged and left to the reconcile, which is kicked."""
        failed = False
        for ev in events:
            lease = ev.lease
            (metrics.LEASE_ADDED if ev.type is EventType.ADDED else metrics.LEASE_REMOVED).inc()
            foreign = ev.type is EventType.ADDED and lease.attrs.backend_type != BACKEND_TYPE
            if foreign:
                log.info("ignoring non-ipsec lease %s (BackendType %r)", lease.key, lease.attrs.backend_type)
            new = None
            if ev.type is EventType.ADDED and not foreign:
                try:
                    new = self.peer_for(lease)
                except LeaseDecodeError as exc:
                    log.warning("skipping lease %s: %s (its current tunnel is left as it is)", lease.key, exc)
                    continue
            old = self.peers.get(lease.key)
            try:
                if old is not None and old != new:
                    self.peers.pop(lease.key)
                    await self.remove_peer(old)
                if new is not None:
                    self.peers[lease.key] = new
                    await self.add_peer(new)
            except (CharonError, NetlinkError) as exc:
                log.warning("lease %s: %s; the reconcile will retry", lease.key, exc)
                failed = True
        metrics.EVENT_LATENCY.programmed()
        if failed:
            self.loop.kick()

    def kernel_policies(self, peer: Peer) -> list[XfrmPolicy]:
        """The kernel policies a peer needs: none with UserspaceESP (they would catch the traffic that
        kernel-libipsec's routes send to its TUN device, and the kernel has no SA for it)."""
        return [] if self.cfg.userspace_esp else peer.policies()

    async def add_peer(self, peer: Peer) -> None:
        """Policies, then the key, then the connection (upstream's order)."""
        for policy in self.kernel_policies(peer):
            self.xfrm.update_policy(policy)
            log.info("%s", policy.describe("update"))
        await self.vici.load_shared(shared_key(peer.remote_ip, self.cfg.psk), str(peer.remote_ip))
        await self.vici.load_conn(connection(peer, self.cfg))
        log.info("loaded connection %s", peer.conn_name)

    async def remove_peer(self, peer: Peer) -> None:
        """Unload the connection, then the key (unless another peer shares the IP), then delete the policies.

        Every step is tried; the first failure is raised after the others ran.
        """
        errors: list[Exception] = []
        try:
            await self.vici.unload_conn(peer.conn_name)
            log.info("unloaded connection %s", peer.conn_name)
        except CharonError as exc:
            errors.append(exc)
        if all(p.remote_ip != peer.remote_ip for p in self.peers.values()):
            try:
                await self.vici.unload_shared(shared_key_id(peer.remote_ip))
            except CharonError as exc:
                errors.append(exc)
        for policy in self.kernel_policies(peer):
            try:
                if self.xfrm.delete_policy(policy):
                    log.info("%s", policy.describe("delete"))
            except NetlinkError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    # -- reconcile ----------------------------------------------------------------------------------

    async def reconcile(self) -> int:
        """Repair the kernel's policies and charon's keys and connections; returns the repairs made."""
        if not self.synced:
            return 0  # until the first snapshot, "not wanted" does not mean "stale"
        return self.reconcile_policies() + await self.reconcile_charon()

    def reconcile_policies(self) -> int:
        """Restore missing or changed policies of wanted peers; delete reqid-11 policies nobody wants."""
        want = {
            pol.key: pol for peer in self.peers.values() for pol in self.kernel_policies(peer)}
        have = {pol.key: pol for pol in self.xfrm.policies() if pol.reqid == REQID}
        repairs = 0
        for key, pol in want.items():
            if have.get(key) != pol:
                log.warning("%s: restoring it", pol.describe("update") + (" (was missing)" if key not in have
                                                                             else " (was changed)"))
                self.xfrm.update_policy(pol)
                repairs += 1
        for key, pol in have.items():
            if key not in want:
                log.warning("%s: no lease wants this reqid-%d policy", pol.describe("delete"), REQID)
                self.xfrm.delete_policy(pol)
                repairs += 1
        return repairs

    async def reconcile_charon(self) -> int:
        """Load the keys and connections charon lacks; unload flannel's ones that no lease wants."""
        repairs = 0
        wanted_keys = {shared_key_id(self.local_ip): self.local_ip}
        wanted_keys.update({shared_key_id(p.remote_ip): p.remote_ip for p in self.peers.values()})
        loaded_keys = await self.vici.shared_ids()
        for key_id, owner in wanted_keys.items():
            if key_id not in loaded_keys:
                log.warning("charon lacks the IKE key for %s; loading it again", owner)
                await self.vici.load_shared(shared_key(owner, self.cfg.psk), str(owner))
                repairs += 1
        for key_id in loaded_keys - wanted_keys.keys():
            if key_id.startswith(KEY_PREFIX):
                log.warning("unloading IKE key %s: no lease has its IP", key_id)
                await self.vici.unload_shared(key_id)
                repairs += 1
        wanted = {p.conn_name: p for p in self.peers.values()}
        loaded = await self.vici.conn_names()
        for name, peer in wanted.items():
            if name not in loaded:
                log.warning("charon lacks connection %s; loading it again", name)
                await self.vici.load_conn(connection(peer, self.cfg))
                repairs += 1
        for name in loaded - wanted.keys():
            if name.startswith(f"{self.local_ip}-{self.local_subnet}-"):
                log.warning("unloading connection %s: no lease wants it", name)
                await self.vici.unload_conn(name)
                repairs += 1
        READINESS.resolved(CHARON)
        return repairs
