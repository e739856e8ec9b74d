"""``--ip-blackhole-route``: the blackhole route for the own subnet, added in a namespace and read back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from ipaddress import IPv4Network, IPv6Network
from typing import Any

import pytest

from flannel.daemon.blackhole import ensure_blackholes, keep_blackholes
from flannel.netlink import Netlink
from flannel.netlink.nsenter import entered
from tests.netns import NetNS, netns_fixture  # noqa: F401
from tests.waiting import wait_until

pytestmark = pytest.mark.root

OWN = IPv4Network("10.244.7.0/24")
OWN6 = IPv6Network("fd00:10:244:7::/64")


def blackholes(ns: NetNS, *family: str) -> list[str]:
    return [r["dst"] for r in ns.ip_json(*family, "route", "show", "table", "main") if r.get("type") == "blackhole"]


def in_ns(ns: NetNS, coro: Coroutine[Any, Any, None]) -> None:
    with entered(ns.name):
        asyncio.run(coro)


def test_blackhole_is_added_once_per_family_and_kept(netns: NetNS) -> None:
    with entered(netns.name), Netlink() as nl:
        assert ensure_blackholes(nl, [OWN, OWN6]) == 2
        assert ensure_blackholes(nl, [OWN, OWN6]) == 0
    assert blackholes(netns) == [str(OWN)] and blackholes(netns, "-6") == [str(OWN6)]


def test_another_route_to_the_subnet_is_never_replaced(netns: NetNS, caplog: pytest.LogCaptureFixture) -> None:
    netns.ip("route", "add", str(OWN), "dev", "eth0")  # what the bridge plugin's cni0 route looks like
    with entered(netns.name), Netlink() as nl:
        assert ensure_blackholes(nl, [OWN]) == 0
    assert blackholes(netns) == []
    assert netns.ip_json("route", "show", str(OWN))[0]["dev"] == "eth0"
    assert any("another route to 10.244.7.0/24 exists" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


def test_loop_adds_the_route_after_one_period_and_restores_it(netns: NetNS) -> None:
    period = 0.3
    seen: dict[str, Any] = {}

    async def drive() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        task = asyncio.create_task(keep_blackholes([OWN], period))
        await wait_until(lambda: blackholes(netns) == [str(OWN)], "the blackhole route is added")
        seen["added after"] = loop.time() - started
        netns.ip("route", "del", "blackhole", str(OWN))
        await wait_until(lambda: blackholes(netns) == [str(OWN)], "the deleted blackhole route is restored")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    in_ns(netns, drive())
    assert seen["added after"] >= period * 0.9, "the first check runs after one period, not at once"
