"""Property tests for every parser of outside input (issue 15): the corpus property, on generated input.

Whatever a parser is given, it returns a result or raises its domain error naming the field at fault, never
another exception, and within a time limit. Inputs are built around each parser's own keys (mixed case, wrong
types, boundary numbers, non-ASCII, truncation), since purely random bytes rarely get past the JSON decoder.
Example counts are modest so the module runs in seconds on a shared machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from ipaddress import IPv4Network
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flannel.config import _FIELDS as CONFIG_KEYS
from flannel.daemon.flag_table import FLAGS
from flannel.lease import make_subnet_key
from tests import parser_runs as runs
from tests.time_limit import time_limit

PROPERTY = settings(max_examples=150, deadline=timedelta(seconds=2), database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
"""Derandomized: CI runs the same examples every time, so a red run is a code change, not a dice roll. Explore
with ``--hypothesis-seed=random`` (or more examples) by hand, and add what it finds to tests/corpus/."""
EXAMPLE_LIMIT = 5.0
"""Seconds one example may take (the deadline above reports slowness; this stops a hang)."""

# --- building blocks ----------------------------------------------------------------------------------------

numbers = st.one_of(
    st.integers(-(1 << 70), 1 << 70),
    st.sampled_from([0, -1, 1, 31, 32, 68, 119, 1500, 65535, 65536, (1 << 32) - 1, 1 << 32, (1 << 64) - 1, 1 << 64]),
    st.floats(allow_nan=False, allow_infinity=False),
)
weird_text = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", "\x00", "١٠", "ö", "../..", "%eth0", "-"]))
ipv4_text = st.builds("{}.{}.{}.{}".format, *[st.integers(0, 300)] * 4)
ipv6_text = st.ip_addresses(v=6).map(str)
cidr_text = st.builds("{}/{}".format, st.one_of(ipv4_text, ipv6_text), st.integers(0, 130))
scalars = st.one_of(st.none(), st.booleans(), numbers, weird_text, ipv4_text, ipv6_text, cidr_text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def case_variants(names: list[str]) -> st.SearchStrategy[str]:
    """A key as written, lower- or upper-cased (Go matches keys case-insensitively), or an unknown one."""
    return st.one_of(st.sampled_from(names), st.sampled_from(names).map(str.lower),
                     st.sampled_from(names).map(str.upper), st.text(max_size=6))


def objects(keys: st.SearchStrategy[str], values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(keys, values, max_size=6)


def documents(objs: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """JSON text of ``objs``, sometimes truncated, sometimes raw bytes."""
    text = st.tuples(objs, st.booleans()).map(lambda t: json.dumps(t[0], ensure_ascii=t[1]))
    cut = st.tuples(text, st.floats(0, 1)).map(lambda t: t[0][: int(len(t[0]) * t[1])])
    return st.one_of(text, cut).map(str.encode) | st.binary(max_size=40)


def holds(outcomes: list[runs.Outcome], fields: tuple[str, ...]) -> None:
    """The property: each step gave a result, or a domain error naming one of ``fields``."""
    for step, value in outcomes:
        if runs.is_domain_error(value):
            assert runs.error_names_some_field(value, fields), f"{step}: {value!r} names none of {fields}"


def bounded(run: Callable[[], list[runs.Outcome]]) -> list[runs.Outcome]:
    with time_limit(EXAMPLE_LIMIT, "one example"):
        return run()


# --- the network config ---------------------------------------------------------------------------------------

BACKEND_KEYS = ["Type", "VNI", "Port", "MTU", "GBP", "Learning", "DirectRouting", "Offload", "SubnetAddCommand",
                "PreStartupCommand", "SubnetAddResyncInterval", "ListenPort", "ListenPortV6", "PSK",
                "PersistentKeepaliveInterval", "Mode", "UDPEncap", "ESPProposal"]
backend_sections = objects(case_variants(BACKEND_KEYS), st.one_of(
    json_values, st.sampled_from(["vxlan", "VXLAN", "host-gw", "udp", "ipip", "extension", "alloc", "wireguard",
                                   "ipsec"])))
configs = objects(case_variants([k for k in CONFIG_KEYS if k != "Backend"]), json_values).flatmap(
    lambda doc: st.one_of(st.just(doc), backend_sections.map(lambda b: {**doc, "Backend": b})))


@PROPERTY
@given(documents(configs))
def test_a_network_config_gives_a_config_or_a_config_error_naming_the_key(data: bytes) -> None:
    holds(bounded(lambda: runs.network_config(data)), (*CONFIG_KEYS, "backend '"))


# --- etcd leases ----------------------------------------------------------------------------------------------

LEASE_KEYS = ["PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data"]


@PROPERTY
@given(documents(objects(case_variants(LEASE_KEYS), json_values)))
def test_a_lease_value_gives_attributes_or_a_lease_decode_error_naming_the_field(data: bytes) -> None:
    holds(bounded(lambda: runs.lease_value(data)), (*LEASE_KEYS, "lease value"))


subnet_keys = st.one_of(
    st.builds("{}-{}".format, ipv4_text, st.integers(0, 40)),
    st.builds("{}-{}&{}-{}".format, ipv4_text, st.integers(0, 40), ipv6_text, st.integers(0, 140)),
    st.from_regex(r"[0-9.&:a-fA-F/-]{0,30}", fullmatch=True),
    st.text(max_size=30),
)


@PROPERTY
@given(subnet_keys)
def test_a_subnet_key_is_a_subnet_that_round_trips_or_none(text: str) -> None:
    [(_, parsed)] = bounded(lambda: runs.subnet_key(text))
    if parsed is not None:
        v4, v6 = parsed
        assert isinstance(v4, IPv4Network) and v4.prefixlen <= 31
        assert runs.subnet_key(make_subnet_key(v4, v6)) == [("key", parsed)]


# --- Kubernetes -----------------------------------------------------------------------------------------------

N = runs.NAMES
annotation_values = st.one_of(weird_text, ipv4_text, ipv6_text, json_values.map(json.dumps),
                              st.just('{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}'))
annotations = st.one_of(
    st.dictionaries(st.sampled_from([N.kube_subnet_manager, N.backend_type, N.backend_data, N.backend_v6_data,
                                     N.public_ip, N.public_ipv6, N.public_ip_overwrite]), annotation_values),
    json_values,
)
pod_cidrs = st.one_of(cidr_text, weird_text, json_values)
nodes = st.fixed_dictionaries({
    "metadata": st.one_of(st.fixed_dictionaries({"name": weird_text, "annotations": annotations}), json_values),
    "spec": st.one_of(st.fixed_dictionaries({}, optional={"podCIDR": pod_cidrs,
                                                          "podCIDRs": st.lists(pod_cidrs, max_size=4)}), json_values),
})


@PROPERTY
@given(nodes)
def test_a_node_gives_a_lease_or_an_error_naming_the_annotation_or_the_pod_cidr(node: dict[str, Any]) -> None:
    holds(bounded(lambda: runs.kube_node(node)), ("public-ip", "backend-data", "backend-v6-data", "CIDR", "cidr"))


@PROPERTY
@given(st.one_of(weird_text, st.from_regex(r"[a-zA-Z0-9_.\-/]{0,20}", fullmatch=True)))
def test_an_annotation_prefix_gives_names_or_a_config_error_naming_the_flag(prefix: str) -> None:
    holds(bounded(lambda: runs.kube_prefix(prefix)), ("kube-annotation-prefix",))


# --- the CNI plugin ---------------------------------------------------------------------------------------------

CNI_KEYS = ["cniVersion", "name", "type", "subnetFile", "dataDir", "delegate", "ipam", "runtimeConfig"]
cni_values = st.one_of(json_values, st.sampled_from(["1.0.0", "0.3.1", "cbr0", "flannel"]))


@PROPERTY
@given(documents(objects(case_variants(CNI_KEYS), cni_values)))
def test_cni_stdin_gives_a_netconf_or_a_cni_error_naming_the_key(data: bytes) -> None:
    holds(bounded(lambda: runs.cni_stdin(data)), (*CNI_KEYS, "network name", "stdin", "CNI"))


CNI_VARS = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS"]
cni_env_values = st.one_of(weird_text, st.sampled_from(["ADD", "DEL", "CHECK", "eth0", "abc", "../x", "a" * 300]))


@PROPERTY
@given(st.dictionaries(st.sampled_from(CNI_VARS), cni_env_values))
def test_the_cni_environment_gives_arguments_or_a_cni_error_naming_the_variable(environ: dict[str, str]) -> None:
    holds(bounded(lambda: runs.cni_env(environ)), ("CNI_", "containerID", "interface name"))


ENV_KEYS = ["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU",
            "FLANNEL_IPMASQ"]
env_line = st.one_of(
    st.builds("{}={}".format, st.sampled_from(ENV_KEYS),
              st.one_of(cidr_text, numbers.map(str), weird_text, st.lists(cidr_text, max_size=3).map(",".join))),
    st.sampled_from(ENV_KEYS), st.text(max_size=20).filter(lambda s: "\n" not in s),
)


@PROPERTY
@given(st.lists(env_line, max_size=8).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")))
def test_subnet_env_gives_values_or_an_error_naming_the_key(data: bytes) -> None:
    holds(bounded(lambda: runs.subnet_env(data)), ("FLANNEL_",))


# --- flanneld's flags -------------------------------------------------------------------------------------------

flag_names = st.sampled_from([spec.name for spec in FLAGS] + ["help", "no-such-flag"])
flag_values = st.one_of(weird_text, numbers.map(str), st.sampled_from(["true", "false", "0x10", "http://x:2379",
                                                                       "htp://x", "99999", "main.go:1"]))
arguments = st.one_of(
    st.builds("--{}={}".format, flag_names, flag_values),
    st.builds("-{}".format, flag_names),
    flag_values,
)
environments = st.dictionaries(st.sampled_from([spec.env_var for spec in FLAGS]), flag_values, max_size=3)
USAGE_FORMS = ("unexpected argument", "bad flag syntax", "flag provided but not defined", "flag needs an argument")


@PROPERTY
@given(st.lists(arguments, max_size=4), environments)
def test_flags_give_options_or_an_error_naming_the_flag(argv: list[str], environ: dict[str, str]) -> None:
    holds(bounded(lambda: runs.flags(argv, environ)), (*(spec.name for spec in FLAGS), *USAGE_FORMS))
