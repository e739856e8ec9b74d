"""The udp backend's TUN device: opened with ``/dev/net/tun`` ioctls, as upstream's C proxy does.

The kernel names the device from the pattern ``flannel%d`` (so ``flannel0`` on a host with no other), and it
exists exactly as long as the descriptor is open: a stopped flanneld leaves no stale device behind.

With ``offload`` the device is opened with ``IFF_VNET_HDR`` and told it may hand over TCP segmentation
super-packets with partial checksums (``TUNSETOFFLOAD``): each read then returns up to ~64 KiB with a 10-byte
virtio-net header in front. That is the udp backend's fast path (see ``udp_packet``).
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass

from flannel.errors import FlannelError

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4 = 0x01, 0x02
NAME_PATTERN = "flannel%d"


@dataclass
class TunDevice:
    """An open TUN device."""

    fd: int
    """Non-blocking descriptor; reads and writes are whole packets."""
    name: str
    """The name the kernel gave it (``flannel0``)."""
    offload: bool
    """Whether every read and write carries a virtio-net header."""

    def close(self) -> None:
        """Close the descriptor, which removes the device."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_tun(pattern: str = NAME_PATTERN, offload: bool = False) -> TunDevice:
    """Create a TUN device (no packet-info header) named from ``pattern``; raise ``FlannelError`` saying why
    when the kernel refuses (no ``/dev/net/tun``, no ``CAP_NET_ADMIN``, no TUN support)."""
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FlannelError(f"failed to open {TUN_PATH} (is the tun module loaded?): {exc}") from None
    try:
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", pattern.encode(), flags))
        name = ifr[:16].split(b"\0", 1)[0].decode()
        if offload:
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
    except OSError as exc:
        os.close(fd)
        raise FlannelError(f"failed to create TUN device {pattern!r}: {exc}") from None
    return TunDevice(fd=fd, name=name, offload=offload)
