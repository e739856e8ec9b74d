"""The XFRM policy messages, byte by byte, against the layout of the kernel's ``include/uapi/linux/xfrm.h``."""

from __future__ import annotations

import socket
import struct

from flannel.netlink import wire
from flannel.netlink.xfrm import (
    ALL_ALGOS,
    XFRM_INF,
    XFRM_MSG_NEWPOLICY,
    XFRMA_TMPL,
    pack_policy,
    pack_policy_id,
    parse_policy,
    policy_from_text,
)

OUT = policy_from_text("10.244.1.0/24", "10.244.2.0/24", "out", "198.18.0.11", "198.18.0.12", 11)


def test_userpolicy_info_and_template_fields_sit_where_the_kernel_reads_them() -> None:
    body = pack_policy(OUT)
    assert len(body) == 168 + 4 + 64
    # struct xfrm_selector: daddr (0), saddr (16), ports (32..39), family (40), prefixlen_d, prefixlen_s, proto
    assert body[0:4] == bytes([10, 244, 2, 0]) and body[4:16] == bytes(12)
    assert body[16:20] == bytes([10, 244, 1, 0]) and body[32:40] == bytes(8)
    assert struct.unpack_from("=HBBB", body, 40) == (socket.AF_INET, 24, 24, 0)
    # struct xfrm_lifetime_cfg (56): byte and packet limits infinite, no expiry; xfrm_lifetime_cur (120): zero
    assert struct.unpack_from("=8Q", body, 56) == (XFRM_INF,) * 4 + (0,) * 4
    assert body[120:152] == bytes(32)
    # priority, index, dir (1 = out), action (allow), flags, share
    assert struct.unpack_from("=IIBBBB", body, 152) == (0, 0, 1, 0, 0, 0)
    # one XFRMA_TMPL attribute holding one struct xfrm_user_tmpl
    assert struct.unpack_from("=HH", body, 168) == (68, XFRMA_TMPL)
    t = body[172:]
    assert t[0:4] == bytes([198, 18, 0, 12]) and struct.unpack_from("=I", t, 16) == (0,)  # id.daddr, id.spi
    assert t[20] == 50  # id.proto: ESP
    assert struct.unpack_from("=H", t, 24) == (socket.AF_INET,)
    assert t[28:32] == bytes([198, 18, 0, 11])  # saddr
    assert struct.unpack_from("=IBBB", t, 44) == (11, 1, 0, 0)  # reqid, mode tunnel, share, optional
    assert struct.unpack_from("=III", t, 52) == (ALL_ALGOS,) * 3


def test_the_delete_message_names_selector_and_direction() -> None:
    body = pack_policy_id(policy_from_text("10.244.2.0/24", "10.244.1.0/24", "fwd", "198.18.0.12", "198.18.0.11",
                                           11))
    assert len(body) == 64
    assert body[0:4] == bytes([10, 244, 1, 0]) and body[16:20] == bytes([10, 244, 2, 0])
    assert struct.unpack_from("=IB", body, 56) == (0, 2)


def test_a_dumped_policy_parses_back_to_what_was_packed() -> None:
    msg = wire.message(XFRM_MSG_NEWPOLICY, 2, 1, pack_policy(OUT))
    [(mtype, _flags, _seq, start, end)] = list(wire.iter_messages(msg))
    assert mtype == XFRM_MSG_NEWPOLICY
    assert parse_policy(msg, start, end) == OUT


def test_a_policy_without_template_parses_with_none() -> None:
    body = pack_policy(OUT)[:168]
    parsed = parse_policy(body, 0, len(body))
    assert parsed is not None and parsed.tmpl_src is None and parsed.reqid == 0
