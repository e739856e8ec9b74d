"""``LinkMonitor`` and ``link_events``: the daemon hears about devices appearing and disappearing."""

from __future__ import annotations

import asyncio
import select

import pytest

from flannel.netlink import LinkEvent, LinkMonitor, Netlink, VxlanSpec, link_events
from tests.netns import NetNS, netns_factory_fixture, netns_fixture  # noqa: F401

pytestmark = pytest.mark.root


def _wait_for(mon: LinkMonitor, want: LinkEvent) -> list[LinkEvent]:
    seen: list[LinkEvent] = []
    for _ in range(50):
        select.select([mon], [], [], 0.1)
        seen += mon.read_events()
        if want in seen:
            return seen
    raise AssertionError(f"{want} not among {seen}")


def test_monitor_sees_creation_and_deletion(netns: NetNS) -> None:
    with LinkMonitor(netns.name) as mon, Netlink(netns.name) as nl:
        assert mon.read_events() == []  # non-blocking when nothing happened
        link = nl.create_vxlan(VxlanSpec("flannel.1", 1, 0, None, 0, False, False, 1450, None))
        _wait_for(mon, LinkEvent("new", link.index, "flannel.1"))
        netns.ip("link", "del", "flannel.1")
        _wait_for(mon, LinkEvent("del", link.index, "flannel.1"))
        assert mon.overruns == 0


def test_monitor_does_not_see_other_namespaces(netns: NetNS, netns_factory: object) -> None:
    with LinkMonitor(netns.name) as mon:
        assert callable(netns_factory)
        other: NetNS = netns_factory(underlay=False)
        other.ip("link", "add", "vx5", "type", "vxlan", "id", "5", "dstport", "4789")
        netns.ip("link", "add", "vx6", "type", "vxlan", "id", "6", "dstport", "4789")
        seen = _wait_for(mon, LinkEvent("new", netns.ifindex("vx6"), "vx6"))
    assert all(e.name != "vx5" for e in seen)


async def test_link_events_yields_batches_in_the_event_loop(netns: NetNS) -> None:
    with LinkMonitor(netns.name) as mon:
        stream = link_events(mon)

        async def first_deletion() -> LinkEvent:
            async for batch in stream:
                for event in batch:
                    if event.kind == "del":
                        return event
            raise AssertionError("stream ended")

        task = asyncio.create_task(first_deletion())
        await asyncio.sleep(0)  # one loop turn, not a wait on time: the task starts reading the stream first
        netns.ip("link", "del", "eth0")  # deleting one end of the veth deletes both
        event = await asyncio.wait_for(task, 5)
        await stream.aclose()
    assert event.name in {"eth0", "eth0-peer"}
