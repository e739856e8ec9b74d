"""The userspace WireGuard control protocol (``wireguard-go``'s UAPI socket), hand-written.

The protocol is a few lines of ``key=value`` text over a Unix socket, ``/var/run/wireguard/<device>.sock``
(wireguard.com/xplatform): ``get=1`` answers with the device and its peers, ``set=1`` takes changes; every
answer ends in ``errno=N`` and a blank line. Keys travel in hex. No maintained PyPI package speaks it, and the
one library that speaks WireGuard at all (pyroute2, generic netlink only) would add about 10 MiB of RSS to the
daemon (docs/performance.md), so this module does, in ~150 lines.

Calls are synchronous with a deadline (``TIMEOUT``): ``wireguard-go`` answers from memory within
milliseconds, as the kernel answers rtnetlink requests, and the backend's reconcile is synchronous like every
other backend's (``netlink/transport.py`` explains why). A daemon that stops answering fails the call with
``UAPIError`` after the deadline; the reconcile loop retries it.
"""

from __future__ import annotations

import socket
from ipaddress import ip_address, ip_network

from flannel.backend.wireguard_model import DeviceChange, DeviceState, Endpoint, Network, PeerSpec, endpoint_text
from flannel.errors import FlannelError
from flannel.secret import NO_SECRET_BYTES, Secret

SOCKET_DIR = "/var/run/wireguard"
TIMEOUT = 2.0
"""Seconds to wait for ``wireguard-go`` to answer one request."""
_MAX_REPLY = 64 << 20


class UAPIError(FlannelError):
    """``wireguard-go`` refused a request (``errno`` set) or could not be talked to (``errno`` 0)."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


def socket_path(device: str, directory: str = SOCKET_DIR) -> str:
    """Where ``wireguard-go`` listens for ``device``."""
    return f"{directory}/{device}.sock"


def encode_set(change: DeviceChange) -> bytes:
    """The ``set=1`` request for ``change``; holds keys in clear, so it is only ever written to the socket."""
    lines = ["set=1"]
    if change.private_key is not None:
        lines.append(f"private_key={change.private_key.reveal().hex()}")
    if change.listen_port is not None:
        lines.append(f"listen_port={change.listen_port}")
    if change.replace_peers:
        lines.append("replace_peers=true")
    for key in change.remove:
        lines += [f"public_key={key.hex()}", "remove=true"]
    for peer in change.peers:
        lines.append(f"public_key={peer.public_key.hex()}")
        lines.append(f"preshared_key={(peer.psk.reveal() or bytes(32)).hex()}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={endpoint_text(peer.endpoint)}")
        lines.append(f"persistent_keepalive_interval={peer.keepalive}")
        lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip={net}" for net in sorted(peer.allowed_ips, key=_net_order)]
    return ("\n".join(lines) + "\n\n").encode("ascii")


def _net_order(net: Network) -> tuple[int, int, int]:
    return net.version, int(net.network_address), net.prefixlen


def parse_endpoint(text: str) -> Endpoint:
    """``1.2.3.4:51820`` or ``[fd00::1]:51821`` (what ``get=1`` reports); ``ValueError`` otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"endpoint without a port: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1].split("%", 1)[0]
    return ip_address(host), int(port)


def decode_get(text: str) -> DeviceState:
    """The device described by a ``get=1`` answer; ``UAPIError`` when it reports an error."""
    private = NO_SECRET_BYTES
    port = 0
    peers: dict[bytes, PeerSpec] = {}
    current: dict[str, object] | None = None

    def close_peer() -> None:
        if current is not None:
            key = current["key"]
            assert isinstance(key, bytes)
            peers[key] = PeerSpec(public_key=key, endpoint=current.get("ep"),  # type: ignore[arg-type]
                                  allowed_ips=frozenset(current["ips"]),  # type: ignore[call-overload]
                                  psk=current.get("psk", NO_SECRET_BYTES),  # type: ignore[arg-type]
                                  keepalive=int(current.get("ka", 0)))  # type: ignore[call-overload]

    for line in text.split("\n"):
        if not line:
            continue
        key, _, value = line.partition("=")
        if key == "errno":
            if int(value):
                raise UAPIError(f"get failed with errno {value}", int(value))
        elif key == "private_key":
            private = Secret(bytes.fromhex(value))
        elif key == "listen_port":
            port = int(value)
        elif key == "public_key":
            close_peer()
            current = {"key": bytes.fromhex(value), "ips": []}
        elif current is not None:
            if key == "preshared_key":
                current["psk"] = Secret(bytes.fromhex(value))
            elif key == "endpoint":
                current["ep"] = parse_endpoint(value)
            elif key == "persistent_keepalive_interval":
                current["ka"] = int(value)
            elif key == "allowed_ip":
                current["ips"].append(ip_network(value, strict=False))  # type: ignore[attr-defined]
    close_peer()
    return DeviceState(private_key=private, listen_port=port, peers=peers)


class UAPIClient:
    """Talks to one device's ``wireguard-go`` (a fresh connection per request, as ``wg`` does)."""

    def __init__(self, device: str, directory: str = SOCKET_DIR, timeout: float = TIMEOUT) -> None:
        self.device = device
        self.path = socket_path(device, directory)
        self.timeout = timeout

    def _exchange(self, request: bytes, what: str) -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                sock.sendall(request)
                buf = bytearray()
                # Every answer ends in "errno=N" and a blank line, the only blank line in it; the daemon keeps
                # the connection open for another request, so the end is read from the text, not from EOF.
                while not buf.endswith(b"\n\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > _MAX_REPLY:
                        raise UAPIError(f"{what} on {self.path}: answer larger than {_MAX_REPLY} bytes")
        except OSError as exc:
            raise UAPIError(f"{what} on {self.path}: {exc.strerror or exc}") from None
        return buf.decode("ascii", "replace")

    def get(self) -> DeviceState:
        """The device as ``wireguard-go`` holds it."""
        return decode_get(self._exchange(b"get=1\n\n", "get"))

    def set(self, change: DeviceChange) -> None:
        """Apply ``change``; ``UAPIError`` with the daemon's errno when it refuses it."""
        if change.empty:
            return
        answer = self._exchange(encode_set(change), "set")
        for line in answer.split("\n"):
            if line.startswith("errno="):
                code = int(line[6:] or 0)
                if code:
                    raise UAPIError(f"set on {self.path} refused with errno {code}", code)
                return
        raise UAPIError(f"set on {self.path}: no answer")

    def alive(self) -> bool:
        """Whether the daemon answers."""
        try:
            self.get()
        except UAPIError:
            return False
        return True
