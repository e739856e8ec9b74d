"""Reading the node for ``flannelctl doctor``: ``/proc/sys``, ``/sys``, netlink, iptables and the store's clock,
into the ``NodeState`` the pure checks take (``read_node``).

Everything is read in the caller's network namespace (run it where flanneld runs, or with ``ip netns exec``).
Only iptables needs root (its save tools open a netlink socket with CAP_NET_ADMIN), so those are not run
without it and ``doctor_checks.run_checks`` says which checks that skips; the rest reads what any user may.
Tools that may be missing (``ethtool``, ``modinfo``, the iptables back ends) are not required: the checksum
offload is asked of the kernel with the ``SIOCETHTOOL`` ioctl ethtool itself uses, and module presence comes
from ``/sys/module`` and ``/lib/modules``.
"""

from __future__ import annotations

import array
import asyncio
import email.utils
import fcntl
import http.client
import os
import platform
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network, ip_network
from pathlib import Path
from urllib.parse import urlsplit

from flannel.config import NetworkConfig
from flannel.ctl.doctor_checks import MODULES, NodeState
from flannel.daemon.flags import Options
from flannel.netlink import Netlink, NetlinkError
from flannel.secret import redact_urls

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
COMMAND_TIMEOUT = 10.0
PROBE_ADDRESS = IPv4Address("203.0.113.1")
"""A TEST-NET address: ``route get`` of it names the interface of the default route (nothing is sent)."""

SYSCTLS = ("net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter", "net.bridge.bridge-nf-call-iptables")


def read_sysctls(names: Iterable[str], root: Path = Path("/proc/sys")) -> dict[str, str]:
    """The values of the named sysctls that exist (``net.ipv4.conf.flannel/1.rp_filter`` for dotted devices)."""
    out = {}
    for name in names:
        try:
            out[name] = (root / name.replace(".", "/")).read_text().strip()
        except OSError:
            continue
    return out


def run(argv: list[str]) -> str | None:
    """A tool's stdout; None when it is not installed or fails."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def tx_checksum(device: str) -> bool | None:
    """The device's tx checksum offload, asked with ethtool's own ioctl; None when the kernel does not say."""
    value = array.array("I", [ETHTOOL_GTXCSUM, 0])
    addr, _ = value.buffer_info()
    ifreq = struct.pack("16sP", device.encode()[:15], addr)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
        except OSError:
            return None
    return bool(value[1])


def module_state(module: str, release: str, sys_module: Path = Path("/sys/module"),
                 lib_modules: Path = Path("/lib/modules")) -> str:
    """``loaded``, ``available`` (builtin or on disk), ``absent``, or ``unknown`` (no module tree to look in)."""
    if (sys_module / module).exists():
        return "loaded"
    tree = lib_modules / release
    if not tree.is_dir():
        return "unknown"
    for listing in ("modules.builtin", "modules.dep"):
        try:
            text = (tree / listing).read_text()
        except OSError:
            continue
        if f"/{module}.ko" in text:
            return "available"
    return "absent"


def bridges(sys_net: Path = Path("/sys/class/net")) -> tuple[str, ...]:
    try:
        return tuple(sorted(p.name for p in sys_net.iterdir() if (p / "bridge").is_dir()))
    except OSError:
        return ()


def cni_files(directory: str) -> tuple[dict[str, str] | None, str]:
    """File name to text (at most 64 KiB each) of the CNI directory; None and why when it cannot be listed."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return {}, ""
    except OSError as exc:
        return None, f"cannot list {directory}: {exc.strerror}"
    out = {}
    for name in names:
        try:
            with open(os.path.join(directory, name), "rb") as f:
                out[name] = f.read(64 << 10).decode("utf-8", "replace")
        except OSError:
            continue  # a subdirectory, or unreadable: runtimes skip it too
    return out, ""


def underlay(nl: Netlink, device: str | None, iface: str | None) -> tuple[str | None, int | None]:
    """The external interface and its MTU: ``--iface`` when given, else the tunnel's underlay, else the
    interface of the default route."""
    try:
        if iface:  # --iface: a name or one of the interface's addresses, as flanneld takes it
            link = nl.link_by_name(iface)
            if link is None:
                index = next((a.index for a in nl.addresses() if str(a.address) == iface), 0)
                link = nl.link_by_index(index) if index else None
            return (link.name, link.mtu) if link is not None else (iface, None)
        index = 0
        tunnel = nl.link_by_name(device) if device else None
        info = tunnel.vxlan or tunnel.iptun if tunnel is not None else None
        if info is not None:
            index = info.underlay_index
            if not index and info.local is not None:
                index = next((a.index for a in nl.addresses() if a.address == info.local), 0)
        if not index:
            route = nl.route_get(PROBE_ADDRESS)
            index = route.oif or 0 if route is not None else 0
        link = nl.link_by_index(index) if index else None
    except (NetlinkError, OSError):
        return None, None
    return (link.name, link.mtu) if link is not None else (None, None)


def device_exists(nl: Netlink, device: str | None) -> bool:
    try:
        return device is not None and nl.link_by_name(device) is not None
    except (NetlinkError, OSError):
        return False


def _date_skew(date: str, sent: float, received: float) -> float | None:
    """Server time minus ours from an HTTP ``Date`` header (one-second resolution, so under 1s is noise)."""
    try:
        server = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None
    skew = server + 0.5 - (sent + received) / 2
    return 0.0 if abs(skew) <= 1.0 + (received - sent) / 2 else skew


def etcd_clock_skew(endpoint: str, cafile: str, certfile: str, keyfile: str, timeout: float) -> float | None:
    """etcd's clock against ours: the ``Date`` header of its HTTP ``/version`` (served on the client port)."""
    url = urlsplit(endpoint)
    host, port = url.hostname or "127.0.0.1", url.port or 2379
    if url.scheme == "https":
        ctx = ssl.create_default_context(cafile=cafile or None)
        if certfile:
            ctx.load_cert_chain(certfile, keyfile or None)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        sent = time.time()
        conn.request("GET", "/version")
        resp = conn.getresponse()
        resp.read(4096)
        return _date_skew(resp.getheader("Date") or "", sent, time.time())
    except (OSError, http.client.HTTPException, ssl.SSLError):
        return None
    finally:
        conn.close()


async def kube_clock_skew(api_url: str, kubeconfig: str, timeout: float) -> tuple[float | None, str]:
    """The API server's clock against ours, from the ``Date`` header of ``GET /version``; and its address."""
    from flannel.errors import ConfigError, DatastoreUnavailableError
    from flannel.kube.client import KubeClient
    from flannel.kube.errors import KubeApiError
    from flannel.kube.loading import load_client_config

    try:
        cfg = load_client_config(api_url, kubeconfig, os.environ)
    except (ConfigError, OSError):  # reported by the commands that need the API
        return None, api_url or kubeconfig
    try:
        async with asyncio.timeout(timeout), KubeClient(cfg, request_timeout=timeout) as client:
            sent = time.time()
            # The client's public calls return bodies only; the header is the point here.
            head = client._head("GET", "/version", None, "", 0)
            response, _ = await client._exchange(head, b"")
            return _date_skew(response.headers.get("date", ""), sent, time.time()), cfg.server
    except (OSError, TimeoutError, KubeApiError, DatastoreUnavailableError):  # unreachable: status says why
        return None, cfg.server


def device_name(config: NetworkConfig) -> str | None:
    """The backend's own device, named as the backend names it."""
    kind = config.backend_type.lower()
    if kind == "vxlan":
        from flannel.backend.vxlan_config import parse_vxlan_config
        from flannel.errors import ConfigError

        try:
            return parse_vxlan_config(config.backend).device_name
        except ConfigError:
            return "flannel.1"
    return {"ipip": "flannel.ipip", "udp": "flannel0", "wireguard": "flannel-wg"}.get(kind)


def cluster_network(config: NetworkConfig | None, env: Mapping[str, str]) -> IPv4Network | None:
    """The config's ``Network``, or subnet.env's ``FLANNEL_NETWORK`` when the config could not be read."""
    if config is not None and config.network is not None:
        return config.network
    try:
        net = ip_network(env.get("FLANNEL_NETWORK", ""), strict=False)
    except ValueError:
        return None
    return net if isinstance(net, IPv4Network) else None


async def read_node(opts: Options, config: NetworkConfig | None, env: Mapping[str, str], cni_dir: str, is_root: bool,
                    timeout: float) -> NodeState:
    """Everything the checks look at, read from this node (in the caller's namespace); iptables only as root."""
    kind = config.backend_type.lower() if config is not None else None
    device = device_name(config) if config is not None else None
    iface = opts.iface[0] if opts.iface else None
    with Netlink() as nl:
        ext, ext_mtu = underlay(nl, device, iface)
        have_device = device_exists(nl, device)
    release = platform.release()
    bridge_names = bridges()
    ifaces = [i for i in (ext, device, *bridge_names) if i]
    names = [*SYSCTLS, *(f"net.ipv4.conf.{i.replace('.', '/')}.rp_filter" for i in ifaces)]
    unreadable: dict[str, str] = {}
    files, why = cni_files(cni_dir)
    if why:
        unreadable["cni_config"] = why
    if kind is None:
        unreadable["kernel_module"] = unreadable["vxlan_checksum_offload"] = "the backend is unknown (no config)"
    enable_nft = bool(config is not None and config.enable_nftables)
    legacy = nft = None
    if is_root:
        legacy, nft = await asyncio.gather(asyncio.to_thread(run, ["iptables-legacy-save"]),
                                           asyncio.to_thread(run, ["iptables-nft-save"]))
        if legacy is None and nft is None:
            unreadable["forward_policy"] = unreadable["iptables_mixed"] = unreadable["frag_needed"] = \
                "neither iptables-legacy-save nor iptables-nft-save could be run"
    modules = {}
    module = MODULES.get(kind or "")
    if module is not None:
        modules[module] = "loaded" if have_device else module_state(module, release)
    if opts.kube_subnet_mgr:
        skew, source = await kube_clock_skew(opts.kube_api_url, opts.kubeconfig_file, timeout)
    else:
        source = opts.etcd_endpoints.split(",")[0]
        skew = await asyncio.to_thread(etcd_clock_skew, source, opts.etcd_cafile, opts.etcd_certfile,
                                       opts.etcd_keyfile, timeout)
    return NodeState(
        backend_type=kind, network=cluster_network(config, env), device=device if have_device else None,
        flannel_mtu=int(env["FLANNEL_MTU"]) if env.get("FLANNEL_MTU", "").isdigit() else None,
        underlay=ext, underlay_mtu=ext_mtu, sysctls=read_sysctls(names),
        bridge_nf_present=os.path.isdir("/proc/sys/net/bridge"), bridges=bridge_names,
        kube_mode=opts.kube_subnet_mgr, iptables_legacy=legacy, iptables_nft=nft,
        enable_nftables=enable_nft, forward_rules=opts.iptables_forward_rules, cni_dir=cni_dir, cni_files=files,
        module_state=modules, kernel_release=release,
        tx_checksum=tx_checksum(device) if have_device and device else None,
        clock_skew=skew, clock_source=redact_urls(source), unreadable=unreadable)
