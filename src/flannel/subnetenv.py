"""``subnet.env``: the file that tells the CNI plugin (and anything else on the host) this node's subnet.

The plugin parses it on every pod start, so it is written byte-for-byte as Go writes it and replaced
atomically (spec §8.1–§8.2). flanneld also reads its own previous file back at startup to reuse the old
subnet and to clean up stale masquerade rules (§8.3); that reader is tolerant, because a damaged file must
never stop the daemon: a FIFO, a device, a huge file or garbage is ignored with a warning, never waited on.

Where the file may be written (``atomicfile``): its directory may be reached through symbolic links, since
``/var/run`` is a link to ``/run`` on most systems and administrators do link ``/run/flannel`` elsewhere;
but a link owned by someone other than root or us is refused, and so is a directory owned by another user,
or one that others may write to without the sticky bit (they could swap the file under the plugin). Inside
it, nothing is ever written through a link. Refusing is loud and safe: flanneld runs on, never ready.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from flannel.atomicfile import read_bounded, write_atomically
from flannel.ipaddr import IPNetwork, first_host, go_ip_text, go_net_text, parse_cidr_masked

log = logging.getLogger(__name__)

FILE_MODE = 0o644
DIR_MODE = 0o755
MAX_FILE_BYTES = 64 * 1024
"""flanneld writes about 200 bytes; a bigger "previous file" is not ours, and is not read whole."""


@dataclass(frozen=True)
class SubnetEnv:
    """What ``subnet.env`` advertises; the IPv4 or IPv6 pair is omitted when that family is disabled."""

    network: IPv4Network | None
    """The IPv4 cluster network (``FLANNEL_NETWORK``); None when IPv4 is disabled."""
    subnet: IPv4Network | None
    """This node's IPv4 lease network, e.g. 10.5.52.0/24 (written as its first host, 10.5.52.1/24)."""
    ipv6_network: IPv6Network | None
    """The IPv6 cluster network (``FLANNEL_IPV6_NETWORK``); None when IPv6 is disabled."""
    ipv6_subnet: IPv6Network | None
    """This node's IPv6 lease network (written as its first host)."""
    mtu: int
    """The backend's MTU (``FLANNEL_MTU``)."""
    ipmasq: bool
    """The value of ``--ip-masq`` (``FLANNEL_IPMASQ``)."""


@dataclass(frozen=True)
class PreviousSubnets:
    """What the previous run's ``subnet.env`` said, each value None when absent or not exactly one CIDR."""

    subnet: IPv4Network | None = None
    """``FLANNEL_SUBNET`` masked to its network: the subnet to try to reuse (etcd mode)."""
    ipv6_subnet: IPv6Network | None = None
    """``FLANNEL_IPV6_SUBNET`` masked to its network."""
    network: IPv4Network | None = None
    """``FLANNEL_NETWORK``: used to delete stale masquerade rules."""
    ipv6_network: IPv6Network | None = None
    """``FLANNEL_IPV6_NETWORK``: used to delete stale masquerade rules."""


def _first_host_text(net: IPNetwork) -> str:
    return f"{go_ip_text(first_host(net))}/{net.prefixlen}"


def render(env: SubnetEnv) -> str:
    """The exact file text (§8.1): fixed line order, ``\\n`` endings, no quoting, Go address text."""
    lines: list[str] = []
    if env.network is not None or env.subnet is not None:
        if env.network is None or env.subnet is None:
            raise ValueError("subnet.env needs both the IPv4 network and the IPv4 lease subnet")
        lines += [
            f"FLANNEL_NETWORK={go_net_text(env.network)}",
            f"FLANNEL_SUBNET={_first_host_text(env.subnet)}",
        ]
    if env.ipv6_network is not None or env.ipv6_subnet is not None:
        if env.ipv6_network is None or env.ipv6_subnet is None:
            raise ValueError("subnet.env needs both the IPv6 network and the IPv6 lease subnet")
        lines += [
            f"FLANNEL_IPV6_NETWORK={go_net_text(env.ipv6_network)}",
            f"FLANNEL_IPV6_SUBNET={_first_host_text(env.ipv6_subnet)}",
        ]
    lines += [f"FLANNEL_MTU={int(env.mtu)}", f"FLANNEL_IPMASQ={'true' if env.ipmasq else 'false'}"]
    return "".join(line + "\n" for line in lines)


def _make_dirs(path: str) -> None:
    # Like MkdirAll(dir, 0755), but the directories we create get exactly 0755 whatever the umask, so
    # that an unprivileged reader of subnet.env can always reach it.
    if not path or os.path.isdir(path):
        return
    _make_dirs(os.path.dirname(path.rstrip(os.sep)))
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)


def write_subnet_env(path: str | os.PathLike[str], env: SubnetEnv) -> None:
    """Write the file atomically with mode exactly 0644 (§8.2).

    A reader sees either the old file or the new one, never a partial write: the text goes to a temporary
    file in the same directory, is fsynced, renamed over the target, and the directory is fsynced. Raises
    ``OSError`` (``atomicfile.UnsafeDirectoryError`` for a directory others control).
    """
    target = os.path.abspath(os.fspath(path))
    _make_dirs(os.path.dirname(target))
    write_atomically(target, render(env).encode(), FILE_MODE)


def read_subnet_env_values(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse a dotenv file into ``{key: value}``; a missing file gives ``{}``.

    Tolerates what godotenv tolerates (``export``, single/double quotes, comments, blank lines) and,
    unlike upstream, skips a malformed line (no ``=``, empty key) instead of discarding the whole file.
    Anything but a regular file of at most 64 KiB raises ``OSError`` at once (``atomicfile.read_bounded``).
    """
    try:
        text = read_bounded(os.fspath(path), MAX_FILE_BYTES).decode("utf-8", "replace")
    except FileNotFoundError:
        return {}
    values: dict[str, str] = {}
    for lineno, raw_line in enumerate(text.splitlines(), 1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export") :].lstrip()
        key, sep, rest = line.partition("=")
        key = key.strip()
        if not sep or not key or any(c.isspace() for c in key):
            log.warning("%s:%d: skipping malformed line %r", os.fspath(path), lineno, raw_line)
            continue
        values[key] = _parse_value(rest.strip())
    return values


_DQ_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "$": "$"}


def _parse_value(rest: str) -> str:
    if rest[:1] == "'":
        end = rest.find("'", 1)
        return rest[1:end] if end > 0 else rest[1:]
    if rest[:1] == '"':
        out: list[str] = []
        i = 1
        while i < len(rest):
            c = rest[i]
            if c == '"':
                break
            if c == "\\" and i + 1 < len(rest):
                i += 1
                out.append(_DQ_ESCAPES.get(rest[i], "\\" + rest[i]))
            else:
                out.append(c)
            i += 1
        return "".join(out)
    # Unquoted: an inline comment starts at a '#' preceded by whitespace.
    for i, c in enumerate(rest):
        if c == "#" and i > 0 and rest[i - 1].isspace():
            return rest[:i].rstrip()
    return rest


def read_cidr_list(values: dict[str, str], key: str, version: int | None = None) -> list[IPNetwork]:
    """The comma-separated CIDRs under ``key``, host bits masked; invalid parts are logged and skipped.

    ``version`` (4 or 6) also skips entries of the other family, where Go would crash or store nonsense.
    """
    text = values.get(key)
    if text is None:
        return []
    out: list[IPNetwork] = []
    for part in text.split(","):
        try:
            net = parse_cidr_masked(part)
        except ValueError:
            log.error("Couldn't parse previous %s from subnet file: invalid CIDR address: %s", key, part)
            continue
        if version is not None and net.version != version:
            log.error("Couldn't parse previous %s from subnet file: %s is not IPv%d", key, part, version)
            continue
        out.append(net)
    return out


def read_single_cidr(values: dict[str, str], key: str, version: int | None = None) -> IPNetwork | None:
    """The one CIDR under ``key``; None (with a warning for none, an error for several) otherwise."""
    nets = read_cidr_list(values, key, version)
    if not nets:
        log.warning("no subnet found for key: %s in subnet file", key)
        return None
    if len(nets) > 1:
        log.error("error reading subnet: more than 1 entry found for key: %s in subnet file", key)
        return None
    return nets[0]


def read_previous(path: str | os.PathLike[str]) -> PreviousSubnets:
    """Read the previous run's subnets; a missing or unusable file gives all None (with a warning)."""
    try:
        values = read_subnet_env_values(path)
    except OSError as exc:
        log.warning("ignoring the previous subnet file %s: %s", os.fspath(path), exc.strerror or exc)
        return PreviousSubnets()
    if not values:
        return PreviousSubnets()
    return PreviousSubnets(
        subnet=_v4(read_single_cidr(values, "FLANNEL_SUBNET", 4)),
        ipv6_subnet=_v6(read_single_cidr(values, "FLANNEL_IPV6_SUBNET", 6)),
        network=_v4(read_single_cidr(values, "FLANNEL_NETWORK", 4)),
        ipv6_network=_v6(read_single_cidr(values, "FLANNEL_IPV6_NETWORK", 6)),
    )


def _v4(net: IPNetwork | None) -> IPv4Network | None:
    return net if isinstance(net, IPv4Network) else None


def _v6(net: IPNetwork | None) -> IPv6Network | None:
    return net if isinstance(net, IPv6Network) else None
