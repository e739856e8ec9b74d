"""flannelctl's pure parts: the command line, the formatters, the lease checks, subnet parsing, validation and
which leases a node programs. The store and the kernel are exercised in tests/integration and tests/e2e."""

from __future__ import annotations

import io
import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel.config import check_network_config, parse_network_config
from flannel.ctl import drift, leases, netconfig
from flannel.ctl.cli import main, parse
from flannel.ctl.datastore import decode
from flannel.ctl.output import ERROR, WARNING, Finding, duration, emit, exit_code, table, use_colour
from flannel.ctl.reserve import parse_subnet
from flannel.lease import Lease, LeaseAttrs
from flannel.subnet.kvstore import KV
from flannel.subnet.lease_guard import Family, find_collisions

CONFIG = check_network_config(parse_network_config('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'))


def vx(ip: str, mac: str) -> bytes:
    return json.dumps({"PublicIP": ip, "BackendType": "vxlan", "BackendData": {"VNI": 1, "VtepMAC": mac}}).encode()


def rec(name: str, value: bytes, rev: int, lease_id: int = 7) -> object:
    ttl, granted = (100, 120) if lease_id else (None, None)  # a reservation has no etcd lease to ask about
    return decode(KV(f"/coreos.com/network/subnets/{name}", value, rev, lease_id, rev), ttl, granted)


# -- the command line ------------------------------------------------------------------------------------


def test_flanneld_flags_in_any_spelling_and_position_reach_flanneld_s_parser() -> None:
    args = parse(["-etcd-prefix", "/p", "leases", "--ip-masq", "-o=json", "--etcd-endpoints=http://e:1"], {})
    assert args.words == ["leases"] and args.output == "json"
    assert args.opts is not None and args.opts.etcd_prefix == "/p" and args.opts.ip_masq  # a bool eats no word
    assert args.opts.etcd_endpoints == "http://e:1"


def test_flanneld_environment_fills_what_the_command_line_leaves() -> None:
    args = parse(["status", "--subnet-file=/a"], {"FLANNELD_SUBNET_FILE": "/b", "FLANNELD_HEALTHZ_PORT": "9"})
    assert args.opts is not None and args.opts.subnet_file == "/a" and args.opts.healthz_port == 9


def test_flannelctl_flags() -> None:
    args = parse(["reserve", "10.5.1.0/24", "--force", "--timeout", "0.5", "--public-ip", "1.2.3.4"], {})
    assert args.force and args.timeout == 0.5 and args.words == ["reserve", "10.5.1.0/24"]
    assert args.opts is not None and "public-ip" in args.opts.explicit


@pytest.mark.parametrize("argv", [["--timeout", "-1", "leases"], ["--timeout"], ["-o", "xml"], ["--nope"],
                                  ["--healthz-port=x", "status"], ["--force=maybe"], []])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    err = io.StringIO()
    assert main(argv, {}, io.StringIO(), err) == 2 and err.getvalue().startswith("flannelctl: ")


def test_help_exits_0_on_stdout() -> None:
    out = io.StringIO()
    assert main(["--help"], {}, out, io.StringIO()) == 0 and "Exit status" in out.getvalue()


# -- formatters -------------------------------------------------------------------------------------------


def test_table_aligns_columns_and_marks_empty_cells() -> None:
    assert table(["A", "BB"], [["xyz", ""], ["1", "2"]]).splitlines() == ["A    BB", "xyz  -", "1    2"]


@pytest.mark.parametrize(("seconds", "text"), [(None, ""), (5, "5s"), (65, "1m05s"), (3720, "1h02m"),
                                               (90000, "1d1h"), (-5, "-5s")])
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_exit_code_follows_errors_only() -> None:
    assert exit_code([]) == 0
    assert exit_code([Finding(WARNING, "w", "s", "m")]) == 0
    assert exit_code([Finding(WARNING, "w", "s", "m"), Finding(ERROR, "e", "s", "m")]) == 1


def test_json_output_carries_findings_and_health_with_stable_keys() -> None:
    out = io.StringIO()
    code = emit(out, {"x": 1}, [Finding(ERROR, "c", "s", "m", "f")], "human", as_json=True)
    doc = json.loads(out.getvalue())
    assert code == 1 and doc == {"x": 1, "healthy": False, "findings": [
        {"severity": "error", "code": "c", "subject": "s", "message": "m", "fix": "f"}]}


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour(_Tty()) and not use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(_Tty())


# -- lease checks ----------------------------------------------------------------------------------------


def test_conflicts_are_flagged_on_the_later_claimant() -> None:
    records = [rec("10.5.1.0-24", vx("198.18.0.1", "0a:00:00:00:00:01"), 5),
               rec("10.5.1.0-25", vx("198.18.0.2", "0a:00:00:00:00:02"), 6),
               rec("10.5.3.0-24", vx("198.18.0.1", "0a:00:00:00:00:03"), 7),
               rec("10.5.4.0-24", b"\xff garbage", 8)]
    found = {(f.subject.rsplit("/", 1)[-1], f.code) for f in leases.check(records, CONFIG)}  # type: ignore[arg-type]
    assert found == {("10.5.1.0-25", "overlaps_lease"), ("10.5.3.0-24", "duplicate_public_ip"),
                     ("10.5.4.0-24", "undecodable")}


def test_without_a_config_only_the_config_free_checks_run() -> None:
    records = [rec("10.9.1.0-24", vx("198.18.0.1", "0a:00:00:00:00:01"), 5)]
    assert leases.check(records, None) == []  # type: ignore[arg-type]
    assert [f.code for f in leases.check(records, CONFIG)] == ["outside_network"]  # type: ignore[arg-type]


def test_find_collisions_is_the_guard_s_first_holder_rule() -> None:
    def lease(subnet: str) -> Lease:
        return Lease(IPv4Network(subnet), attrs=LeaseAttrs(public_ip=IPv4Address("1.1.1.1")))

    fam = [Family(v6=False, network=IPv4Network("10.5.0.0/16"), own=None, subnet_len=24)]
    out = find_collisions(fam, [lease("10.5.1.0/24"), lease("10.5.1.0/25")])
    assert [(x.key, reason) for x, reason, _ in out] == [("10.5.1.0-25", "overlaps_lease")]
    assert "10.5.1.0/24 of lease 10.5.1.0-24" in out[0][2]
    refused_first = find_collisions(fam, [lease("10.5.1.0/25"), lease("10.5.1.0/24")])
    assert [(x.key, reason) for x, reason, _ in refused_first] == [("10.5.1.0-25", "subnet_len")]  # claims nothing


def test_lease_json_of_a_reservation_and_of_garbage() -> None:
    r = decode(KV("/p/subnets/10.5.2.0-24", vx("198.18.0.9", "0a:00:00:00:00:09"), 3, 0, 3))
    j = leases.lease_json(r, [], 0.0)
    assert j["reserved"] and j["ttl_seconds"] is None and j["vtep_mac"] == "0a:00:00:00:00:09"
    bad = leases.lease_json(decode(KV("/p/subnets/junk", b"x", 4, 1, 4)), ["undecodable"], 0.0)
    assert bad["subnet"] is None and bad["error"] == "not a subnet key" and bad["problems"] == ["undecodable"]


# -- reservations and validation -------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["10.5.1.0/24", "10.5.1.0-24"])
def test_subnets_as_cidr_or_key(text: str) -> None:
    assert parse_subnet(text) == (IPv4Network("10.5.1.0/24"), None)


@pytest.mark.parametrize("text", ["10.5.1.1/24", "fc00::/64", "10.5.1.0", "10.5.1.0-024", "x"])
def test_bad_subnets(text: str) -> None:
    with pytest.raises(ValueError, match="invalid subnet"):
        parse_subnet(text)


@pytest.mark.parametrize(("doc", "error"), [
    ('{"Network":"10.5.0.0/16","Backend":{"Type":"bogus"}}', "f: unknown backend type: bogus"),
    ('{"Network":"10.5.0.0/16","Backend":{"Type":"ipsec","PSK":"short"}}', "f: config error, password is too short"),
    ('{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","Mode":"x"}}', "no valid Mode configured"),
    ('{"EnableIPv4":false}', "none defined stack"),
    ('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}', "IPv6-only networks are not supported"),
    ('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":70}}', "f: Backend.MTU 70 is too small"),
])
def test_validation_errors_are_flanneld_s(doc: str, error: str) -> None:
    v = netconfig.validate(doc, "f")
    assert v.config is None and error in v.error


def test_validation_collects_the_backend_s_warnings() -> None:
    v = netconfig.validate('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","Vni":2,"Colour":1}}', "f")
    assert v.error == "" and v.config is not None
    assert v.warnings == ["vxlan backend: ignoring unknown key Backend.Colour"]
    missing = netconfig.validate('{"Network":"10.5.0.0/16"}', "f")
    assert missing.warnings[0].startswith("f has no Backend section")


def test_kube_mode_validation_skips_the_etcd_only_check() -> None:
    doc = '{"Network":"10.5.0.0/16","SubnetLen":31,"Backend":{"Type":"host-gw"}}'
    assert netconfig.validate(doc, "f").error and not netconfig.validate(doc, "f", etcd_mode=False).error


# -- which leases a node programs ----------------------------------------------------------------------------


def test_admitted_leases_exclude_own_foreign_and_refused() -> None:
    def lease(subnet: str, ip: str, backend: str = "vxlan", mac: str = "0a:00:00:00:00:01") -> Lease:
        data = json.dumps({"VNI": 1, "VtepMAC": mac})
        return Lease(IPv4Network(subnet), attrs=LeaseAttrs(public_ip=IPv4Address(ip), backend_type=backend,
                                                           backend_data=data), revision=int(ip.rsplit(".")[-1]))

    own = lease("10.5.1.0/24", "198.18.0.1", mac="0a:00:00:00:00:0a")
    peers = [own, lease("10.5.2.0/24", "198.18.0.2"), lease("10.5.3.0/24", "198.18.0.3", backend="host-gw"),
             lease("10.5.4.0/24", "198.18.0.4"), lease("10.5.1.128/25", "198.18.0.5", mac="0a:00:00:00:00:05")]
    got = drift.admitted(CONFIG, own, peers, "vxlan")
    assert [x.key for x in got] == ["10.5.2.0-24"]  # .4 reuses .2's MAC; .5 overlaps our own subnet


def test_fix_commands_name_the_tool() -> None:
    assert drift.command("fdb replace aa dev flannel.1") == "bridge fdb replace aa dev flannel.1"
    assert drift.command("route replace 10.5.2.0/24") == "ip route replace 10.5.2.0/24"


def test_wireguard_layout_and_fix_lines_follow_the_backend() -> None:
    from flannel.backend.wireguard_config import Mode
    from flannel.backend.wireguard_model import PeerSpec
    from flannel.ctl.drift_wireguard import layout, peer_line

    dual = check_network_config(parse_network_config('{"Network":"10.5.0.0/16","EnableIPv6":true,'
                                                     '"IPv6Network":"fd00::/56","Backend":{"Type":"wireguard"}}'))
    assert layout(dual, Mode.SEPARATE) == [("flannel-wg", 0, [2]), ("flannel-wg-v6", 1, [10])]
    assert layout(dual, Mode.AUTO) == [("flannel-wg", 0, [2, 10])]
    peer = PeerSpec(public_key=bytes(range(32)), endpoint=(IPv4Address("198.18.0.2"), 51820),
                    allowed_ips=frozenset({IPv4Network("10.5.2.0/24")}), keepalive=25)
    assert peer_line("flannel-wg", peer) == ("wg set flannel-wg peer AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= "
                                             "endpoint 198.18.0.2:51820 persistent-keepalive 25 allowed-ips "
                                             "10.5.2.0/24")


# -- the human forms ------------------------------------------------------------------------------------------


def test_status_text_names_readiness_drift_and_fixes() -> None:
    from flannel.ctl.status import render

    doc = {"subnet_file": "/run/flannel/subnet.env", "mtu": 1450,
           "lease": {"key": "10.5.1.0-24", "public_ip": "198.18.0.11", "backend_type": "vxlan", "reserved": False,
                     "ttl_seconds": 3600},
           "flanneld": {"url": "u", "ready": False, "status": 503, "reason": "flanneld is not ready: datastore: x"},
           "drift": {"checked": True, "backend_type": "vxlan",
                     "entries": [{"what": "route to 10.5.2.0/24 missing", "fix": "ip route replace ..."}],
                     "unchecked_reason": None}}
    findings = [Finding(ERROR, "drift", "route to 10.5.2.0/24 missing", "m", "ip route replace ...")]
    text = render(doc, findings, colour=False)
    assert "NOT READY: flanneld is not ready: datastore: x" in text and "1 entry (vxlan)" in text
    assert "expires in  1h00m" in text and "fix: ip route replace ..." in text and "\033[" not in text
    assert "\033[31m" in render(doc, findings, colour=True)


def test_leases_text_has_a_row_per_record_and_its_problems() -> None:
    records = [rec("10.5.1.0-24", vx("198.18.0.1", "0a:00:00:00:00:01"), 5, lease_id=0),
               rec("10.5.4.0-24", b"garbage", 8)]
    doc, findings, text = leases.build(records, CONFIG, "", "/coreos.com/network/config", colour=False)  # type: ignore[arg-type]
    lines = text.splitlines()
    assert lines[0] == "network 10.5.0.0/16  backend vxlan  2 lease(s)"
    assert lines[3].split() == ["10.5.1.0-24", "198.18.0.1", "vxlan", "0a:00:00:00:00:01", "reserved", "-", "-"]
    assert lines[4].split()[-1] == "undecodable" and [f.code for f in findings] == ["undecodable"]
    assert [lease["key"] for lease in doc["leases"]] == ["10.5.1.0-24", "10.5.4.0-24"]


def test_credentials_in_an_endpoint_url_are_never_printed(tmp_path: object) -> None:
    out, err = io.StringIO(), io.StringIO()
    argv = ["status", "--etcd-endpoints=http://me:hunter2@127.0.0.1:1", "--timeout=2", "-o", "json",
            "--subnet-file=/nonexistent/subnet.env"]
    assert main(argv, {}, out, err) == 1
    assert "hunter2" not in out.getvalue() + err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert main(["leases", *argv[1:3]], {}, out, err) == 1
    assert "hunter2" not in out.getvalue() + err.getvalue() and "127.0.0.1:1" in err.getvalue()


def test_one_subnet_on_two_records_is_a_collision() -> None:
    """Two kube nodes given one pod CIDR: the same key twice (etcd keys are unique, node names are not)."""
    fam = [Family(v6=False, network=IPv4Network("10.5.0.0/16"), own=None)]
    a = Lease(IPv4Network("10.5.1.0/24"), attrs=LeaseAttrs(public_ip=IPv4Address("1.1.1.1")))
    b = Lease(IPv4Network("10.5.1.0/24"), attrs=LeaseAttrs(public_ip=IPv4Address("1.1.1.2")))
    assert [(x.attrs.public_ip, reason) for x, reason, _ in find_collisions(fam, [a, b])] == [
        (IPv4Address("1.1.1.2"), "overlaps_lease")]
