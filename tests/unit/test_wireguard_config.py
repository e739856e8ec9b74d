"""The wireguard backend's settings (spec §10.6), the node's environment choices, and the key file."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from flannel.backend.wireguard_config import (
    Impl,
    Mode,
    NodeSettings,
    node_settings,
    parse_wireguard_config,
)
from flannel.backend.wireguard_key import b64, clamp, load_or_create, public_key, x25519
from flannel.errors import ConfigError, FlannelError
from flannel.secret import Secret

PSK = base64.b64encode(bytes(range(32))).decode()


def test_defaults_are_upstreams() -> None:
    cfg = parse_wireguard_config({"Type": "wireguard"})
    assert (cfg.listen_port, cfg.listen_port_v6, cfg.mtu, cfg.keepalive, cfg.mode) == (51820, 51821, 0, 0,
                                                                                       Mode.SEPARATE)
    assert not cfg.psk


def test_every_key_is_read_case_insensitively() -> None:
    cfg = parse_wireguard_config({"listenport": 1, "LISTENPORTV6": 2, "mtu": 1400, "psk": PSK,
                                  "persistentkeepaliveinterval": 25, "mode": "auto"})
    assert (cfg.listen_port, cfg.listen_port_v6, cfg.mtu, cfg.keepalive, cfg.mode) == (1, 2, 1400, 25, Mode.AUTO)
    assert cfg.psk == Secret(bytes(range(32)))


def test_null_means_the_default_as_in_go() -> None:
    cfg = parse_wireguard_config({"Mode": None, "ListenPort": None, "PSK": None})
    assert cfg.mode is Mode.SEPARATE and cfg.listen_port == 51820 and not cfg.psk


def test_the_psk_never_shows_in_repr() -> None:
    cfg = parse_wireguard_config({"PSK": PSK})
    assert PSK not in repr(cfg) and PSK not in str(cfg) and "redacted" in repr(cfg)


@pytest.mark.parametrize("mode", ["", "Auto", "dual", 1, ["auto"]])
def test_an_unknown_mode_is_upstreams_error(mode: object) -> None:
    with pytest.raises(ConfigError, match="no valid Mode configured") as err:
        parse_wireguard_config({"Mode": mode})
    assert err.value.field == "Backend.Mode"


@pytest.mark.parametrize(("section", "field", "text"), [
    ({"PSK": "not base64!"}, "Backend.PSK", "not valid base64"),
    ({"PSK": base64.b64encode(b"short").decode()}, "Backend.PSK", "32 bytes"),
    ({"PSK": 5}, "Backend.PSK", "must be a string"),
    ({"PersistentKeepaliveInterval": "25s"}, "Backend.PersistentKeepaliveInterval", "must be an integer"),
    ({"PersistentKeepaliveInterval": 2.5}, "Backend.PersistentKeepaliveInterval", "must be an integer"),
    ({"PersistentKeepaliveInterval": 65536}, "Backend.PersistentKeepaliveInterval", "between 0 and 65535"),
    ({"ListenPort": 0}, "Backend.ListenPort", "between 1 and 65535"),
    ({"ListenPort": 65536}, "Backend.ListenPort", "between 1 and 65535"),
    ({"ListenPortV6": -1}, "Backend.ListenPortV6", "between 1 and 65535"),
    ({"ListenPort": "51820"}, "Backend.ListenPort", "must be an integer"),
    ({"MTU": 100}, "Backend.MTU", "too small"),
])
def test_bad_values_name_their_field(section: dict[str, object], field: str, text: str) -> None:
    with pytest.raises(ConfigError, match=text) as err:
        parse_wireguard_config(section)
    assert err.value.field == field


def test_a_bad_psk_error_does_not_echo_the_value() -> None:
    secret = base64.b64encode(b"x" * 31).decode()
    with pytest.raises(ConfigError) as err:
        parse_wireguard_config({"PSK": secret})
    assert secret not in str(err.value)


def test_node_settings_come_from_the_environment() -> None:
    assert node_settings({}) == NodeSettings()
    s = node_settings({"WIREGUARD_KEY_FILE": "/k", "FLANNEL_WIREGUARD_IMPL": "Userspace",
                       "FLANNEL_WIREGUARD_REMOVE_ON_SHUTDOWN": "true", "FLANNEL_WIREGUARD_GO": "/opt/wg-go"})
    assert s == NodeSettings(key_file="/k", impl=Impl.USERSPACE, remove_on_shutdown=True, wireguard_go="/opt/wg-go")


@pytest.mark.parametrize(("env", "field"), [({"FLANNEL_WIREGUARD_IMPL": "fast"}, "FLANNEL_WIREGUARD_IMPL"),
                                            ({"FLANNEL_WIREGUARD_REMOVE_ON_SHUTDOWN": "maybe"},
                                             "FLANNEL_WIREGUARD_REMOVE_ON_SHUTDOWN")])
def test_bad_node_settings_name_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        node_settings(env)
    assert err.value.field == field


# --- keys --------------------------------------------------------------------------------------------------

def test_x25519_matches_rfc_7748() -> None:
    scalar = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    assert x25519(scalar, u).hex() == "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    assert public_key(Secret(alice)).hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"


def test_a_missing_key_file_is_created_as_upstream_does(tmp_path: Path) -> None:
    path = tmp_path / "flannel" / "wgkey"
    key = load_or_create(str(path))
    text = path.read_bytes()
    assert len(text) == 44 and not text.endswith(b"\n") and base64.b64decode(text) == key.reveal()
    assert stat.S_IMODE(path.stat().st_mode) == 0o400 and stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert key.reveal() == clamp(key.reveal())
    assert load_or_create(str(path)) == key


def test_a_key_file_written_by_wg_genkey_is_read(tmp_path: Path) -> None:
    path = tmp_path / "wgkey"
    raw = clamp(os.urandom(32))
    path.write_text(b64(raw) + "\n")
    assert load_or_create(str(path)).reveal() == raw


@pytest.mark.parametrize("content", [b"", b"garbage", base64.b64encode(b"x" * 16), b"\xff" * 44])
def test_a_corrupt_key_file_is_refused_and_left_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "wgkey"
    path.write_bytes(content)
    with pytest.raises(FlannelError, match=f"key file {path} does not hold a base64 WireGuard key"):
        load_or_create(str(path))
    assert path.read_bytes() == content
