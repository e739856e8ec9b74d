"""Traffic-rule generation without a kernel: upstream's rules and payload vector, our transactions, the plan."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest

from flannel.config import NetworkConfig
from flannel.lease import Lease
from flannel.traffic import nft_rules
from flannel.traffic.base import MasqTarget, TrafficPlan
from flannel.traffic.iptables_rules import (
    FORWARD,
    MASQ,
    Observed,
    TableListing,
    expected,
    format_line,
    forward_rules,
    install_lines,
    masq_rules,
    removal_lines,
    restore_payload,
)
from flannel.traffic.keeper import TrafficSettings, plan_for

N, P = ip_network("10.244.0.0/16"), ip_network("10.244.1.0/24")
N6, P6 = ip_network("fd00:10:244::/56"), ip_network("fd00:10:244:1::/64")

# §11.1, with N = 10.244.0.0/16, P = 10.244.1.0/24 and RF = " --random-fully".
SPEC_NAT_V4 = [
    '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
    '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" '
    "-j MASQUERADE --random-fully",
    '-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" '
    "-j MASQUERADE --random-fully",
]


def test_upstream_restore_payload_vector() -> None:
    rules = [["-A", "INPUT", "-s", "127.0.0.1", "-d", "127.0.0.1", "-j", "RETURN"],
             ["-A", "INPUT", "-s", "127.0.0.1", "!", "-d", "224.0.0.0/4", "-m", "comment", "--comment",
              "flanneld masq", "-j", "MASQUERADE", "--random-fully"]]
    block = ("-A INPUT -s 127.0.0.1 -d 127.0.0.1 -j RETURN\n"
             '-A INPUT -s 127.0.0.1 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE'
             " --random-fully\nCOMMIT\n")
    payload = restore_payload({"filter": rules, "nat": rules})
    assert payload in (f"*filter\n{block}*nat\n{block}", f"*nat\n{block}*filter\n{block}")


def test_a_one_word_comment_is_quoted_like_upstream() -> None:
    assert format_line(["-m", "comment", "--comment", "flanneld", "-j", "RETURN"]) == \
        '-m comment --comment "flanneld" -j RETURN'


def test_seven_ipv4_masq_rules_read_as_the_spec_lists_them() -> None:
    rule_set = masq_rules(N, P, random_fully=True)
    want = expected(rule_set)
    assert len(rule_set.rules) + 1 == 7  # upstream's test: 7 IPv4 masq rules, the jump included
    assert [*want.jumps, *(want.rules or ())] == SPEC_NAT_V4


def test_ipv6_masq_rules_use_the_ipv6_network_and_ff00() -> None:
    lines = expected(masq_rules(N6, P6, random_fully=False)).rules or ()
    assert lines[1] == ('-A FLANNEL-POSTRTG -s fd00:10:244:1::/64 -d fd00:10:244::/56 -m comment --comment '
                        '"flanneld masq" -j RETURN')
    assert lines[4] == ('-A FLANNEL-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8 -m comment --comment '
                        '"flanneld masq" -j MASQUERADE')
    assert not any("--random-fully" in line for line in lines)


def test_forward_rules_read_as_the_spec_lists_them() -> None:
    want = expected(forward_rules(N))
    assert [*want.jumps, *(want.rules or ())] == [
        '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
        '-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
        '-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
    ]


def listing(*lines: str) -> TableListing:
    return TableListing("\n".join(["-P POSTROUTING ACCEPT", *lines]) + "\n")


JUMP = '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG'


def test_first_install_creates_the_chain_and_appends_one_jump() -> None:
    lines = install_lines(masq_rules(N, P, True), listing())
    assert lines[0] == [":FLANNEL-POSTRTG", "-", "[0:0]"]
    assert [line[0] for line in lines].count("-D") == 0
    assert lines[-1] == ["-A", "POSTROUTING", *MASQ.jump]
    assert len(lines) == 8


def test_every_existing_jump_is_deleted_before_the_one_jump_is_appended() -> None:
    current = listing("-N FLANNEL-POSTRTG", JUMP, "-A POSTROUTING -j KUBE-POSTROUTING", JUMP,
                      "-A POSTROUTING -j FLANNEL-POSTRTG")
    lines = install_lines(masq_rules(N, P, True), current)
    deletes = [line for line in lines if line[0] == "-D"]
    assert deletes == [["-D", "POSTROUTING", *MASQ.jump]] * 2 + [["-D", "POSTROUTING", "-j", "FLANNEL-POSTRTG"]]
    assert lines.index(deletes[0]) < lines.index(["-A", "POSTROUTING", *MASQ.jump])


def test_removal_deletes_the_references_before_the_chain() -> None:
    current = listing("-N FLANNEL-POSTRTG", "-N OTHER", JUMP, "-A OTHER -g FLANNEL-POSTRTG",
                      '-A FLANNEL-POSTRTG -s 10.0.0.0/8 -m comment --comment "flanneld masq" -j RETURN')
    assert removal_lines(MASQ, current) == [
        ["-D", "POSTROUTING", *MASQ.jump], ["-D", "OTHER", "-g", "FLANNEL-POSTRTG"],
        [":FLANNEL-POSTRTG", "-", "[0:0]"], ["-X", "FLANNEL-POSTRTG"]]
    assert removal_lines(FORWARD, current) == []


def test_observe_and_drift() -> None:
    want = expected(masq_rules(N, P, True))
    assert want.rules is not None
    ok = listing("-N FLANNEL-POSTRTG", *want.jumps, *want.rules)
    assert ok.observe(MASQ) == want and want.drift_from(want) == ""
    gone = listing(*want.jumps)
    assert gone.observe(MASQ).drift_from(want) == "chain missing"
    short = Observed(want.rules[:-1], ())
    assert short.drift_from(want) == f"missing: {want.rules[-1]}; jump from the parent chain missing"
    doubled = Observed(want.rules, want.jumps * 2)
    assert doubled.drift_from(want) == "2 jumps from the parent chain instead of 1"
    flushed = Observed((), want.jumps)
    assert flushed.drift_from(want) == "; ".join(f"missing: {r}" for r in want.rules[:3]) + "; and 3 more"
    swapped = Observed((want.rules[1], want.rules[0], *want.rules[2:]), want.jumps)
    assert swapped.drift_from(want) == "rules out of order"


def test_nft_table_reads_as_the_spec_lists_it() -> None:
    plan = TrafficPlan(masq=(MasqTarget(N, P),), forward=(N,))
    text = nft_rules.table_definition(nft_rules.TABLES[0], plan, fully_random=True)
    assert text == """table ip flannel-ipv4 {
	comment "rules for flannel-ipv4"
	chain postrtg {
		comment "chain to manage traffic masquerading by flannel"
		type nat hook postrouting priority srcnat; policy accept;
		meta mark 0x4000 return
		ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
		ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
		ip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return
		ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
		ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
	}
	chain forward {
		comment "chain to accept flannel traffic"
		type filter hook forward priority filter; policy accept;
		ip saddr 10.244.0.0/16 accept
		ip daddr 10.244.0.0/16 accept
	}
}
"""


def test_nft_ipv6_table_and_no_fully_random() -> None:
    plan = TrafficPlan(masq=(MasqTarget(N, P), MasqTarget(N6, P6)), forward=())
    text = nft_rules.table_definition(nft_rules.TABLES[1], plan, fully_random=False)
    assert "table ip6 flannel-ipv6 {" in text and "chain forward" not in text
    assert "\t\tip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade\n" in text
    assert "fully-random" not in text


def test_nft_script_replaces_both_tables_in_one_transaction() -> None:
    script = nft_rules.replace_script(TrafficPlan(forward=(N,)), fully_random=True)
    assert script.startswith("table ip flannel-ipv4 {}\ndelete table ip flannel-ipv4\ntable ip flannel-ipv4 {\n")
    assert "table ip6 flannel-ipv6 {}\ndelete table ip6 flannel-ipv6\ntable ip6 flannel-ipv6 {\n" in script
    assert "postrtg" not in script


def test_nft_existing_tables() -> None:
    out = "table ip filter\ntable ip flannel-ipv4\ntable inet x\n"
    assert nft_rules.existing_tables(out) == {"ip filter", "ip flannel-ipv4", "inet x"}
    assert nft_rules.delete_script(["ip flannel-ipv4"]) == "delete table ip flannel-ipv4\n"


def settings(masq: bool = True, forward: bool = True, no_random: bool = False) -> TrafficSettings:
    return TrafficSettings(ip_masq=masq, forward_rules=forward, random_fully_disable=no_random, resync_seconds=5,
                           nftables=False, subnet_file="/nonexistent/subnet.env")


def test_plan_for_dual_stack() -> None:
    config = NetworkConfig(network=IPv4Network(N), ipv6_network=IPv6Network(N6), enable_ipv6=True)
    lease = Lease(subnet=IPv4Network(P), ipv6_subnet=IPv6Network(P6))
    plan = plan_for(settings(), config, lease)
    assert plan == TrafficPlan(masq=(MasqTarget(N, P), MasqTarget(N6, P6)), forward=(N, N6), random_fully=True)
    assert plan_for(settings(masq=False, no_random=True), config, lease) == TrafficPlan(forward=(N, N6),
                                                                                         random_fully=False)
    assert plan_for(settings(forward=False), config, lease).forward == ()


def test_plan_for_skips_a_disabled_family() -> None:
    config = NetworkConfig(network=IPv4Network(N), ipv6_network=IPv6Network(N6), enable_ipv6=False)
    plan = plan_for(settings(), config, Lease(subnet=IPv4Network(P), ipv6_subnet=IPv6Network(P6)))
    assert plan.masq == (MasqTarget(N, P),) and plan.forward == (N,)


def test_plan_refuses_two_entries_for_one_family() -> None:
    with pytest.raises(ValueError, match="two forward entries"):
        TrafficPlan(forward=(N, ip_network("10.0.0.0/8")))
    with pytest.raises(ValueError, match="mixes families"):
        MasqTarget(N, P6)
