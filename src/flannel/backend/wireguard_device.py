"""The two ways to a WireGuard device: the kernel (generic netlink) and ``wireguard-go`` (its UAPI socket).

Both are a ``Driver``: make the device, read it back as a ``DeviceState``, apply a ``DeviceChange``. Which
one a node uses is chosen once at start-up (``choose_driver``): an existing device decides by its kind
(``wireguard`` is the kernel's, a ``tun`` device answering on ``/var/run/wireguard/<name>.sock`` is
``wireguard-go``'s); otherwise the kernel is tried first (creating the link loads the module), and
``wireguard-go`` is used where the kernel has no WireGuard. The operator can force either with
``FLANNEL_WIREGUARD_IMPL``.

``wireguard-go`` is started by flanneld and daemonizes itself (its first process exits once the device and
the socket exist), so the device outlives flanneld: a restart finds it and adopts it without a lost packet.
Deleting its link stops it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from typing import Protocol

from flannel.backend.wireguard_config import ENV_IMPL, ENV_WG_GO, Impl
from flannel.backend.wireguard_genetlink import GenlClient
from flannel.backend.wireguard_model import DeviceChange, DeviceState
from flannel.backend.wireguard_uapi import SOCKET_DIR, UAPIClient
from flannel.errors import FlannelError
from flannel.netlink import Link, Netlink, NetlinkError

log = logging.getLogger(__name__)

_NO_KIND = frozenset({errno.EOPNOTSUPP, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EINVAL})


class Driver(Protocol):
    """One device, reached one way."""

    name: str
    impl: Impl

    @property
    def starting(self) -> bool:
        """Whether a device is on its way (``create`` returned False and has not finished)."""
        ...

    def owns(self, link: Link) -> bool:
        """Whether ``link`` is a device this driver can configure."""
        ...

    def create(self) -> bool:
        """Make the device; True when it exists now, False when it is on its way (``wireguard-go`` starting)."""
        ...

    def get(self) -> DeviceState:
        ...

    def set(self, change: DeviceChange) -> None:
        ...


class KernelDriver:
    """In-kernel WireGuard: an rtnetlink link of kind ``wireguard``, configured over generic netlink."""

    impl = Impl.KERNEL

    def __init__(self, nl: Netlink, name: str, mtu: int) -> None:
        self.nl = nl
        self.name = name
        self.mtu = mtu
        self._genl: GenlClient | None = None

    def _client(self) -> GenlClient:
        if self._genl is None:  # the family exists only once the module is loaded (creating a link loads it)
            self._genl = GenlClient()
        return self._genl

    @property
    def starting(self) -> bool:
        return False

    def owns(self, link: Link) -> bool:
        return link.kind == "wireguard"

    def create(self) -> bool:
        self.nl.create_plain(self.name, "wireguard", self.mtu)
        log.info("link add %s mtu %d type wireguard", self.name, self.mtu)
        return True

    def get(self) -> DeviceState:
        return self._client().get(self.name)

    def set(self, change: DeviceChange) -> None:
        self._client().set(self.name, change)


class UserspaceDriver:
    """``wireguard-go``: a TUN device served by a daemon flanneld starts, configured over its UAPI socket."""

    impl = Impl.USERSPACE

    def __init__(self, name: str, program: str, socket_dir: str = SOCKET_DIR) -> None:
        self.name = name
        self.program = program
        self.uapi = UAPIClient(name, socket_dir)
        self._starting: subprocess.Popen[bytes] | None = None

    @property
    def starting(self) -> bool:
        return self._starting is not None

    def owns(self, link: Link) -> bool:
        return link.kind == "tun" and self.uapi.alive()

    def create(self) -> bool:
        """Start ``wireguard-go`` for the device, or see whether the one started earlier is ready.

        Never waits: the reconcile loop is synchronous. The daemon's first process exits once the TUN device
        and the socket exist (it forks the daemon first); until then this returns False.
        """
        if self._starting is None:
            if self.uapi.alive():
                return False  # the daemon of a device just deleted is still on its way out (and on the port)
            os.makedirs(os.path.dirname(self.uapi.path), mode=0o755, exist_ok=True)
            # No key on the command line: it goes over the socket once the daemon answers.
            # Its own process group, so that a signal to flanneld's (a Ctrl-C) does not stop the device; not its
            # own session, which under sched_autogroup would also give it a scheduling group of its own. Without
            # LOG_LEVEL, so that the daemon does not keep our pipe open (it logs to /dev/null then).
            env = {k: v for k, v in os.environ.items() if k != "LOG_LEVEL"}
            self._starting = subprocess.Popen([self.program, self.name], stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=True,
                                              process_group=0, env=env)
            log.info("started %s %s (pid %d)", self.program, self.name, self._starting.pid)
        code = self._starting.poll()
        if code is None:
            return False
        proc, self._starting = self._starting, None
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        if code != 0:
            raise FlannelError(f"{self.program} {self.name} failed with status {code}: {err[-500:]}")
        return True

    def get(self) -> DeviceState:
        return self.uapi.get()

    def set(self, change: DeviceChange) -> None:
        self.uapi.set(change)


def no_wireguard_error(detail: str) -> FlannelError:
    """The one error for a node with neither WireGuard implementation, naming both remedies."""
    return FlannelError(
        f"no WireGuard on this node: the kernel has no wireguard module ({detail}; load it with "
        f"'modprobe wireguard' or use a kernel built with CONFIG_WIREGUARD), and wireguard-go is not installed "
        f"(install the wireguard-go package, or point {ENV_WG_GO} at the program)")


def userspace_program(program: str) -> str | None:
    """The path of ``wireguard-go``, or None when it cannot be found."""
    return shutil.which(program)


def choose_driver(nl: Netlink, name: str, mtu: int, impl: Impl, program: str) -> Driver:
    """The driver for device ``name`` (see the module docstring); ``FlannelError`` when none can work.

    In ``auto`` mode without an existing device, this probes the kernel by creating the link, which is then
    kept (the caller adopts it).
    """
    found = userspace_program(program)
    if impl is Impl.USERSPACE:
        if found is None:
            raise FlannelError(f"{ENV_IMPL}=userspace, but {program} is not installed (install the wireguard-go "
                               f"package, or point {ENV_WG_GO} at the program)")
        return UserspaceDriver(name, found)
    kernel = KernelDriver(nl, name, mtu)
    if impl is Impl.KERNEL:
        return kernel
    link = nl.link_by_name(name)
    if link is not None:
        if kernel.owns(link):
            log.info("%s is an in-kernel WireGuard device: using the kernel", name)
            return kernel
        if found is not None and UserspaceDriver(name, found).owns(link):
            log.info("%s is served by wireguard-go: using wireguard-go (userspace)", name)
            return UserspaceDriver(name, found)
        return kernel if found is None else UserspaceDriver(name, found)  # recreated by the caller
    try:
        kernel.create()
    except NetlinkError as exc:
        if exc.errno not in _NO_KIND:
            raise FlannelError(f"cannot create the wireguard device {name}: {exc}") from None
        if found is None:
            raise no_wireguard_error(str(exc)) from None
        log.info("the kernel has no WireGuard (%s): using wireguard-go (userspace, %s)", exc, found)
        return UserspaceDriver(name, found)
    log.info("using the in-kernel WireGuard for %s", name)
    return kernel


def describe(impl: Impl) -> str:
    return "in-kernel WireGuard" if impl is Impl.KERNEL else "wireguard-go (userspace)"


def stop_device(nl: Netlink, name: str) -> None:
    """Delete the device (upstream's shutdown); ``wireguard-go`` exits when its device goes."""
    link = nl.link_by_name(name)
    if link is None:
        return
    try:
        nl.delete_link(link.index)
        log.info("link del %s", name)
    except NetlinkError as exc:
        log.warning("could not delete %s on shutdown: %s", name, exc)

