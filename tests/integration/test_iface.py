"""External interface selection (spec §9) against the real kernel, inside a fresh namespace per test.

The fixture mirrors upstream's ``pkg/ipmatch/match_test.go``: ``dummy0`` holding 1.10.100.1, 192.168.200.128,
172.16.30.18, 172.16.31.200, 172.16.32.100 and 2001:db8::1/64, with a route 172.16.32.254 via 172.16.32.100.
This kernel has no dummy driver, so ``dummy0`` is a veth whose peer stays in the same namespace.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address

import pytest

from flannel.backend.base import ExternalInterface
from flannel.errors import ConfigError, FlannelError
from flannel.iface import IfaceOptions, select_interface
from flannel.netlink import Netlink
from tests.netns import NetNS, netns_factory_fixture  # noqa: F401

pytestmark = pytest.mark.root

NO_MATCH = "Failed to find interface to use that matches the interfaces and/or regexes provided"
V4 = IPv4Address
V6 = IPv6Address
_peers = itertools.count()


def add_veth(ns: NetNS, name: str, *addrs: str, addrgen: bool = True) -> None:
    """An up veth ``name`` carrying ``addrs``; its peer (``peerN``, up, no address) stays in ``ns``.

    The peer is created first, so it has the lower index: its name must not match the tests' name regexes.
    """
    peer = f"peer{next(_peers)}"
    ns.ip("link", "add", name, "type", "veth", "peer", "name", peer)
    if not addrgen:
        ns.ip("link", "set", name, "addrgenmode", "none")
    for addr in addrs:
        extra = ("nodad",) if ":" in addr else ()
        ns.ip("addr", "add", addr, "dev", name, *extra)
    ns.ip("link", "set", peer, "up")
    ns.ip("link", "set", name, "up")


@pytest.fixture
def ns(netns_factory: Callable[..., NetNS]) -> NetNS:
    """A namespace with only ``lo`` and upstream's ``dummy0`` fixture."""
    ns = netns_factory(underlay=False)
    add_veth(ns, "dummy0", "1.10.100.1", "192.168.200.128", "172.16.30.18", "172.16.31.200", "172.16.32.100",
             "2001:db8::1/64")
    ns.ip("route", "add", "172.16.32.254", "via", "172.16.32.100", "dev", "dummy0")
    return ns


@pytest.fixture
def select(ns: NetNS) -> Iterator[Callable[..., ExternalInterface]]:
    """``select(**IfaceOptions fields)`` run inside the namespace."""
    with Netlink(ns.name) as nl:
        yield lambda **kw: select_interface(nl, IfaceOptions(**kw))


DUAL = {"ipv4": True, "ipv6": True}
V6ONLY = {"ipv4": False, "ipv6": True}


# -- upstream's vectors (spec §9 table) ---------------------------------------------------------------


def test_regex_on_an_address_selects_that_address(select: Callable[..., ExternalInterface]) -> None:
    ext = select(regexes=[r"192\.168\.200\.\d+"])
    assert (ext.name, ext.iface_addr, ext.ext_addr) == ("dummy0", V4("192.168.200.128"), V4("192.168.200.128"))
    assert ext.iface_v6_addr is None and ext.ext_v6_addr is None


def test_regex_on_a_name_uses_the_first_address(select: Callable[..., ExternalInterface]) -> None:
    ext = select(regexes=[r"dummy\d+"])
    assert (ext.name, ext.iface_addr) == ("dummy0", V4("1.10.100.1"))


def test_iface_name_uses_the_first_address(ns: NetNS, select: Callable[..., ExternalInterface]) -> None:
    ext = select(ifaces=["dummy0"])
    assert (ext.name, ext.index, ext.iface_addr, ext.ext_addr) == (
        "dummy0", ns.ifindex("dummy0"), V4("1.10.100.1"), V4("1.10.100.1"))
    assert ext.mtu == 1500


def test_iface_ip_selects_its_owner_and_that_address(select: Callable[..., ExternalInterface]) -> None:
    ext = select(ifaces=["172.16.30.18"])
    assert (ext.name, ext.iface_addr, ext.ext_addr) == ("dummy0", V4("172.16.30.18"), V4("172.16.30.18"))


def test_dual_stack_iface_ip_with_public_ipv6_on_the_same_interface(select: Callable[..., ExternalInterface]) -> None:
    ext = select(ifaces=["172.16.30.18"], public_ipv6="2001:db8::1", **DUAL)
    assert (ext.name, ext.iface_addr, ext.iface_v6_addr) == ("dummy0", V4("172.16.30.18"), V6("2001:db8::1"))
    assert (ext.ext_addr, ext.ext_v6_addr) == (V4("172.16.30.18"), V6("2001:db8::1"))


def test_dual_stack_iface_ip_takes_the_ipv6_address_from_the_interface(
        select: Callable[..., ExternalInterface]) -> None:
    # Upstream's ByIPv4DualStack expects 2001:db8::1 (written "2001:db8::1/64") without --public-ipv6.
    ext = select(ifaces=["172.16.30.18"], **DUAL)
    assert (ext.iface_addr, ext.iface_v6_addr, ext.ext_v6_addr) == (
        V4("172.16.30.18"), V6("2001:db8::1"), V6("2001:db8::1"))


def test_regex_with_public_ip_keeps_interface_and_external_addresses_apart(
        select: Callable[..., ExternalInterface]) -> None:
    ext = select(regexes=[r"172\.16\.30\.\d+"], public_ip="172.16.31.200")
    assert (ext.name, ext.iface_addr, ext.ext_addr) == ("dummy0", V4("172.16.30.18"), V4("172.16.31.200"))


def test_can_reach_uses_the_route_and_its_source_address(select: Callable[..., ExternalInterface]) -> None:
    ext = select(can_reach="172.16.32.254")
    assert (ext.name, ext.iface_addr) == ("dummy0", V4("172.16.32.100"))


# -- regexes: IPv6 and dual stack ----------------------------------------------------------------------


def test_regex_on_an_ipv6_address_in_the_v6_stack(select: Callable[..., ExternalInterface]) -> None:
    ext = select(regexes=[r"^2001:db8::\d$"], **V6ONLY)
    assert (ext.name, ext.iface_addr, ext.iface_v6_addr, ext.ext_addr, ext.ext_v6_addr) == (
        "dummy0", None, V6("2001:db8::1"), None, V6("2001:db8::1"))


def test_dual_stack_regex_needs_a_match_in_both_families(ns: NetNS, select: Callable[..., ExternalInterface]) -> None:
    add_veth(ns, "eth1", "172.16.30.99/24")  # matches the IPv4 half only, and comes after dummy0
    ext = select(regexes=[r"^(172\.16\.30\.\d+|2001:db8::1)$"], **DUAL)
    assert (ext.name, ext.iface_addr, ext.iface_v6_addr) == ("dummy0", V4("172.16.30.18"), V6("2001:db8::1"))
    ext = select(regexes=[r"^172\.16\.30\.99$", "eth1"], **DUAL)  # no v6 match: next regex, by name
    assert (ext.name, ext.iface_addr) == ("eth1", V4("172.16.30.99"))


def test_invalid_regex_is_a_config_error_naming_iface_regex(select: Callable[..., ExternalInterface]) -> None:
    with pytest.raises(ConfigError) as err:
        select(regexes=["dummy(["])
    assert err.value.field == "iface-regex"
    assert str(err.value).startswith("could not compile the IP address regex 'dummy(['")


# -- explicit options: order and failure ---------------------------------------------------------------


def test_iface_values_are_tried_in_order(ns: NetNS, select: Callable[..., ExternalInterface]) -> None:
    add_veth(ns, "eth1", "10.0.0.1/24")
    assert select(ifaces=["nosuch0", "dummy0", "eth1"]).name == "dummy0"
    assert select(ifaces=["eth1", "dummy0"]).name == "eth1"
    assert select(ifaces=["203.0.113.9", "10.0.0.1"]).iface_addr == V4("10.0.0.1")


def test_iface_without_an_ipv4_address_falls_through_to_the_next_value(
        ns: NetNS, select: Callable[..., ExternalInterface], caplog: pytest.LogCaptureFixture) -> None:
    add_veth(ns, "noaddr0", "2001:db8:5::5/64")
    with caplog.at_level(logging.INFO, logger="flannel.iface"):
        assert select(ifaces=["noaddr0", "dummy0"]).name == "dummy0"
    assert "failed to find IPv4 address for interface noaddr0" in caplog.text


def test_iface_options_fall_back_to_regex_then_can_reach(select: Callable[..., ExternalInterface]) -> None:
    ext = select(ifaces=["nosuch0"], regexes=[r"^10\.99\."], can_reach="172.16.32.254")
    assert (ext.name, ext.iface_addr) == ("dummy0", V4("172.16.32.100"))


def test_nothing_matching_fails_with_upstreams_text(select: Callable[..., ExternalInterface],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="flannel.iface"), pytest.raises(FlannelError) as err:
        select(ifaces=["nosuch0", "203.0.113.9"], regexes=[r"^10\.99\."], can_reach="198.51.100.1")
    assert str(err.value) == NO_MATCH
    assert "Could not match pattern ^10\\.99\\. to any of the available network interfaces (" in caplog.text
    assert "dummy0:[1.10.100.1 192.168.200.128 172.16.30.18 172.16.31.200 172.16.32.100]" in caplog.text


def test_dual_stack_iface_ip_rejects_public_ipv6_on_another_interface(
        ns: NetNS, select: Callable[..., ExternalInterface], caplog: pytest.LogCaptureFixture) -> None:
    add_veth(ns, "eth1", "10.0.0.1/24", "2001:db8:2::1/64")
    with caplog.at_level(logging.INFO, logger="flannel.iface"), pytest.raises(FlannelError, match=NO_MATCH):
        select(ifaces=["172.16.30.18"], public_ipv6="2001:db8:2::1", **DUAL)
    assert "v6 interface eth1 must be the same with v4 interface dummy0" in caplog.text


# -- no iface option: --public-ip owner, then the default route -----------------------------------------


def test_public_ip_selects_the_interface_that_owns_it(select: Callable[..., ExternalInterface]) -> None:
    ext = select(public_ip="172.16.31.200")
    assert (ext.name, ext.iface_addr, ext.ext_addr) == ("dummy0", V4("172.16.31.200"), V4("172.16.31.200"))


def test_public_ip_that_no_interface_owns_is_an_error(select: Callable[..., ExternalInterface]) -> None:
    with pytest.raises(FlannelError) as err:
        select(public_ip="203.0.113.9")
    assert str(err.value) == "error looking up interface 203.0.113.9: No interface with given IP found"


def test_public_ipv6_selects_its_owner_in_the_v6_stack(select: Callable[..., ExternalInterface]) -> None:
    ext = select(public_ipv6="2001:db8::1", **V6ONLY)
    assert (ext.name, ext.iface_v6_addr, ext.ext_v6_addr, ext.ext_addr) == (
        "dummy0", V6("2001:db8::1"), V6("2001:db8::1"), None)


def test_dual_stack_public_ips_must_share_an_interface(ns: NetNS, select: Callable[..., ExternalInterface]) -> None:
    add_veth(ns, "eth1", "10.0.0.1/24", "2001:db8:2::1/64")
    ext = select(public_ip="10.0.0.1", public_ipv6="2001:db8:2::1", **DUAL)
    assert (ext.name, ext.iface_addr, ext.iface_v6_addr) == ("eth1", V4("10.0.0.1"), V6("2001:db8:2::1"))
    with pytest.raises(FlannelError) as err:
        select(public_ip="172.16.30.18", public_ipv6="2001:db8:2::1", **DUAL)
    assert str(err.value) == "v6 interface eth1 must be the same with v4 interface dummy0"


def test_default_route_interface_is_selected(ns: NetNS, select: Callable[..., ExternalInterface]) -> None:
    add_veth(ns, "eth1", "10.0.0.1/24")
    ns.ip("route", "add", "default", "via", "10.0.0.254", "dev", "eth1")
    ext = select()
    assert (ext.name, ext.iface_addr, ext.ext_addr) == ("eth1", V4("10.0.0.1"), V4("10.0.0.1"))


def test_no_default_route_is_an_error(select: Callable[..., ExternalInterface]) -> None:
    with pytest.raises(FlannelError) as err:
        select()
    assert str(err.value) == "failed to get default interface: Unable to find default route"


def test_dual_stack_default_routes_on_one_interface(ns: NetNS, select: Callable[..., ExternalInterface]) -> None:
    ns.ip("route", "add", "default", "dev", "dummy0")
    ns.ip("-6", "route", "add", "default", "via", "2001:db8::fe", "dev", "dummy0")
    ext = select(**DUAL)
    assert (ext.name, ext.iface_addr, ext.iface_v6_addr) == ("dummy0", V4("1.10.100.1"), V6("2001:db8::1"))


def test_dual_stack_default_routes_on_different_interfaces_are_refused(
        ns: NetNS, select: Callable[..., ExternalInterface]) -> None:
    add_veth(ns, "eth1", "10.0.0.1/24", "2001:db8:2::1/64")
    ns.ip("route", "add", "default", "dev", "dummy0")
    ns.ip("-6", "route", "add", "default", "dev", "eth1")
    with pytest.raises(FlannelError) as err:
        select(**DUAL)
    assert str(err.value) == "v6 default route interface eth1 must be the same with v4 default route interface dummy0"


def test_default_interface_without_an_ipv4_address_is_an_error(
        ns: NetNS, select: Callable[..., ExternalInterface]) -> None:
    add_veth(ns, "noaddr0", "2001:db8:5::5/64")
    ns.ip("route", "add", "default", "dev", "noaddr0")
    with pytest.raises(FlannelError) as err:
        select()
    assert str(err.value) == "failed to find IPv4 address for interface noaddr0"


def test_default_interface_without_an_ipv6_address_is_an_error(
        ns: NetNS, select: Callable[..., ExternalInterface]) -> None:
    add_veth(ns, "v4only0", "10.0.0.1/24", addrgen=False)  # no link-local either
    ns.ip("route", "add", "default", "dev", "v4only0")
    ns.ip("-6", "route", "add", "default", "dev", "v4only0")
    with pytest.raises(FlannelError) as err:
        select(**DUAL)
    assert str(err.value) == "failed to find IPv6 address for interface v4only0"


# -- choosing the interface address ---------------------------------------------------------------------


def test_address_ranking_prefers_global_then_permanent(ns: NetNS, select: Callable[..., ExternalInterface]) -> None:
    add_veth(ns, "rank0", "169.254.7.7/16")
    ns.ip("addr", "add", "10.20.0.2/24", "dev", "rank0", "valid_lft", "300", "preferred_lft", "300")
    ns.ip("addr", "add", "10.20.1.2/24", "dev", "rank0")
    assert select(ifaces=["rank0"]).iface_addr == V4("10.20.1.2")  # global and permanent
    ns.ip("addr", "del", "10.20.1.2/24", "dev", "rank0")
    assert select(ifaces=["rank0"]).iface_addr == V4("10.20.0.2")  # global beats permanent link-local
    ns.ip("addr", "del", "10.20.0.2/24", "dev", "rank0")
    assert select(ifaces=["rank0"]).iface_addr == V4("169.254.7.7")  # link-local will do


def test_ipv6_ranking_prefers_global_over_link_local(ns: NetNS, select: Callable[..., ExternalInterface]) -> None:
    add_veth(ns, "rank0", "fe80::7/64", "2001:db8:7::7/64", addrgen=False)
    assert select(ifaces=["rank0"], **V6ONLY).iface_v6_addr == V6("2001:db8:7::7")
    ns.ip("addr", "del", "2001:db8:7::7/64", "dev", "rank0")
    assert select(ifaces=["rank0"], **V6ONLY).iface_v6_addr == V6("fe80::7")


def test_deprecated_addresses_are_skipped(ns: NetNS, select: Callable[..., ExternalInterface],
                                          caplog: pytest.LogCaptureFixture) -> None:
    add_veth(ns, "old0")
    ns.ip("addr", "add", "10.30.0.2/24", "dev", "old0", "preferred_lft", "0")
    assert "deprecated" in ns.ip("addr", "show", "dev", "old0").stdout
    ns.ip("route", "add", "default", "dev", "old0")
    with pytest.raises(FlannelError) as err:
        select()
    assert str(err.value) == "failed to find IPv4 address for interface old0"
    ns.ip("addr", "add", "169.254.9.9/16", "dev", "old0")
    assert select().iface_addr == V4("169.254.9.9")
    with caplog.at_level(logging.INFO, logger="flannel.iface"), pytest.raises(FlannelError, match=NO_MATCH):
        select(regexes=[r"^10\.30\.0\.2$"])  # a deprecated address is not matched either
