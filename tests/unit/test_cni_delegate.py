"""The pure delegate builder (§13.3) against every upstream test vector (§13.5), and its input checks (§13.1)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flannel.cni.delegate import (
    build_delegate,
    build_ipam,
    check_delegate,
    parse_routes,
    render,
    with_route_gateways,
)
from flannel.cni.errors import CNIError
from flannel.cni.netconf import DEFAULT_DATA_DIR, DEFAULT_SUBNET_FILE, NetConf, parse_netconf
from flannel.cni.subnet_file import SubnetEnv, parse_subnet_env

# Upstream's fixtures (flannel_linux_test.go), leading blank line included.
V4_ENV = "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
V6_ENV = "\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
DUAL_ENV = (
    "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\n"
    "FLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
)
MULTI_ENV = (
    "\nFLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
)
INPUT_ROUTES = [{"dst": "10.96.0.0/12"}, {"dst": "192.168.244.0/24", "gw": "10.1.17.20"}]


def env_of(text: str) -> SubnetEnv:
    env = parse_subnet_env(text, "subnet.env")
    assert isinstance(env, SubnetEnv), env
    return env


def conf_of(**extra: Any) -> NetConf:
    doc = {"name": "cni-flannel", "type": "flannel", "subnetFile": "/tmp/subnet.env", "dataDir": "/tmp/data", **extra}
    return parse_netconf(json.dumps(doc).encode())


def test_v4_delegate_is_byte_identical_to_upstream() -> None:
    expected = (
        '{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],'
        '"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}'
    )
    assert render(build_delegate(conf_of(), env_of(V4_ENV))) == expected.encode()


def test_multi_network_adds_a_route_per_network() -> None:
    delegate = build_delegate(conf_of(), env_of(MULTI_ENV))
    assert delegate["ipam"]["routes"] == [{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}]
    assert delegate["ipam"]["ranges"] == [[{"subnet": "10.1.17.0/24"}]]


def test_v6_delegate_uses_the_v6_route_and_range() -> None:
    delegate = build_delegate(conf_of(), env_of(V6_ENV))
    assert json.loads(render(delegate)) == {
        "ipMasq": False,
        "ipam": {"ranges": [[{"subnet": "fc00::/64"}]], "routes": [{"dst": "fc00::/48"}], "type": "host-local"},
        "isGateway": True,
        "mtu": 1472,
        "name": "cni-flannel",
        "type": "bridge",
    }


def test_dual_stack_delegate_lists_ipv4_first() -> None:
    ipam = build_delegate(conf_of(), env_of(DUAL_ENV))["ipam"]
    assert ipam["routes"] == [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}]
    assert ipam["ranges"] == [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]]


@pytest.mark.parametrize(
    ("env_text", "pod_routes", "ranges"),
    [
        (V4_ENV, [{"dst": "10.1.0.0/16"}], [[{"subnet": "10.1.17.0/24"}]]),
        (V6_ENV, [{"dst": "fc00::/48"}], [[{"subnet": "fc00::/64"}]]),
        (
            DUAL_ENV,
            [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}],
            [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]],
        ),
    ],
    ids=["v4", "v6", "dual"],
)
def test_custom_ipam_keeps_type_and_unknown_key_and_appends_routes(
    env_text: str, pod_routes: list[dict[str, str]], ranges: list[Any]
) -> None:
    ipam_in = {"type": "my-ipam", "unknown-param": "unknown-value", "routes": INPUT_ROUTES}
    ipam = build_ipam(ipam_in, env_of(env_text))
    assert ipam == {
        "type": "my-ipam",
        "unknown-param": "unknown-value",
        "routes": INPUT_ROUTES + pod_routes,
        "ranges": ranges,
    }
    assert ipam_in["routes"] == INPUT_ROUTES, "the input is not modified"


@pytest.mark.parametrize("env_text", [V4_ENV, V6_ENV, DUAL_ENV], ids=["v4", "v6", "dual"])
def test_ipam_without_type_becomes_host_local(env_text: str) -> None:
    ipam = build_ipam({"unknown-param": "unknown-value", "routes": INPUT_ROUTES}, env_of(env_text))
    assert ipam["type"] == "host-local"
    assert ipam["unknown-param"] == "unknown-value"


def test_ipam_with_two_networks_and_no_input_routes() -> None:
    ipam = build_ipam({"type": "host-local", "unknown-param": "unknown-value"}, env_of(MULTI_ENV))
    assert ipam["routes"] == [{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}]


def test_loader_honours_explicit_subnet_file_and_data_dir() -> None:
    conf = conf_of()
    assert (conf.name, conf.type, conf.subnet_file, conf.data_dir) == (
        "cni-flannel",
        "flannel",
        "/tmp/subnet.env",
        "/tmp/data",
    )


def test_loader_defaults() -> None:
    conf = parse_netconf(b'{"name": "cni-flannel", "type": "flannel"}')
    assert (conf.subnet_file, conf.data_dir) == (DEFAULT_SUBNET_FILE, DEFAULT_DATA_DIR)
    assert (DEFAULT_SUBNET_FILE, DEFAULT_DATA_DIR) == ("/run/flannel/subnet.env", "/var/lib/cni/flannel")
    assert conf.cni_version == "" and conf.version == "0.1.0"


def test_loader_matches_keys_case_insensitively_like_go() -> None:
    conf = parse_netconf(b'{"Name": "n", "SUBNETFILE": "/a", "subnetfile": "/b", "DataDir": "/d"}')
    assert (conf.name, conf.subnet_file, conf.data_dir) == ("n", "/b", "/d")


def test_user_delegate_keys_win_but_name_version_and_ipam_are_flannels() -> None:
    conf = conf_of(cniVersion="0.4.0", delegate={"type": "bridge", "mtu": 1400, "ipMasq": True, "bridge": "mynet0"})
    delegate = build_delegate(conf, env_of(V4_ENV))
    assert delegate["mtu"] == 1400 and delegate["ipMasq"] is True and delegate["bridge"] == "mynet0"
    assert delegate["cniVersion"] == "0.4.0" and delegate["name"] == "cni-flannel"


def test_ipmasq_is_the_inverse_of_flannel_ipmasq() -> None:
    env = env_of(V4_ENV.replace("FLANNEL_IPMASQ=true", "FLANNEL_IPMASQ=false"))
    assert build_delegate(conf_of(), env)["ipMasq"] is True


def test_is_gateway_only_defaults_for_bridge() -> None:
    delegate = build_delegate(conf_of(delegate={"type": "ipvlan", "master": "eth0"}), env_of(V4_ENV))
    assert "isGateway" not in delegate and delegate["type"] == "ipvlan"
    assert build_delegate(conf_of(delegate={"isGateway": False}), env_of(V4_ENV))["isGateway"] is False


def test_runtime_config_is_passed_to_the_delegate() -> None:
    runtime = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
    assert build_delegate(conf_of(runtimeConfig=runtime), env_of(V4_ENV))["runtimeConfig"] == runtime


def test_build_is_pure() -> None:
    conf, env = conf_of(delegate={"bridge": "b0"}, ipam={"routes": INPUT_ROUTES}), env_of(DUAL_ENV)
    first = render(build_delegate(conf, env))
    assert render(build_delegate(conf, env)) == first
    assert conf.delegate == {"bridge": "b0"} and conf.ipam == {"routes": INPUT_ROUTES}


@pytest.mark.parametrize(
    ("delegate", "message"),
    [
        ({"type": 3}, "'delegate' dictionary, if present, must have (string) 'type' field"),
        ({"type": None}, "'delegate' dictionary, if present, must have (string) 'type' field"),
        ({"name": "x"}, "'delegate' dictionary must not have 'name' field, it'll be set by flannel"),
        ({"ipam": {}}, "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel"),
    ],
)
def test_delegate_validation_uses_upstream_texts(delegate: dict[str, Any], message: str) -> None:
    with pytest.raises(CNIError) as info:
        check_delegate(delegate)
    assert (info.value.code, info.value.msg) == (7, message)
    with pytest.raises(CNIError, match="delegate"):
        build_delegate(conf_of(delegate=delegate), env_of(V4_ENV))


def test_routes_are_written_back_as_go_types_route() -> None:
    routes = parse_routes(
        [
            {"Dst": "10.96.0.1/12", "gw": "FC00::0001", "mtu": 1400, "priority": 0, "table": 0, "extra": 1},
            {"dst": "::ffff:10.0.0.0/104", "gw": ""},
        ]
    )
    assert [dict(r) for r in routes] == [
        {"dst": "10.96.0.1/12", "gw": "fc00::1", "mtu": 1400, "table": 0},
        {"dst": "10.0.0.0/8"},
    ]
    assert (
        render({"routes": routes})
        == b'{"routes":[{"dst":"10.96.0.1/12","gw":"fc00::1","mtu":1400,"table":0},{"dst":"10.0.0.0/8"}]}'
    )


@pytest.mark.parametrize(
    ("routes", "needle"),
    [
        ({"dst": "10.0.0.0/8"}, "must be a JSON array"),
        ([{"dst": "10.0.0.0"}], "invalid CIDR address: 10.0.0.0"),
        ([{"dst": "10.0.0.0/8", "gw": "10.0.0.256"}], "invalid IP address: 10.0.0.256"),
        ([{"gw": "10.0.0.1"}], "has no 'dst'"),
        ([{"dst": "10.0.0.0/8", "mtu": "1400"}], "'mtu' must be an integer"),
        (["10.0.0.0/8"], "must be a JSON object"),
    ],
)
def test_bad_ipam_routes_are_config_errors(routes: Any, needle: str) -> None:
    with pytest.raises(CNIError) as info:
        parse_routes(routes)
    assert info.value.code == 7
    assert info.value.msg.startswith(
        "failed to assemble Delegate IPAM: failed to read IPAM routes: failed to parse ipam.routes:"
    )
    assert needle in info.value.msg


def test_null_routes_are_no_routes() -> None:
    assert build_ipam({"routes": None}, env_of(V4_ENV))["routes"] == [{"dst": "10.1.0.0/16"}]


def test_go_escaping_and_sorting_in_the_saved_bytes() -> None:
    conf = conf_of(delegate={"z": "<&>", "a": {"y": 1, "b": 2.0}})
    data = render(build_delegate(conf, env_of(V4_ENV)))
    assert data.startswith(b'{"a":{"b":2,"y":1},')
    assert b'"z":"\\u003c\\u0026\\u003e"' in data


def test_check_prev_result_names_the_gateway_each_route_was_installed_with() -> None:
    prev = {
        "cniVersion": "1.0.0",
        "ips": [
            {"address": "10.1.17.2/24"},
            {"address": "10.1.17.3/24", "gateway": "10.1.17.1"},
            {"address": "fc00::2/64", "gateway": "fc00::1"},
        ],
        "routes": [
            {"dst": "10.1.0.0/16"},
            {"dst": "fc00::/48"},
            {"dst": "0.0.0.0/0", "gw": "10.1.17.254"},
            {"dst": "bogus"},
        ],
    }
    out = with_route_gateways(prev)
    assert out["routes"] == [
        {"dst": "10.1.0.0/16", "gw": "10.1.17.1"},
        {"dst": "fc00::/48", "gw": "fc00::1"},
        {"dst": "0.0.0.0/0", "gw": "10.1.17.254"},
        {"dst": "bogus"},
    ]
    assert prev["routes"][0] == {"dst": "10.1.0.0/16"}, "the input is not modified"
    assert with_route_gateways({"ips": [{"address": "10.1.17.2/24"}], "routes": [{"dst": "10.1.0.0/16"}]})[
        "routes"
    ] == [{"dst": "10.1.0.0/16"}]
    assert with_route_gateways(None) is None and with_route_gateways({"routes": []}) == {"routes": []}
