"""flanneld flags (§1.1) and FLANNELD_* environment (§1.2), parsed with Go's flag-package rules."""

from __future__ import annotations

import dataclasses
import io
import logging
from typing import Any

import pytest

from flannel.daemon.flag_table import FLAGS, parse_go_bool, parse_go_int
from flannel.daemon.flags import (
    HelpRequested,
    Options,
    UsageError,
    VersionRequested,
    parse_args,
    parse_or_exit,
    usage_text,
    validate,
)
from flannel.errors import ConfigError


def parse(*argv: str, **env: str) -> Options:
    return parse_args(list(argv), env)


# --- defaults and the table ------------------------------------------------------------------------


def test_defaults() -> None:
    o = parse()
    assert o.etcd_endpoints == "http://127.0.0.1:4001,http://127.0.0.1:2379"
    assert o.etcd_prefix == "/coreos.com/network"
    assert (o.etcd_keyfile, o.etcd_certfile, o.etcd_cafile, o.etcd_username, o.etcd_password.reveal()) == ("",) * 5
    assert o.iface == () and o.iface_regex == () and o.iface_can_reach == ""
    assert o.subnet_file == "/run/flannel/subnet.env"
    assert (o.public_ip, o.public_ipv6) == ("", "")
    assert o.subnet_lease_renew_margin == 60
    assert not (o.ip_masq or o.ip_masq_fully_random_disable or o.kube_subnet_mgr or o.version)
    assert (o.kube_api_url, o.kubeconfig_file) == ("", "")
    assert o.kube_annotation_prefix == "flannel.alpha.coreos.com"
    assert (o.healthz_ip, o.healthz_port, o.iptables_resync) == ("0.0.0.0", 0, 5)
    assert o.iptables_forward_rules and o.set_node_network_unavailable and not o.ip_blackhole_route
    assert o.net_config_path == "/etc/kube-flannel/net-conf.json"
    assert (o.v, o.vmodule, o.log_backtrace_at) == (0, "", "")
    assert o.explicit == frozenset()


def test_every_flag_has_an_options_field_and_vice_versa() -> None:
    fields = {f.name for f in dataclasses.fields(Options)} - {"explicit"}
    assert fields == {spec.field for spec in FLAGS}
    assert len(FLAGS) == 35  # upstream's 31 plus --reconcile-interval, --map-port, --map-address, --probe-interval


def test_env_names() -> None:
    names = {spec.name: spec.env_var for spec in FLAGS}
    assert names["etcd-endpoints"] == "FLANNELD_ETCD_ENDPOINTS"
    assert names["iface-regex"] == "FLANNELD_IFACE_REGEX"
    assert names["v"] == "FLANNELD_V"
    assert names["log_backtrace_at"] == "FLANNELD_LOG_BACKTRACE_AT"


# --- command-line forms ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["-etcd-prefix", "/x"],
        ["--etcd-prefix", "/x"],
        ["-etcd-prefix=/x"],
        ["--etcd-prefix=/x"],
    ],
)
def test_string_flag_forms(argv: list[str]) -> None:
    o = parse(*argv)
    assert o.etcd_prefix == "/x" and o.explicit == {"etcd-prefix"}


def test_value_may_start_with_a_dash_or_contain_equals() -> None:
    assert parse("--etcd-prefix", "-x").etcd_prefix == "-x"
    assert parse("--public-ip=a=b").public_ip == "a=b"
    assert parse("--kube-api-url=").kube_api_url == ""


@pytest.mark.parametrize(
    "argv", [["-ip-masq"], ["--ip-masq"], ["--ip-masq=true"], ["-ip-masq=T"], ["--ip-masq=1"]]
)
def test_bool_flag_true_forms(argv: list[str]) -> None:
    assert parse(*argv).ip_masq is True


@pytest.mark.parametrize("word", ["1", "t", "T", "TRUE", "true", "True"])
def test_go_bool_true_spellings(word: str) -> None:
    assert parse_go_bool(word) is True
    assert parse(f"--kube-subnet-mgr={word}").kube_subnet_mgr is True


@pytest.mark.parametrize("word", ["0", "f", "F", "FALSE", "false", "False"])
def test_go_bool_false_spellings(word: str) -> None:
    assert parse_go_bool(word) is False
    assert parse(f"--iptables-forward-rules={word}").iptables_forward_rules is False


@pytest.mark.parametrize("word", ["yes", "no", "tRUE", "", " true", "2"])
def test_bad_bool_values(word: str) -> None:
    with pytest.raises(UsageError) as info:
        parse(f"--ip-masq={word}")
    assert info.value.message == f'invalid boolean value "{word}" for -ip-masq: parse error'


def test_bool_does_not_take_a_separate_word() -> None:
    with pytest.raises(UsageError, match="no positional arguments"):
        parse("--ip-masq", "false")


def test_repeatable_flags_collect_in_order() -> None:
    o = parse(
        "--iface",
        "eth0",
        "-iface=10.0.0.1",
        "--iface-regex",
        "^ens",
        "--iface-regex=eth[0-9]",
        "--iface=eth1",
    )
    assert o.iface == ("eth0", "10.0.0.1", "eth1")
    assert o.iface_regex == ("^ens", "eth[0-9]")


def test_repeated_scalar_flag_last_wins() -> None:
    assert parse("--healthz-port=1", "--healthz-port", "2").healthz_port == 2


def test_klog_flags() -> None:
    o = parse("-v", "4", "-vmodule=main=2,lease*=3", "-log_backtrace_at=main.go:42")
    assert (o.v, o.vmodule, o.log_backtrace_at) == (4, "main=2,lease*=3", "main.go:42")
    assert parse("--v=-1").v == -1


KLOG_ERRORS = [
    (["-v=0x1"], 'invalid value "0x1" for flag -v: strconv.ParseInt: parsing "0x1": invalid syntax'),
    (
        ["-v=99999999999"],
        'invalid value "99999999999" for flag -v: '
        'strconv.ParseInt: parsing "99999999999": value out of range',
    ),
    (
        ["-vmodule=main"],
        'invalid value "main" for flag -vmodule: syntax error: expect comma-separated list of filename=N',
    ),
    (["-vmodule=main=-1"], 'invalid value "main=-1" for flag -vmodule: negative value for vmodule level'),
    (
        ["-log_backtrace_at=main:1"],
        'invalid value "main:1" for flag -log_backtrace_at: syntax error: expect file.go:234',
    ),
    (
        ["-log_backtrace_at=m.go:0"],
        'invalid value "m.go:0" for flag -log_backtrace_at: negative or zero value for level',
    ),
]


@pytest.mark.parametrize(("argv", "message"), KLOG_ERRORS)
def test_bad_klog_values(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse(*argv)
    assert info.value.message == message


def test_double_dash_ends_the_flags() -> None:
    assert parse("--ip-masq", "--").ip_masq
    with pytest.raises(UsageError):
        parse("--", "--ip-masq")


# --- Go int parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("60", 60),
        ("+7", 7),
        ("-5", -5),
        ("0", 0),
        ("0x10", 16),
        ("0X1f", 31),
        ("010", 8),
        ("0o17", 15),
        ("0b101", 5),
        ("1_000", 1000),
        ("0x_ff", 255),
        ("9223372036854775807", 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
    ],
)
def test_go_int_parsing(text: str, value: int) -> None:
    assert parse_go_int(text) == value
    assert parse(f"--iptables-resync={text}").iptables_resync == value


@pytest.mark.parametrize(
    "text", ["", "-", "08", "0x", "1e3", "1.5", "abc", " 1", "1_", "_1", "1__0", "0b2", "١"]
)
def test_go_int_syntax_errors(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse("--healthz-port", text)
    assert info.value.message == f'invalid value "{text}" for flag -healthz-port: parse error'


@pytest.mark.parametrize("text", ["9223372036854775808", "-9223372036854775809", "0x10000000000000000"])
def test_go_int_range_errors(text: str) -> None:
    with pytest.raises(UsageError, match=r"value out of range$"):
        parse("--healthz-port", text)


# --- errors, help, version -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nope"], "flag provided but not defined: -nope"),
        (["-nope=1"], "flag provided but not defined: -nope"),
        (["--etcd-prefix"], "flag needs an argument: -etcd-prefix"),
        (["---x"], "bad flag syntax: ---x"),
        (["-=x"], "bad flag syntax: -=x"),
        (["--=x"], "bad flag syntax: --=x"),
        (["--IP-MASQ"], "flag provided but not defined: -IP-MASQ"),
    ],
)
def test_usage_errors_use_go_messages(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse(*argv)
    assert info.value.message == message == str(info.value)


@pytest.mark.parametrize("arg", ["extra", "-"])
def test_positional_arguments_are_rejected(arg: str) -> None:
    with pytest.raises(UsageError, match="no positional arguments"):
        parse("--ip-masq", arg)


@pytest.mark.parametrize(
    "argv", [["-h"], ["--help"], ["-help"], ["--ip-masq", "-h", "--nope"], ["-help=false"]]
)
def test_help_is_requested(argv: list[str]) -> None:
    with pytest.raises(HelpRequested):
        parse(*argv)


def test_version_is_checked_before_the_environment() -> None:
    with pytest.raises(VersionRequested):
        parse("--version", FLANNELD_IPTABLES_RESYNC="bad")
    assert parse(FLANNELD_VERSION="true").version is False
    assert parse("--version=false").version is False


def test_parse_or_exit_help_goes_to_stdout_with_status_0() -> None:
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as info:
        parse_or_exit(["--help"], {}, stdout=out, stderr=err)
    assert info.value.code == 0
    assert out.getvalue() == usage_text() and err.getvalue() == ""


def test_parse_or_exit_error_goes_to_stderr_with_status_2() -> None:
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as info:
        parse_or_exit(["--bogus"], {}, stdout=out, stderr=err)
    assert info.value.code == 2
    assert out.getvalue() == ""
    assert err.getvalue() == "flag provided but not defined: -bogus\n" + usage_text()


def test_parse_or_exit_version_goes_to_stderr_with_status_0() -> None:
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as info:
        parse_or_exit(["-version"], {}, stdout=out, stderr=err, version_text="v0.28.9")
    assert info.value.code == 0
    assert (out.getvalue(), err.getvalue()) == ("", "v0.28.9\n")


def test_parse_or_exit_returns_options() -> None:
    assert parse_or_exit(["--ip-masq"], {"FLANNELD_IFACE": "eth0"}).iface == ("eth0",)


def test_usage_text_lists_every_flag_with_go_layout() -> None:
    text = usage_text("flanneld")
    assert text.startswith("Usage: flanneld [OPTION]...\n")
    for spec in FLAGS:
        assert f"  -{spec.name}" in text
    assert "  -ip-masq\n    \tsetup IP masquerade rule" in text
    assert "  -subnet-lease-renew-margin int\n    \tsubnet lease renewal margin" in text
    assert '(default "/coreos.com/network")' in text
    assert "FORWARD chain in iptables (default true)\n" in text
    assert "in seconds (default 5)\n" in text
    assert "  -v value\n    \tnumber for the log level verbosity\n" in text
    assert "(default false)" not in text and "(default 0)" not in text and '(default "")' not in text
    names = [line.split()[0] for line in text.splitlines()[1:] if line.startswith("  -")]
    assert names == sorted(names)


# --- environment -----------------------------------------------------------------------------------


def test_env_fills_flags_not_on_the_command_line() -> None:
    o = parse(
        FLANNELD_ETCD_ENDPOINTS="http://e:2379",
        FLANNELD_IP_MASQ="true",
        FLANNELD_SUBNET_LEASE_RENEW_MARGIN="0x1e",
        FLANNELD_V="2",
        FLANNELD_LOG_BACKTRACE_AT="x.go:1",
        FLANNELD_IPTABLES_FORWARD_RULES="false",
    )
    assert o.etcd_endpoints == "http://e:2379" and o.ip_masq and o.subnet_lease_renew_margin == 30
    assert o.v == 2 and o.log_backtrace_at == "x.go:1" and not o.iptables_forward_rules
    assert o.explicit == frozenset()


def test_command_line_wins_over_env() -> None:
    o = parse("--etcd-prefix=/cli", "--iface=cli0", FLANNELD_ETCD_PREFIX="/env", FLANNELD_IFACE="env0")
    assert o.etcd_prefix == "/cli" and o.iface == ("cli0",)


def test_command_line_false_wins_over_env_true() -> None:
    assert parse("--ip-masq=false", FLANNELD_IP_MASQ="true").ip_masq is False


def test_empty_env_var_is_ignored() -> None:
    assert parse(FLANNELD_ETCD_PREFIX="", FLANNELD_IFACE="").etcd_prefix == "/coreos.com/network"
    assert parse(FLANNELD_IFACE="").iface == ()


def test_repeatable_env_var_is_one_value_not_split() -> None:
    o = parse(FLANNELD_IFACE="eth0,eth1", FLANNELD_IFACE_REGEX="^(a|b),c$")
    assert o.iface == ("eth0,eth1",) and o.iface_regex == ("^(a|b),c$",)


def test_other_env_vars_are_ignored() -> None:
    assert parse(FLANNELD_NOPE="1", IP_MASQ="true", flanneld_ip_masq="true").ip_masq is False


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("FLANNELD_IP_MASQ", "yes"),
        ("FLANNELD_HEALTHZ_PORT", "http"),
        ("FLANNELD_V", "high"),
        ("FLANNELD_VMODULE", "x"),
    ],
)
def test_bad_env_value_warns_and_keeps_default(
    var: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flannel.daemon.flags"):
        o = parse(**{var: value, "FLANNELD_ETCD_PREFIX": "/still-applied"})
    assert o == dataclasses.replace(parse(), etcd_prefix="/still-applied")
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1
    assert messages[0].startswith(f'Failed to set flag {var} from env: invalid value "{value}" for {var}: ')


# --- validate --------------------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [1, 60, 1439])
def test_renew_margin_in_range(margin: int) -> None:
    validate(parse(f"--subnet-lease-renew-margin={margin}"))


@pytest.mark.parametrize("margin", [0, -1, 1440, 100000])
def test_renew_margin_out_of_range(margin: int) -> None:
    with pytest.raises(ConfigError) as info:
        validate(parse(f"--subnet-lease-renew-margin={margin}"))
    assert str(info.value) == "Invalid subnet-lease-renew-margin option, out of acceptable range"
    assert info.value.field == "subnet-lease-renew-margin"


def test_renew_margin_from_env_is_validated() -> None:
    with pytest.raises(ConfigError):
        validate(parse(FLANNELD_SUBNET_LEASE_RENEW_MARGIN="1440"))


@pytest.mark.parametrize("port", [0, 1, 8081, 65535])
def test_healthz_port_in_range(port: int) -> None:
    validate(parse(f"--healthz-port={port}"))


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "0x7fffffffffffffff"])
def test_healthz_port_out_of_range_is_a_config_error_naming_the_flag(port: str) -> None:
    # 99999 used to end in an OverflowError traceback from the socket layer.
    with pytest.raises(ConfigError) as info:
        validate(parse(f"--healthz-port={port}"))
    assert info.value.field == "healthz-port"
    assert str(info.value).startswith("--healthz-port must be between 0 and 65535")


@pytest.mark.parametrize(
    ("endpoints", "why"),
    [
        ("htp://x", "unsupported scheme 'htp'"),
        ("http://", "no host"),
        ("a b", "'a b' is not a host name"),
        ("http://x:99999", "Port out of range"),
        ("http://x:abc", "Port could not be cast"),
        ("http://x:0", "port 0"),
        ("http://[fd00::1:2379", "Invalid IPv6 URL"),
        ("http://127.0.0.1:2379,unix:///run/etcd.sock", "unsupported scheme 'unix'"),
        (",", "no etcd endpoint given"),
    ],
)
def test_an_unusable_etcd_endpoint_is_rejected_at_start(endpoints: str, why: str) -> None:
    # These used to be retried for ever as if etcd were away.
    with pytest.raises(ConfigError) as info:
        validate(parse(f"--etcd-endpoints={endpoints}"))
    assert info.value.field == "etcd-endpoints"
    assert str(info.value).startswith("--etcd-endpoints: ") and why in str(info.value)


@pytest.mark.parametrize("endpoints", ["http://127.0.0.1:2379", "https://etcd.example:4001/", "10.0.0.1",
                                       "http://[fd00::1]:2379", "etcd_1:2379, https://b"])
def test_usable_etcd_endpoints_pass(endpoints: str) -> None:
    validate(parse(f"--etcd-endpoints={endpoints}"))


def test_etcd_endpoints_are_not_checked_in_kube_mode(tmp_path: Any) -> None:
    validate(parse("--kube-subnet-mgr", "--etcd-endpoints=htp://x", f"--etcd-certfile={tmp_path}/missing"))


@pytest.mark.parametrize("flag", ["etcd-certfile", "etcd-keyfile", "etcd-cafile"])
def test_a_missing_etcd_tls_file_is_an_error_naming_the_flag(flag: str, tmp_path: Any) -> None:
    # Used to be ignored with an http:// endpoint, and retried for ever with an https:// one.
    with pytest.raises(ConfigError) as info:
        validate(parse(f"--{flag}={tmp_path}/missing.pem"))
    assert info.value.field == flag
    assert str(info.value) == f"--{flag}: {tmp_path}/missing.pem: No such file or directory"


def test_a_directory_as_etcd_tls_file_is_an_error(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="is a directory") as info:
        validate(parse(f"--etcd-cafile={tmp_path}"))
    assert info.value.field == "etcd-cafile"


def test_tls_files_with_http_endpoints_warn_that_tls_is_not_used(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("x")
    with caplog.at_level(logging.WARNING):
        validate(parse(f"--etcd-certfile={tmp_path}/c.pem", f"--etcd-keyfile={tmp_path}/k.pem",
                       "--etcd-endpoints=http://a:2379,https://b:2379,c:2379"))
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1 and messages[0].startswith("TLS is not used for the endpoints http://a:2379: ")


def test_a_certfile_without_keyfile_warns(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "c.pem").write_text("x")
    with caplog.at_level(logging.WARNING):
        validate(parse(f"--etcd-certfile={tmp_path}/c.pem", "--etcd-endpoints=https://b:2379"))
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == ["--etcd-certfile is set without --etcd-keyfile: TLS client authentication needs both, "
                        "so no client certificate is used"]


def test_password_is_not_in_repr() -> None:
    assert "s3cret" not in repr(parse("--etcd-password=s3cret"))
