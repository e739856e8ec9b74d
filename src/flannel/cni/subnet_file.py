"""The plugin's own reader of ``subnet.env`` (spec §13.2), stricter than the daemon's (§8.3).

flanneld reads its previous file back tolerantly, because a damaged file must never stop the daemon. The
plugin is the other way round: it is about to give a pod an address, so a value it cannot trust is an error
that names the file and key, in upstream's wording. Two upstream crashes become errors here: a known key with
no ``=`` on its line (Go indexes past the end of the split) and, like upstream, any invalid CIDR.

Two more departures make a broken node fail clearly instead of hanging or misconfiguring pods: the file must be
a regular file of at most 64 KiB (a FIFO used to hang the plugin, and so every pod start), and ``FLANNEL_MTU``
must be one a link can have (upstream passes ``0`` on to the bridge, which then keeps its default MTU).
"""

from __future__ import annotations

from flannel.atomicfile import read_bounded
from flannel.cni.cidr import Cidr, parse_network
from flannel.cni.errors import DECODING_FAILURE, TRY_AGAIN_LATER, CNIError, code_for_os_error, os_error_text
from flannel.cni.lite import dataclass

_KNOWN_KEYS = frozenset(
    ("FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU",
     "FLANNEL_IPMASQ")
)
_MAX_UINT32 = (1 << 32) - 1
MAX_FILE_BYTES = 64 * 1024
"""flanneld writes about 200 bytes; anything much bigger is not a subnet.env, and is not read whole."""
MIN_MTU_IPV4 = 68
"""RFC 791: every IPv4 link carries 68-byte datagrams; the kernel refuses a smaller MTU for IPv4."""
MIN_MTU_IPV6 = 1280
"""RFC 8200: the IPv6 minimum link MTU; below it the kernel disables IPv6 on the interface."""
MAX_MTU = 65535
"""The largest MTU of an Ethernet-like link (``ETH_MAX_MTU``), and of the bridge the delegate creates."""


@dataclass(frozen=True)
class SubnetEnv:
    """What flanneld advertises to the plugin: the cluster networks, this node's subnets, MTU and masquerading."""

    networks: tuple[Cidr, ...]
    """``FLANNEL_NETWORK``: every IPv4 cluster network, host bits cleared, duplicates removed."""
    subnet: Cidr | None
    """``FLANNEL_SUBNET`` as a network (``10.1.17.1/24`` → ``10.1.17.0/24``); None when absent."""
    ipv6_networks: tuple[Cidr, ...]
    """``FLANNEL_IPV6_NETWORK``, like ``networks``."""
    ipv6_subnet: Cidr | None
    """``FLANNEL_IPV6_SUBNET``, like ``subnet``."""
    mtu: int
    """``FLANNEL_MTU``."""
    ipmasq: bool
    """``FLANNEL_IPMASQ``: true only for the exact text ``true``."""


class SubnetFileError(CNIError):
    """``subnet.env`` is missing, unreadable or malformed; ``reason`` is the bare cause, without the advice."""

    def __init__(self, code: int, reason: str) -> None:
        msg = f"failed to load flannel 'subnet.env' file: {reason}. Check the flannel pod log for this node."
        super().__init__(code, msg)
        self.reason = reason


def load_subnet_env(path: str) -> SubnetEnv:
    """Read and check ``path``; raise :class:`SubnetFileError` with upstream's message otherwise.

    The code is "try again later" (11) when the file does not exist or is empty, which is how a node looks
    before flanneld has written it; any other problem is a decoding failure (6) or an I/O failure (5).
    """
    try:
        data = read_bounded(path, MAX_FILE_BYTES)
    except OSError as exc:
        raise SubnetFileError(code_for_os_error(exc, TRY_AGAIN_LATER), os_error_text("open", path, exc)) from None
    env = parse_subnet_env(data.decode("utf-8", "replace"), path)
    if isinstance(env, str):
        raise SubnetFileError(TRY_AGAIN_LATER if not data.strip() else DECODING_FAILURE, env)
    return env


def parse_subnet_env(text: str, path: str) -> SubnetEnv | str:
    """Parse the file's text: a :class:`SubnetEnv`, or the reason it is unusable (``path`` names the file).

    Line by line, split on the first ``=``, values neither unquoted nor trimmed, unknown keys ignored, the
    last occurrence of a key wins (§13.2).
    """
    networks: tuple[Cidr, ...] = ()
    ipv6_networks: tuple[Cidr, ...] = ()
    subnet: Cidr | None = None
    ipv6_subnet: Cidr | None = None
    mtu: int | None = None
    ipmasq: bool | None = None
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw[:-1] if raw.endswith("\r") else raw  # what Go's line scanner drops
        key, sep, value = line.partition("=")
        if key not in _KNOWN_KEYS:
            continue
        if not sep:
            return f"{path}: line {lineno}: {key} has no value (expected {key}=<value>)"
        try:
            if key == "FLANNEL_NETWORK":
                networks = _network_list(value)
            elif key == "FLANNEL_IPV6_NETWORK":
                ipv6_networks = _network_list(value)
            elif key == "FLANNEL_SUBNET":
                subnet = parse_network(value)
            elif key == "FLANNEL_IPV6_SUBNET":
                ipv6_subnet = parse_network(value)
            elif key == "FLANNEL_MTU":
                mtu = _uint32(value)
            else:
                ipmasq = value == "true"
        except ValueError as exc:
            return f"{path}: line {lineno}: {key}: {exc}"
    missing = []
    if not networks and not ipv6_networks:
        missing += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
    if subnet is None and ipv6_subnet is None:
        missing += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
    if mtu is None:
        missing.append("FLANNEL_MTU")
    if ipmasq is None:
        missing.append("FLANNEL_IPMASQ")
    if missing or mtu is None or ipmasq is None:
        return f"{path} is missing {', '.join(missing)}"
    low, family = (MIN_MTU_IPV6, "an IPv6") if ipv6_subnet is not None else (MIN_MTU_IPV4, "an IPv4")
    if not low <= mtu <= MAX_MTU:
        return f"{path}: FLANNEL_MTU={mtu} is out of range: {family} network needs an MTU from {low} to {MAX_MTU}"
    return SubnetEnv(networks, subnet, ipv6_networks, ipv6_subnet, mtu, ipmasq)


def _network_list(value: str) -> tuple[Cidr, ...]:
    out: list[Cidr] = []
    for part in value.split(","):
        net = parse_network(part)
        if net not in out:
            out.append(net)
    return tuple(out)


def _uint32(value: str) -> int:
    # strconv.ParseUint(value, 10, 32): ASCII digits only, no sign, no spaces.
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"invalid unsigned integer {value!r}")
    number = int(value)
    if number > _MAX_UINT32:
        raise ValueError(f"value out of range {value!r}")
    return number
