"""``flannelctl`` against a real etcd: leases and their conflicts, reservations, the config, an unreachable store.

Records are written with ``etcdctl`` exactly as a Go node (or an operator) would, garbage included, and the
command runs through ``flannel.ctl.cli.main`` (in-process, for speed) or the installed console script.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from flannel.config import parse_network_config
from flannel.ctl.cli import main
from flannel.errors import ConfigError
from tests.etcd_server import EtcdServer

pytestmark = pytest.mark.etcd

FLANNELCTL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "flannelctl")
CONFIG = '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'


def ctl(etcd: EtcdServer, prefix: str, *args: str) -> tuple[int, Any, str]:
    """Run flannelctl with ``-o json``; (exit code, parsed stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = main([f"--etcd-endpoints={etcd.endpoint}", f"--etcd-prefix={prefix}", "-o", "json", *args], {}, out, err)
    return code, json.loads(out.getvalue()) if out.getvalue().strip() else None, err.getvalue()


def vx(ip: str, mac: str) -> str:
    return json.dumps({"PublicIP": ip, "PublicIPv6": None, "BackendType": "vxlan",
                       "BackendData": {"VNI": 1, "VtepMAC": mac}}, separators=(",", ":"))


def put_lease(etcd: EtcdServer, key: str, value: str, ttl: int = 600) -> None:
    granted = etcd.etcdctl("lease", "grant", str(ttl))
    lease_id = re.search(r"lease ([0-9a-f]+) granted", granted).group(1)  # type: ignore[union-attr]
    etcd.etcdctl("put", f"--lease={lease_id}", key, value)


@pytest.fixture
def cluster(etcd: EtcdServer, prefix: str) -> str:
    """A config and two healthy vxlan leases (one a reservation); returns the subnets prefix."""
    etcd.etcdctl("put", f"{prefix}/config", CONFIG)
    put_lease(etcd, f"{prefix}/subnets/10.5.1.0-24", vx("198.18.0.11", "0a:00:00:00:00:01"))
    etcd.etcdctl("put", f"{prefix}/subnets/10.5.2.0-24", vx("198.18.0.12", "0a:00:00:00:00:02"))
    return f"{prefix}/subnets"


def by_key(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {lease["key"]: lease for lease in doc["leases"]}


def test_leases_lists_every_lease_with_expiry_and_reservation(etcd: EtcdServer, prefix: str, cluster: str) -> None:
    code, doc, _ = ctl(etcd, prefix, "leases")
    assert code == 0 and doc["healthy"] and doc["findings"] == []
    leases = by_key(doc)
    live, reserved = leases["10.5.1.0-24"], leases["10.5.2.0-24"]
    assert live["public_ip"] == "198.18.0.11" and live["backend_type"] == "vxlan"
    assert live["vtep_mac"] == "0a:00:00:00:00:01" and not live["reserved"]
    assert 590 <= live["ttl_seconds"] <= 600 and live["expires_at"].endswith("Z")
    assert 0 <= live["renewed_seconds_ago"] <= 10
    assert reserved["reserved"] and reserved["ttl_seconds"] is None and reserved["expires_at"] is None
    assert doc["network"] == "10.5.0.0/16"


def test_leases_flags_garbage_and_conflicts_as_findings(etcd: EtcdServer, prefix: str, cluster: str) -> None:
    put_lease(etcd, f"{cluster}/10.5.3.0-24", "{not json")
    etcd.etcdctl("put", f"{cluster}/not-a-subnet", "x")
    put_lease(etcd, f"{cluster}/10.5.4.0-24", vx("198.18.0.11", "0a:00:00:00:00:04"))  # 10.5.1.0-24's public IP
    put_lease(etcd, f"{cluster}/10.6.0.0-24", vx("198.18.0.16", "0a:00:00:00:00:06"))  # outside 10.5.0.0/16
    put_lease(etcd, f"{cluster}/10.5.1.128-25", vx("198.18.0.17", "0a:00:00:00:00:07"))  # inside 10.5.1.0/24
    put_lease(etcd, f"{cluster}/10.5.8.0-25", vx("198.18.0.18", "0a:00:00:00:00:08"))  # SubnetLen is 24
    put_lease(etcd, f"{cluster}/10.5.9.0-24", vx("198.18.0.19", "0a:00:00:00:00:02"))  # 10.5.2.0-24's MAC
    put_lease(etcd, f"{cluster}/10.5.10.0-24", json.dumps({"PublicIP": "198.18.0.20", "BackendType": "host-gw"}))
    code, doc, err = ctl(etcd, prefix, "leases")
    assert code == 1 and not doc["healthy"] and "Traceback" not in err
    codes = {(f["subject"].rsplit("/", 1)[-1], f["code"]) for f in doc["findings"]}
    assert codes == {
        ("10.5.3.0-24", "undecodable"),
        ("not-a-subnet", "undecodable"),
        ("10.5.4.0-24", "duplicate_public_ip"),
        ("10.6.0.0-24", "outside_network"),
        ("10.5.1.128-25", "overlaps_lease"),
        ("10.5.8.0-25", "subnet_len"),
        ("10.5.9.0-24", "duplicate_vtep_mac"),
        ("10.5.10.0-24", "other_backend"),
    }
    severities = {f["code"]: f["severity"] for f in doc["findings"]}
    assert severities["other_backend"] == "warning" and severities["overlaps_lease"] == "error"
    leases = by_key(doc)
    assert leases["10.5.3.0-24"]["error"] and leases["10.5.3.0-24"]["problems"] == ["undecodable"]
    assert leases["10.5.1.0-24"]["problems"] == []  # the first holder is not the one flagged


def test_reserve_writes_a_key_without_an_etcd_lease(etcd: EtcdServer, prefix: str, cluster: str) -> None:
    code, doc, _ = ctl(etcd, prefix, "reserve", "10.5.7.0/24", "--public-ip", "198.51.100.7")
    assert code == 0 and doc["action"] == "reserved" and doc["key"] == "10.5.7.0-24"
    key = f"{cluster}/10.5.7.0-24"
    assert etcd.ttl_of(key) is None
    assert json.loads(etcd.etcdctl("get", "--print-value-only", key))["PublicIP"] == "198.51.100.7"
    code, doc, _ = ctl(etcd, prefix, "leases")
    assert code == 0 and by_key(doc)["10.5.7.0-24"]["reserved"]


def test_reserve_turns_a_nodes_own_lease_into_a_reservation_keeping_its_data(
        etcd: EtcdServer, prefix: str, cluster: str) -> None:
    code, _, _ = ctl(etcd, prefix, "reserve", "10.5.1.0-24", "--public-ip=198.18.0.11")
    assert code == 0
    key = f"{cluster}/10.5.1.0-24"
    assert etcd.ttl_of(key) is None
    assert etcd.etcdctl("get", "--print-value-only", key).strip() == vx("198.18.0.11", "0a:00:00:00:00:01")


def test_reserve_refuses_another_nodes_lease_bad_subnets_and_overlaps(
        etcd: EtcdServer, prefix: str, cluster: str) -> None:
    key = f"{cluster}/10.5.1.0-24"
    before = etcd.etcdctl("get", key, "-w", "json")
    for args in (["10.5.1.0/24", "--public-ip", "198.51.100.9"],  # 198.18.0.11's live lease
                 ["10.5.1.0/25", "--public-ip", "198.51.100.9"],  # wrong length
                 ["10.9.1.0/24", "--public-ip", "198.51.100.9"],  # outside the network
                 ["10.5.1.5/24", "--public-ip", "198.51.100.9"],  # host bits
                 ["10.5.5.0/24", "--public-ip", "not-an-ip"]):
        code, doc, _ = ctl(etcd, prefix, "reserve", *args)
        assert code == 1 and doc["findings"][0]["code"] == "refused", args
    assert "does not fit the network config" in ctl(etcd, prefix, "reserve", "10.5.1.0/25", "--public-ip",
                                                    "198.51.100.9")[1]["findings"][0]["message"]
    assert etcd.etcdctl("get", key, "-w", "json") == before
    code, doc, _ = ctl(etcd, prefix, "reserve", "10.5.1.0/24", "--public-ip", "198.51.100.9", "--force")
    assert code == 0 and [f["code"] for f in doc["findings"]] == ["replaced"]
    assert etcd.ttl_of(key) is None


def test_reserve_without_public_ip_is_a_usage_error(etcd: EtcdServer, prefix: str, cluster: str) -> None:
    code, _, err = ctl(etcd, prefix, "reserve", "10.5.7.0/24")
    assert code == 2 and "--public-ip" in err


def test_unreserve_deletes_a_reservation_but_not_a_live_lease(etcd: EtcdServer, prefix: str, cluster: str) -> None:
    code, doc, _ = ctl(etcd, prefix, "unreserve", "10.5.1.0/24")
    assert code == 1 and "live lease of 198.18.0.11" in doc["findings"][0]["message"]
    assert etcd.etcdctl("get", "--print-value-only", f"{cluster}/10.5.1.0-24").strip()
    code, doc, _ = ctl(etcd, prefix, "unreserve", "10.5.2.0-24")
    assert code == 0 and doc["action"] == "unreserved"
    assert etcd.etcdctl("get", f"{cluster}/10.5.2.0-24") == ""
    assert ctl(etcd, prefix, "unreserve", "10.5.2.0-24")[0] == 1  # gone now


def test_config_set_validates_first_and_refuses_bad_input(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"Network":"10.5.0.0/16","SubnetLen":31}')
    code, doc, _ = ctl(etcd, prefix, "config", "set", str(bad))
    assert code == 1 and not doc["written"] and doc["error"] == f"{bad}: SubnetLen must be less than /31"
    assert etcd.etcdctl("get", f"{prefix}/config") == ""
    bad.write_text('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":"one"}}')
    code, doc, _ = ctl(etcd, prefix, "config", "set", str(bad))
    assert code == 1 and "Backend.VNI must be an integer" in doc["error"]
    good = tmp_path / "good.json"
    good.write_text(CONFIG)
    code, doc, _ = ctl(etcd, prefix, "config", "set", str(good))
    assert code == 0 and doc["written"]
    assert etcd.etcdctl("get", "--print-value-only", f"{prefix}/config").strip() == CONFIG
    code, doc, _ = ctl(etcd, prefix, "config", "get")
    assert code == 0 and doc["config"] == CONFIG and doc["valid"] and doc["subnet_len"] == 24


def test_config_validate_gives_flanneld_s_own_message(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    text = '{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0"}'
    path = tmp_path / "net-conf.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as flanneld_says:
        from flannel.config import check_network_config

        check_network_config(parse_network_config(text))
    code, doc, _ = ctl(etcd, prefix, "config", "validate", str(path))
    assert code == 1 and doc["error"] == f"{path}: {flanneld_says.value}"


def test_config_get_reports_garbage_in_the_store(etcd: EtcdServer, prefix: str) -> None:
    etcd.etcdctl("put", f"{prefix}/config", "{garbage")
    code, doc, err = ctl(etcd, prefix, "config", "get")
    assert code == 1 and not doc["valid"] and doc["error"].startswith(f"{prefix}/config: invalid JSON")
    assert "Traceback" not in err


def test_unreachable_store_names_the_endpoint_and_exits_1_within_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        res = subprocess.run([FLANNELCTL, "leases", f"--etcd-endpoints={endpoint}", "--timeout", "2"],
                             capture_output=True, text=True, timeout=30, check=False)
        elapsed = time.monotonic() - started
    assert res.returncode == 1, res.stderr
    assert f"cannot reach etcd at {endpoint}" in res.stderr and "Traceback" not in res.stderr
    assert elapsed < 10


def test_usage_errors_exit_2() -> None:
    err = io.StringIO()
    assert main(["frobnicate"], {}, io.StringIO(), err) == 2 and "unknown command" in err.getvalue()
    assert main(["leases", "--no-such-flag"], {}, io.StringIO(), io.StringIO()) == 2
    assert main(["leases", "-o", "yaml"], {}, io.StringIO(), io.StringIO()) == 2
    assert main(["leases", "--etcd-endpoints=ftp://x"], {}, io.StringIO(), io.StringIO()) == 2


def test_flanneld_environment_is_read(etcd: EtcdServer, prefix: str, cluster: str) -> None:
    out = io.StringIO()
    env = {"FLANNELD_ETCD_ENDPOINTS": etcd.endpoint, "FLANNELD_ETCD_PREFIX": prefix}
    assert main(["leases"], env, out, io.StringIO()) == 0
    assert "10.5.1.0-24" in out.getvalue() and "\033[" not in out.getvalue()  # no colour into a pipe


def test_tls_and_password_from_the_environment_as_flanneld_takes_them(etcd_tls: EtcdServer, prefix: str) -> None:
    assert etcd_tls.tls is not None
    etcd_tls.etcdctl("put", f"{prefix}/config", CONFIG)
    out = io.StringIO()
    code = main(["leases", "-o", "json"], {
        "FLANNELD_ETCD_ENDPOINTS": etcd_tls.endpoint, "FLANNELD_ETCD_PREFIX": prefix,
        "FLANNELD_ETCD_CAFILE": str(etcd_tls.tls.ca), "FLANNELD_ETCD_CERTFILE": str(etcd_tls.tls.client_cert),
        "FLANNELD_ETCD_KEYFILE": str(etcd_tls.tls.client_key)}, out, io.StringIO())
    assert code == 0 and json.loads(out.getvalue())["network"] == "10.5.0.0/16"


def test_the_password_is_used_and_never_printed(etcd_auth: EtcdServer, prefix: str) -> None:
    etcd_auth.etcdctl("put", f"{prefix}/config", CONFIG)
    env = {"FLANNELD_ETCD_ENDPOINTS": etcd_auth.endpoint, "FLANNELD_ETCD_PREFIX": prefix,
           "FLANNELD_ETCD_USERNAME": "root"}
    out = io.StringIO()
    assert main(["config", "get"], {**env, "FLANNELD_ETCD_PASSWORD": "pw"}, out, io.StringIO()) == 0
    wrong = "s3cret-wrong-password"
    res = subprocess.run([FLANNELCTL, "leases", "--timeout=3", "-v=9"], capture_output=True, text=True, timeout=30,
                         check=False, env={**env, "FLANNELD_ETCD_PASSWORD": wrong, "PATH": "/usr/bin:/bin"})
    assert res.returncode == 1 and "cannot reach etcd" in res.stderr, res.stderr
    assert wrong not in res.stdout + res.stderr
