"""Following the external interface through flaps and re-creations (issue 15).

The interface chosen at start-up (``iface.py``) is weather, not a constant: it goes down and up (the kernel
then drops every route through it), and it is deleted and made again with a new index (a veth re-created, a
NIC re-plugged or its driver reloaded; the kernel then also deletes every vxlan device on top of it). What
is bound to its index (vxlan's ``dev``, host-gw's and ipip DirectRouting's route ``oif``) must follow the
new index, or the repair code keeps re-adding entries against an index that no longer exists until a
restart.

``ExternalLink`` is asked by each reconcile where the interface is now: the old index if it still exists,
else the same name (the common case), else the interface that owns our address. Its ``concerns`` tells the
link monitor which events call for an immediate reconcile, so a repair follows the interface's return
promptly rather than at the next ``--reconcile-interval``.

What it does *not* do: re-acquire the lease when the interface comes back with another address. The lease
keeps advertising the old PublicIP; a loud error names both addresses, and everything else carries on with
what exists (see docs/backends.md).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from ipaddress import IPv4Address, IPv6Address

from flannel.backend.base import ExternalInterface
from flannel.netlink import Link, LinkEvent, Netlink

log = logging.getLogger(__name__)


class ExternalLink:
    """The current identity of the external interface, and whether entries through it can be programmed now."""

    def __init__(self, iface: ExternalInterface) -> None:
        self.iface = iface
        """The interface as last seen; ``index`` and ``name`` follow re-creations and renames."""
        self.present = True
        """The interface exists (under its index, its name, or as the owner of our address)."""
        self.up = True
        """The interface is administratively up: routes through it can be added."""
        self._said: str | None = None
        """The last state logged, so that a lasting condition is logged once, not every round."""

    @property
    def index(self) -> int:
        return self.iface.index

    @property
    def usable(self) -> bool:
        """Whether entries through the interface can be programmed now (the kernel refuses them otherwise)."""
        return self.present and self.up

    def concerns(self, ev: LinkEvent) -> bool:
        """Whether a monitor event may change what ``refresh`` finds: the interface or its addresses changed,
        or a device took its name (re-created). Events are rare on this device, so any of them kicks."""
        return ev.index == self.iface.index or (ev.kind != "addr" and ev.name == self.iface.name)

    def refresh(self, nl: Netlink) -> int | None:
        """Look the interface up again; returns its old index when it now has another one, else None."""
        link = nl.link_by_index(self.iface.index)
        if link is None:
            link = nl.link_by_name(self.iface.name) or self._owner_of_address(nl)
        if link is None:
            self.present = False
            self._say(logging.WARNING, f"external interface {self.iface.name} (index {self.iface.index}) is "
                      "gone; entries through it wait for it to come back")
            return None
        self.present, self.up = True, link.up
        old = self.iface.index
        if link.index != old or link.name != self.iface.name:
            log.warning("external interface %s (index %d) is now %s (index %d); following it", self.iface.name,
                        old, link.name, link.index)
            if link.mtu != self.iface.mtu:
                log.warning("external interface %s came back with mtu %d (was %d); the MTU of flannel's devices "
                            "and pods is kept until a restart", link.name, link.mtu, self.iface.mtu)
            self.iface = dataclasses.replace(self.iface, name=link.name, index=link.index)
        if not link.up:
            self._say(logging.WARNING, f"external interface {link.name} is down; entries through it wait for it "
                      "to come up")
        else:
            self._check_addresses(nl, link)
        return old if link.index != old else None

    def _owner_of_address(self, nl: Netlink) -> Link | None:
        """The interface that now holds our address: the device came back under another name."""
        for want in (self.iface.iface_addr, self.iface.iface_v6_addr):
            if want is None:
                continue
            for a in nl.addresses(None, _family(want)):
                if a.address == want:
                    return nl.link_by_index(a.index)
        return None

    def _check_addresses(self, nl: Netlink, link: Link) -> None:
        """Say (once per state) when the interface lost the address the lease was built on."""
        problems: list[tuple[int, str]] = []
        for own, public in ((self.iface.iface_addr, self.iface.ext_addr),
                            (self.iface.iface_v6_addr, self.iface.ext_v6_addr)):
            if own is None:
                continue
            have = [a.address for a in nl.addresses(link.index, _family(own))
                    if not (isinstance(a.address, IPv6Address) and a.address.is_link_local)]
            if own in have:
                continue
            if not have:
                problems.append((logging.WARNING, f"external interface {link.name} has no address of the family "
                                 f"of {own} yet; waiting for it"))
            else:
                problems.append((logging.ERROR, f"external interface {link.name} came back with address "
                                 f"{', '.join(map(str, have))} instead of {own}, but the lease still advertises "
                                 f"PublicIP {public}: peers keep sending to {public}; flanneld carries on with "
                                 "what exists and does not re-acquire its lease: restart it to advertise the "
                                 "new address"))
        if problems:
            level = max(lvl for lvl, _ in problems)
            self._say(level, "; ".join(text for _, text in problems))
        else:
            self._say(logging.INFO, f"external interface {link.name} (index {link.index}) is up with its address")

    def _say(self, level: int, text: str) -> None:
        if text != self._said:
            if self._said is not None or level != logging.INFO:
                log.log(level, "%s", text)
            self._said = text


def _family(addr: IPv4Address | IPv6Address) -> int:
    return socket.AF_INET if isinstance(addr, IPv4Address) else socket.AF_INET6
