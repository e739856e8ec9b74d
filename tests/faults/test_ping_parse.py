"""Counting lost pings from iputils ping's output (no root needed)."""

from __future__ import annotations

from tests.faults.observe import parse_ping

HEAD = "PING 10.244.31.2 (10.244.31.2) 56(84) bytes of data.\n"


def reply(seq: int) -> str:
    return f"64 bytes from 10.244.31.2: icmp_seq={seq} ttl=62 time=0.1 ms\n"


def unreachable(seq: int) -> str:
    return f"From 10.244.32.1 icmp_seq={seq} Destination Net Unreachable\n"


def summary(sent: int, received: int) -> str:
    return f"\n--- 10.244.31.2 ping statistics ---\n{sent} packets transmitted, {received} received\n"


def test_every_reply_means_nothing_lost() -> None:
    assert parse_ping("a", HEAD + reply(1) + reply(2) + summary(2, 2)).lost == 0


def test_a_last_echo_still_pending_at_stop_is_not_lost() -> None:
    r = parse_ping("a", HEAD + reply(1) + reply(2) + summary(3, 2))
    assert (r.sent, r.lost) == (2, 0)


def test_gaps_and_icmp_errors_are_lost_even_at_the_end() -> None:
    text = HEAD + reply(1) + unreachable(2) + reply(3) + unreachable(4) + summary(4, 2)
    assert (parse_ping("a", text).sent, parse_ping("a", text).lost) == (4, 2)


def test_silent_gaps_are_lost() -> None:
    r = parse_ping("a", HEAD + reply(1) + reply(4) + reply(5) + summary(6, 3))
    assert (r.sent, r.lost) == (5, 2)
