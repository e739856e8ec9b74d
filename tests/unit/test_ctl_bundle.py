"""``flannelctl bundle``'s redaction (one test per kind of secret), the bundle file itself, and the small
subcommands around it: ``docker-opts`` is ``mk-docker-opts``, reservations refuse kube mode."""

from __future__ import annotations

import io
import json
import stat
import tarfile
from pathlib import Path

import pytest

from flannel import docker_opts
from flannel.ctl import bundle
from flannel.ctl.cli import main
from flannel.ctl.redact import MARK, redact

PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBx9nQ3vSECRETSECRETSECRET\nAwEHoUQDQgAE\n-----END EC PRIVATE KEY-----\n"
WG_KEY = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IiJ9.eyJpc3MiOiJrdWJlcm5ldGVzIn0.c2lnbmF0dXJlc2VjcmV0"


@pytest.mark.parametrize(("text", "secret", "kept"), [
    ("FLANNELD_ETCD_PASSWORD=hunter2\n", "hunter2", "FLANNELD_ETCD_PASSWORD="),
    ('{"config": "{\\"Backend\\":{\\"PSK\\":\\"topsecretpsk\\"}}"}', "topsecretpsk", '\\"PSK\\":'),
    ("interface: flannel-wg\n  private key: (hidden)\n  preshared key: abcdefgh\n", "abcdefgh", "preshared key:"),
    ("flanneld --etcd-password=hunter2 --etcd-prefix=/x", "hunter2", "--etcd-prefix=/x"),
    ("flanneld --etcd-password hunter2 --v=2", "hunter2", "--v=2"),
    ("error from http://root:hunter2@10.0.0.1:2379/v3", "hunter2", "10.0.0.1:2379"),
    (PEM, "SECRETSECRET", "BEGIN EC PRIVATE KEY"),
    ('{"Network":"10.244.0.0/16","Backend":{"Type":"ipsec","PSK":"0123456789abcdef0123"}}', "0123456789abcdef",
     '"Type":"ipsec"'),
    ('{"Backend":{"Type":"wireguard","PrivateKey":"' + WG_KEY + '"}}', WG_KEY, '"PrivateKey":'),
    ("[Interface]\nPrivateKey = " + WG_KEY + "\nListenPort = 51820\n", WG_KEY, "ListenPort = 51820"),
    ("Authorization: Bearer abcdefghijklmnop123\n", "abcdefghijklmnop123", "Authorization: Bearer"),
    ("users:\n- name: a\n  user:\n    token: s3cr3t-t0ken-value\n", "s3cr3t-t0ken-value", "name: a"),
    ("    client-key-data: LS0tLS1CRUdJTiBSU0Eg\n", "LS0tLS1CRUdJTiBSU0Eg", "client-key-data:"),
    (f"I1206 watch failed token={JWT} retrying", JWT, "retrying"),
    (f"request had {JWT} in it", JWT, "request had"),
])
def test_each_kind_of_secret_is_redacted_and_its_name_kept(text: str, secret: str, kept: str) -> None:
    out = redact(text)
    assert secret not in out and MARK in out and kept in out


def test_ordinary_text_is_left_alone() -> None:
    text = ("10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink\n"
            '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}\nFLANNEL_MTU=1450\n'
            "-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n"
            "FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully\n"
            "net.ipv4.conf.all.rp_filter = 2\n")
    assert redact(text) == text


def test_the_bundle_holds_every_part_redacted_and_only_its_owner_reads_it(tmp_path: Path) -> None:
    log = tmp_path / "flanneld.log"
    log.write_text("I1206 started with --etcd-password=hunter2\n")
    subnet_env = tmp_path / "subnet.env"
    subnet_env.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n")
    cni = tmp_path / "cni"
    cni.mkdir()
    (cni / "10-flannel.conflist").write_text('{"plugins":[{"type":"flannel"}]}')
    asked: list[list[str]] = []

    def report(words: list[str]) -> tuple[int, str]:
        asked.append(words)
        return 1, json.dumps({"config": '{"Backend":{"PSK":"topsecretpsk"}}', "healthy": False})

    path = tmp_path / "b.tar.gz"
    manifest = bundle.build(str(path), report, {"FLANNELD_ETCD_PASSWORD": "hunter2", "HOME": "/root"},
                            str(subnet_env), [str(log)], str(cni))
    assert asked == [["status"], ["leases"], ["config", "get"], ["doctor"]]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with tarfile.open(path) as tar:
        members = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
                   for m in tar.getmembers()}
    assert {"manifest.json", "flannelctl/status.json", "flannelctl/doctor.json", "kernel/ip-route.txt",
            "kernel/iptables-save.txt", "logs/log-file-0-flanneld.log", "config/subnet.env",
            "config/environment.txt", "config/cni/10-flannel.conflist"} <= set(members)
    everything = "".join(members.values())
    assert "hunter2" not in everything and "topsecretpsk" not in everything
    assert members["config/environment.txt"] == f"FLANNELD_ETCD_PASSWORD={MARK}\n"  # HOME is not flannel's
    assert "FLANNEL_SUBNET=10.244.1.1/24" in members["config/subnet.env"]
    assert json.loads(members["manifest.json"])["parts"] == manifest["parts"]
    assert {
        k: v for k, v in next(p for p in manifest["parts"] if p["name"] == "flannelctl/doctor.json").items()
        if k != "bytes"} == {"name": "flannelctl/doctor.json", "exit_code": 1}


def test_bundle_needs_a_file_name() -> None:
    err = io.StringIO()
    assert main(["bundle"], {}, io.StringIO(), err) == 2 and "bundle FILE.tar.gz" in err.getvalue()


def test_docker_opts_is_mk_docker_opts(tmp_path: Path) -> None:
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.42.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    a, b = tmp_path / "a.env", tmp_path / "b.env"
    environ = {"PATH": "/nonexistent"}
    assert main(["docker-opts", "-f", str(env), "-d", str(a), "-c"], environ) == 0
    assert docker_opts.main(["mk-docker-opts", "-f", str(env), "-d", str(b), "-c"], environ) == 0
    assert a.read_text() == b.read_text() == 'DOCKER_OPTS=" --bip=10.1.42.1/24 --ip-masq=false --mtu=1450"\n'


def test_docker_opts_usage_errors_keep_mk_docker_opts_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["docker-opts", "-x"], {}) == 1
    assert "Illegal option -x" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["reserve", "10.244.7.0/24", "--public-ip", "1.2.3.4"],
                                     ["unreserve", "10.244.7.0/24"]])
def test_reservations_in_kube_mode_are_a_usage_error(command: list[str]) -> None:
    err = io.StringIO()
    assert main([*command, "--kube-subnet-mgr"], {}, io.StringIO(), err) == 2
    assert "reservations are an etcd feature" in err.getvalue()


def test_kube_config_set_says_where_the_config_lives(tmp_path: Path) -> None:
    err = io.StringIO()
    code = main(["config", "set", str(tmp_path / "x"), "--kube-subnet-mgr", f"--net-config-path={tmp_path}/n"], {},
                io.StringIO(), err)
    assert code == 2 and "ConfigMap" in err.getvalue()


def test_kube_config_get_reads_net_conf_and_validates_it_as_flanneld(tmp_path: Path) -> None:
    conf = tmp_path / "net-conf.json"
    conf.write_text('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":"one"}}')
    out = io.StringIO()
    code = main(["config", "get", "--kube-subnet-mgr", f"--net-config-path={conf}", "-o", "json"], {}, out,
                io.StringIO())
    doc = json.loads(out.getvalue())
    assert code == 1 and doc["key"] == str(conf) and doc["valid"] is False and "VNI" in doc["error"]
    out = io.StringIO()
    code = main(["config", "get", "--kube-subnet-mgr", f"--net-config-path={tmp_path}/none", "-o", "json"], {}, out,
                io.StringIO())
    assert code == 1 and json.loads(out.getvalue())["findings"][0]["code"] == "config"
