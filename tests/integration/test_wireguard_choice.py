"""Choosing between the in-kernel WireGuard and wireguard-go, in a real namespace of this kernel (which has no
WireGuard module, so the kernel is always refused here: the test says so when run on a kernel that has one)."""

from __future__ import annotations

import errno
import shutil
import struct
from collections.abc import Iterator

import pytest

from flannel.backend.wireguard_config import Impl
from flannel.backend.wireguard_device import KernelDriver, UserspaceDriver, choose_driver
from flannel.backend.wireguard_genetlink import GenlClient
from flannel.errors import FlannelError
from flannel.netlink import Netlink, NetlinkError, wire
from tests.netns import NetNS, netns_fixture  # noqa: F401

pytestmark = [pytest.mark.root]


def kernel_has_wireguard() -> bool:
    try:
        GenlClient().close()
    except NetlinkError:
        return False
    return True


@pytest.fixture
def nl(netns: NetNS) -> Iterator[Netlink]:
    if kernel_has_wireguard():
        pytest.skip("this kernel has WireGuard: these tests cover a kernel without it")
    with Netlink(netns=netns.name) as sock:
        yield sock


def test_the_kernel_family_lookup_fails_cleanly_without_the_module() -> None:
    if kernel_has_wireguard():
        pytest.skip("this kernel has WireGuard")
    with pytest.raises(NetlinkError) as err:
        GenlClient()
    assert err.value.errno == errno.ENOENT


def test_the_generic_netlink_client_talks_to_this_kernel() -> None:
    """The request/ACK and dump framing of ``GenlClient``, against a family every kernel has (``nlctrl``)."""
    client = GenlClient(name="nlctrl")
    try:
        assert client.family == 0x10  # GENL_ID_CTRL
        dump = struct.pack("=BBH", 3, 1, 0)  # CTRL_CMD_GETFAMILY, every family
        msg = struct.pack("=IHHII", 16 + len(dump), 0x10, 0x1 | 0x300, 99, 0) + dump
        names = [wire.cstr(wire.nested(body[4:])[2]) for body in client._request([msg], "genl families")]
        assert "nlctrl" in names and ("wireguard" in names) == kernel_has_wireguard()
    finally:
        client.close()


def test_auto_falls_back_to_wireguard_go_and_leaves_no_device(nl: Netlink) -> None:
    if shutil.which("wireguard-go") is None:
        pytest.skip("wireguard-go is not installed")
    driver = choose_driver(nl, "flannel-wg", 1420, Impl.AUTO, "wireguard-go")
    assert isinstance(driver, UserspaceDriver)
    assert nl.link_by_name("flannel-wg") is None  # the failed probe made nothing


def test_neither_implementation_is_one_error_naming_both_remedies(nl: Netlink) -> None:
    with pytest.raises(FlannelError) as err:
        choose_driver(nl, "flannel-wg", 1420, Impl.AUTO, "/nonexistent/wireguard-go")
    text = str(err.value)
    assert "the kernel has no wireguard module" in text and "modprobe wireguard" in text
    assert "install the wireguard-go package" in text and "FLANNEL_WIREGUARD_GO" in text


def test_userspace_forced_without_the_program_says_so(nl: Netlink) -> None:
    with pytest.raises(FlannelError, match="FLANNEL_WIREGUARD_IMPL=userspace, but /nonexistent/wg-go is not"):
        choose_driver(nl, "flannel-wg", 1420, Impl.USERSPACE, "/nonexistent/wg-go")


def test_kernel_forced_is_refused_by_this_kernel(nl: Netlink) -> None:
    driver = choose_driver(nl, "flannel-wg", 1420, Impl.KERNEL, "wireguard-go")
    assert isinstance(driver, KernelDriver)
    with pytest.raises(NetlinkError) as err:
        driver.create()
    assert err.value.errno == errno.EOPNOTSUPP
