"""A reply datagram bigger than the receive buffer, against the real kernel.

The transport reads replies into a 64 KiB buffer (the kernel's dump datagrams are at most 32 KiB). Should one
ever be bigger, reading it into too small a buffer would lose its tail silently; the transport must see it
(MSG_TRUNC), fail that exchange cleanly, and read the next attempt whole. A tiny buffer makes every datagram
of a real route dump too big.
"""

from __future__ import annotations

import errno
import socket

import pytest

from flannel.netlink import Netlink, NetlinkError
from flannel.netlink import transport as netlink_transport
from tests.netns import NetNS, netns_fixture  # noqa: F401

pytestmark = pytest.mark.root

ROUTES = 600


def test_a_datagram_that_does_not_fit_fails_cleanly_then_the_dump_reads_it_whole(
        netns: NetNS, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = (f"route add 100.64.{i >> 8}.{i & 255}/32 via 198.18.0.254" for i in range(ROUTES))
    netns.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n")
    monkeypatch.setattr(netlink_transport, "_RECV_SIZE", 256)
    with Netlink(netns.name) as nl:
        routes = nl.routes(socket.AF_INET)  # the first attempt fails inside the dump; its retry reads it whole
        assert len([r for r in routes if str(r.dst).startswith("100.64.")]) == ROUTES
        assert len(nl._buf) > 256  # grown to the datagram's size, once
        assert len(nl.routes(socket.AF_INET)) == len(routes)  # the old socket took the abandoned dump with it


def test_a_request_whose_answer_does_not_fit_names_the_sizes(netns: NetNS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netlink_transport, "_RECV_SIZE", 16)
    with Netlink(netns.name) as nl:
        with pytest.raises(NetlinkError) as err:
            nl.link_by_name("lo")
        assert err.value.errno == errno.EMSGSIZE
        assert "did not fit the 16-byte receive buffer" in str(err.value)
        link = nl.link_by_name("lo")
        assert link is not None and link.name == "lo"  # the buffer fits it now, on a fresh socket
