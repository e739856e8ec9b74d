"""``--ip-blackhole-route`` (spec §10.12): keep a blackhole route for this node's own subnet(s).

Meant for setups without the bridge plugin (e.g. Canal), where nothing else routes the own subnet: traffic
to an unused pod address is then dropped here instead of following the default route back out. Every
``--iptables-resync`` seconds (the first time after one period) the route is added to each enabled family
if no blackhole route for that destination exists. It is never removed.

The route is *added* (create-exclusive), as upstream does, never replaced: when another route to exactly the
same destination exists (the ``cni0`` route of the bridge plugin), it stays, and a warning says why no
blackhole was added.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network

from flannel.netlink import BlackholeRouteReplace, Netlink, NetlinkError, is_exists
from flannel.netlink.consts import RTN_BLACKHOLE

log = logging.getLogger(__name__)

Subnet = IPv4Network | IPv6Network


def ensure_blackholes(nl: Netlink, subnets: Sequence[Subnet]) -> int:
    """Add ``blackhole <subnet>`` for each subnet that has none in the main table; returns the routes added."""
    added = 0
    for subnet in subnets:
        family = socket.AF_INET if subnet.version == 4 else socket.AF_INET6
        if any(r.dst == subnet for r in nl.routes(family, rtype=RTN_BLACKHOLE)):
            continue
        op = BlackholeRouteReplace(subnet, exclusive=True)
        err = nl.apply([op])[0]
        if err is None:
            log.info("%s", op.describe())
            added += 1
        elif is_exists(err):
            log.warning("%s: another route to %s exists, so no blackhole route was added", op.describe(), subnet)
        else:
            log.warning("%s failed: %s", op.describe(), err)
    return added


async def keep_blackholes(subnets: Sequence[Subnet], period: float) -> None:
    """The guarded subsystem: ``ensure_blackholes`` every ``period`` seconds, starting after one period."""
    nl = Netlink()
    try:
        while True:
            await asyncio.sleep(period)
            try:
                ensure_blackholes(nl, subnets)
            except (NetlinkError, OSError) as exc:  # a kernel hiccup must not restart the daemon: next round
                log.warning("blackhole route check failed, retrying in %gs: %s", period, exc)
    finally:
        nl.close()
