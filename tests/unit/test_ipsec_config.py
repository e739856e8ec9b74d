"""The ipsec backend's config, the connection it loads into charon, and its MTU, against spec §10.7."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from flannel.backend.base import BackendContext, ExternalInterface
from flannel.backend.ipsec_charon import CHARON_PATHS, CharonError, find_charon
from flannel.backend.ipsec_config import (
    DEFAULT_ESP_PROPOSAL,
    PSK_TOO_SHORT,
    IPsecConfig,
    Peer,
    connection,
    ipsec_mtu,
    parse_ipsec_config,
    shared_key,
)
from flannel.backend.registry import create_backend
from flannel.config import NetworkConfig
from flannel.errors import ConfigError
from flannel.netlink.xfrm import XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT, XfrmPolicy
from flannel.secret import Secret

PSK = "k" * 96
PEER = Peer(IPv4Address("10.0.0.5"), IPv4Network("10.244.1.0/24"), IPv4Address("10.0.0.6"),
            IPv4Network("10.244.2.0/24"))


def test_defaults_are_upstreams() -> None:
    cfg = parse_ipsec_config({"Type": "ipsec", "PSK": PSK})
    assert cfg.psk == Secret(PSK) and cfg.udp_encap is False and cfg.esp_proposal == DEFAULT_ESP_PROPOSAL
    assert DEFAULT_ESP_PROPOSAL == "aes128gcm16-sha256-prfsha256-ecp256"


def test_keys_are_case_insensitive_as_in_go() -> None:
    cfg = parse_ipsec_config({"psk": PSK, "udpencap": True, "espproposal": "aes256gcm16-ecp384"})
    assert cfg.udp_encap is True and cfg.esp_proposal == "aes256gcm16-ecp384"


@pytest.mark.parametrize("psk", [None, "", "k" * 95])
def test_a_missing_or_short_psk_is_upstreams_error(psk: str | None) -> None:
    backend: dict[str, Any] = {"Type": "ipsec"} if psk is None else {"Type": "ipsec", "PSK": psk}
    with pytest.raises(ConfigError) as err:
        parse_ipsec_config(backend)
    assert str(err.value) == PSK_TOO_SHORT == "config error, password is too short"
    assert err.value.field == "Backend.PSK"


def test_a_psk_of_96_characters_is_enough() -> None:
    assert parse_ipsec_config({"PSK": "x" * 96}).psk.reveal() == "x" * 96


@pytest.mark.parametrize(("key", "value"), [("PSK", 12345), ("PSK", ["k" * 96]), ("UDPEncap", "true"),
                                            ("UDPEncap", 1), ("ESPProposal", 7), ("ESPProposal", ["x"]),
                                            ("ESPProposal", "")])
def test_a_value_of_the_wrong_type_names_its_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_ipsec_config({"PSK": PSK, key: value})
    assert err.value.field == f"Backend.{key}"


def test_the_psk_never_shows_in_repr_or_errors() -> None:
    cfg = parse_ipsec_config({"PSK": PSK})
    assert PSK not in repr(cfg) and PSK not in str(cfg)
    with pytest.raises(ConfigError) as err:
        parse_ipsec_config({"PSK": 1234567})
    assert "1234567" not in str(err.value)


def test_mtu_is_external_less_77_and_8_more_with_udp_encap() -> None:
    assert ipsec_mtu(1500, False) == 1423
    assert ipsec_mtu(1500, True) == 1415
    assert ipsec_mtu(9001, False) == 8924


def test_userspace_esp_mtu_is_bounded_by_ipsec0_and_always_counts_the_udp_header() -> None:
    assert ipsec_mtu(1500, False, userspace_esp=True) == 1400  # ipsec0's 1400, below 1500 - 85
    assert ipsec_mtu(1480, False, userspace_esp=True) == 1395  # 1480 - 77 - 8 (libipsec always encapsulates)
    assert ipsec_mtu(9001, True, userspace_esp=True) == 1400


def test_the_connection_is_exactly_upstreams_table() -> None:
    cfg = IPsecConfig(psk=Secret(PSK))
    assert connection(PEER, cfg) == {
        "10.0.0.5-10.244.1.0/24-10.244.2.0/24-10.0.0.6": {
            "local_addrs": ["10.0.0.5"],
            "remote_addrs": ["10.0.0.6"],
            "proposals": ["aes256-sha256-modp4096"],
            "version": "2",
            "keyingtries": "0",
            "encap": "false",
            "local": {"auth": "psk"},
            "remote": {"auth": "psk"},
            "children": {
                "10.244.1.0/24-10.244.2.0/24": {
                    "local_ts": ["10.244.1.0/24"],
                    "remote_ts": ["10.244.2.0/24"],
                    "esp_proposals": ["aes128gcm16-sha256-prfsha256-ecp256"],
                    "start_action": "start",
                    "close_action": "trap",
                    "dpd_action": "restart",
                    "mode": "tunnel",
                    "reqid": "11",
                    "rekey_time": "1h",
                    "policies": "no",
                },
            },
        },
    }


def test_udp_encap_and_the_esp_proposal_reach_the_connection() -> None:
    cfg = IPsecConfig(psk=Secret(PSK), udp_encap=True, esp_proposal="aes256-sha256")
    conn = connection(PEER, cfg)[PEER.conn_name]
    assert conn["encap"] == "true"
    assert conn["children"][PEER.child_name]["esp_proposals"] == ["aes256-sha256"]


def test_the_shared_key_is_owned_by_the_public_ip_and_replaceable_by_id() -> None:
    assert shared_key(IPv4Address("10.0.0.6"), Secret(PSK)) == {
        "id": "flannel-10.0.0.6", "type": "IKE", "data": PSK, "owners": ["10.0.0.6"]}


def test_the_three_policies_are_out_in_fwd_with_reqid_11_esp_tunnel() -> None:
    out, inn, fwd = PEER.policies()
    local, remote = IPv4Address("10.0.0.5"), IPv4Address("10.0.0.6")
    mine, theirs = IPv4Network("10.244.1.0/24"), IPv4Network("10.244.2.0/24")
    assert out == XfrmPolicy(mine, theirs, XFRM_POLICY_OUT, local, remote, 11)
    assert inn == XfrmPolicy(theirs, mine, XFRM_POLICY_IN, remote, local, 11)
    assert fwd == XfrmPolicy(theirs, mine, XFRM_POLICY_FWD, remote, local, 11)
    assert out.describe() == ("xfrm policy update src 10.244.1.0/24 dst 10.244.2.0/24 dir out tmpl src 10.0.0.5 "
                              "dst 10.0.0.6 proto esp reqid 11 mode tunnel")


def test_charon_is_looked_up_in_upstreams_order() -> None:
    asked: list[str] = []

    def which(path: str) -> str | None:
        asked.append(path)
        return path if path == "/usr/lib/ipsec/charon" else None

    assert find_charon(which) == "/usr/lib/ipsec/charon"
    assert asked == ["charon", "/usr/lib/strongswan/charon", "/usr/lib/ipsec/charon"]
    with pytest.raises(CharonError, match="no charon executable found at charon, /usr/lib/strongswan/charon"):
        find_charon(lambda _: None)
    assert CHARON_PATHS[3:] == ("/usr/libexec/strongswan/charon", "/usr/libexec/ipsec/charon")


EXT = ExternalInterface(name="eth0", index=2, mtu=1500, iface_addr=IPv4Address("198.18.0.1"), iface_v6_addr=None,
                        ext_addr=IPv4Address("198.18.0.1"), ext_v6_addr=None)


def test_the_registry_builds_the_ipsec_backend_and_refuses_ipv6() -> None:
    ctx = BackendContext(None, EXT)  # type: ignore[arg-type]
    net = IPv4Network("10.244.0.0/16")
    backend = create_backend(ctx, NetworkConfig(network=net, backend_type="ipsec", backend={"PSK": PSK}))
    assert type(backend).__name__ == "IPsecBackend"
    with pytest.raises(ConfigError, match="password is too short"):
        create_backend(ctx, NetworkConfig(network=net, backend_type="IPsec", backend={"PSK": "short"}))
    with pytest.raises(ConfigError) as err:
        create_backend(ctx, NetworkConfig(network=net, backend_type="ipsec", backend={"PSK": PSK},
                                          enable_ipv6=True))
    assert err.value.field == "EnableIPv6"


def test_userspace_esp_is_off_by_default_and_only_changes_who_installs_policies() -> None:
    assert parse_ipsec_config({"PSK": PSK}).userspace_esp is False
    cfg = parse_ipsec_config({"PSK": PSK, "UserspaceESP": True})
    kernel = connection(PEER, IPsecConfig(psk=Secret(PSK)))[PEER.conn_name]
    user = connection(PEER, cfg)[PEER.conn_name]
    assert user["children"][PEER.child_name].pop("policies") == "yes"
    assert kernel["children"][PEER.child_name].pop("policies") == "no"
    assert user == kernel, "everything the peer sees is the same"
    with pytest.raises(ConfigError) as err:
        parse_ipsec_config({"PSK": PSK, "UserspaceESP": "yes"})
    assert err.value.field == "Backend.UserspaceESP"
