"""The start-up steps of flanneld that touch the outside world: datastore client, sysctls, interface, file.

Kept apart from ``main`` so that each step has one place, one error message and can be read on its own.
"""

from __future__ import annotations

import logging
import os

from flannel.backend.base import ExternalInterface, Network
from flannel.config import NetworkConfig
from flannel.daemon.flags import Options
from flannel.errors import FlannelError
from flannel.subnet.manager import SubnetManager
from flannel.subnetenv import SubnetEnv, read_previous, write_subnet_env

log = logging.getLogger(__name__)


def build_subnet_manager(opts: Options) -> SubnetManager:
    """The Kubernetes subnet manager with ``--kube-subnet-mgr``; otherwise the etcd one, remembering the
    previous subnets from the old subnet file (spec §6.3). An invalid annotation prefix is fatal, as upstream."""
    if opts.kube_subnet_mgr:
        return build_kube_subnet_manager(opts)
    from flannel.subnet.etcd_choice import etcd_client_class
    from flannel.subnet.etcd_manager import EtcdSubnetManager  # each mode loads only its own client (gRPC: ~10 MiB)
    from flannel.subnet.etcd_options import CLIENT_ENV, EtcdStoreOptions

    if opts.etcd_password or opts.etcd_keyfile:
        protect_credentials("the etcd password" if opts.etcd_password else "the etcd client key")
    previous = read_previous(opts.subnet_file)
    client = etcd_client_class(os.environ)
    log.info("etcd client: %s", os.environ.get(CLIENT_ENV) or "gateway (the default; FLANNEL_ETCD_CLIENT=grpc: gRPC)")
    store = client(EtcdStoreOptions.from_flag(
        opts.etcd_endpoints,
        keyfile=opts.etcd_keyfile,
        certfile=opts.etcd_certfile,
        cafile=opts.etcd_cafile,
        username=opts.etcd_username,
        password=opts.etcd_password,
    ))
    return EtcdSubnetManager(
        store,
        prefix=opts.etcd_prefix,
        previous_subnet=previous.subnet,
        previous_ipv6_subnet=previous.ipv6_subnet,
        renew_margin_minutes=opts.subnet_lease_renew_margin,
    )


def build_kube_subnet_manager(opts: Options) -> SubnetManager:
    """The client from ``--kube-api-url``/``--kubeconfig-file`` (else in-cluster), and the manager."""
    from flannel.kube.client import KubeClient
    from flannel.kube.loading import load_client_config
    from flannel.subnet.kube_annotations import annotation_names
    from flannel.subnet.kube_manager import KubeManagerOptions, KubeSubnetManager

    names = annotation_names(opts.kube_annotation_prefix)
    client_config = load_client_config(opts.kube_api_url, opts.kubeconfig_file, os.environ)
    log.info("kube mode: API server %s (%s)", client_config.server, client_config.source)
    if client_config.token or client_config.token_file or client_config.password or client_config.key_data \
            or client_config.key_file:
        protect_credentials("the API server credentials")
    options = KubeManagerOptions.from_environ(opts.net_config_path, names, opts.set_node_network_unavailable,
                                              os.environ)
    return KubeSubnetManager(KubeClient(client_config), options)


def protect_credentials(what: str) -> None:
    """Mark the process non-dumpable now that it holds ``what``: no core file with the credential in it.

    Also means ptrace and ``/proc/<pid>/{environ,mem}`` need ``CAP_SYS_PTRACE`` (docs/security.md).
    """
    from flannel.secret import make_non_dumpable

    if make_non_dumpable():
        log.info("holding %s: process marked non-dumpable (no core dumps; debuggers need CAP_SYS_PTRACE)", what)


def check_br_netfilter(config: NetworkConfig) -> None:
    """Upstream refuses to start without br_netfilter's sysctls (unless nftables mode is on)."""
    if config.enable_nftables:
        return
    needed = []
    if config.enable_ipv4:
        needed.append("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if config.enable_ipv6:
        needed.append("/proc/sys/net/bridge/bridge-nf-call-ip6tables")
    for path in needed:
        if not os.path.exists(path):
            raise FlannelError(f"{path} does not exist: load the br_netfilter kernel module (modprobe br_netfilter)")


def select_external(opts: Options, config: NetworkConfig) -> ExternalInterface:
    """Pick the external interface per spec §9."""
    from flannel.iface import IfaceOptions, select_interface
    from flannel.netlink import Netlink

    with Netlink() as nl:
        return select_interface(nl, IfaceOptions(
            ifaces=tuple(opts.iface),
            regexes=tuple(opts.iface_regex),
            can_reach=opts.iface_can_reach,
            public_ip=opts.public_ip,
            public_ipv6=opts.public_ipv6,
            ipv4=config.enable_ipv4,
            ipv6=config.enable_ipv6,
        ))


def write_env(opts: Options, config: NetworkConfig, network: Network) -> bool:
    """Write subnet.env; like upstream, a failure is logged and flanneld carries on, unready. True if written."""
    lease = network.lease
    env = SubnetEnv(
        network=config.network if config.enable_ipv4 else None,
        subnet=lease.subnet if config.enable_ipv4 else None,
        ipv6_network=config.ipv6_network if config.enable_ipv6 else None,
        ipv6_subnet=lease.ipv6_subnet if config.enable_ipv6 else None,
        mtu=network.mtu,
        ipmasq=opts.ip_masq,
    )
    try:
        write_subnet_env(opts.subnet_file, env)
    except OSError as exc:
        log.warning("failed to write subnet file %s: %s (flanneld runs on, but never reports ready)",
                    opts.subnet_file, exc)
        return False
    return True
