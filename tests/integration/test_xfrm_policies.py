"""XFRM policies through flannel's own NETLINK_XFRM socket, read back with ``ip xfrm policy`` in a namespace."""

from __future__ import annotations

import subprocess

import pytest

from flannel.netlink.xfrm import Xfrm, policy_from_text
from tests.netns import NetNS, netns_fixture  # noqa: F401

pytestmark = pytest.mark.root

OUT = policy_from_text("10.244.1.0/24", "10.244.2.0/24", "out", "198.18.0.11", "198.18.0.12", 11)
FWD = policy_from_text("10.244.2.0/24", "10.244.1.0/24", "fwd", "198.18.0.12", "198.18.0.11", 11)


def ip_xfrm(ns: NetNS) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns.name, "ip", "xfrm", "policy", "show"], check=True,
                         capture_output=True, text=True).stdout
    return " ".join(out.split())


def test_update_is_idempotent_list_reads_back_and_delete_says_whether_it_found_one(netns: NetNS) -> None:
    with Xfrm(netns.name) as x:
        x.update_policy(OUT)
        x.update_policy(OUT)  # add-or-replace: no EEXIST
        x.update_policy(FWD)
        assert ("src 10.244.1.0/24 dst 10.244.2.0/24 dir out priority 0 ptype main tmpl src 198.18.0.11 "
                "dst 198.18.0.12 proto esp reqid 11 mode tunnel") in ip_xfrm(netns)
        assert ("src 10.244.2.0/24 dst 10.244.1.0/24 dir fwd priority 0 ptype main tmpl src 198.18.0.12 "
                "dst 198.18.0.11 proto esp reqid 11 mode tunnel") in ip_xfrm(netns)
        assert {p for p in x.policies() if p.reqid == 11} == {OUT, FWD}
        assert x.delete_policy(OUT) is True
        assert x.delete_policy(OUT) is False
        assert "dir out" not in ip_xfrm(netns)
        assert {p for p in x.policies() if p.reqid == 11} == {FWD}
