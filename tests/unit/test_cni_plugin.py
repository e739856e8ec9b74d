"""The ``flannel`` executable as a runtime calls it, against a stand-in delegate (no root needed).

Every bad input must give exactly one CNI error object on stdout with the right code and a non-zero exit,
never a traceback. The stand-in delegate speaks the versions Debian's plugins speak (up to 1.0.0), logs every
call, and fails the command named by ``FAKE_FAIL``, which is what the negotiation and DEL tests need.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FLANNEL = str(Path(sys.executable).parent / "flannel")
V4_ENV = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"

FAKE_PLUGIN = """#!{python} -S
import json, os, sys
cmd = os.environ.get("CNI_COMMAND", "")
raw = sys.stdin.read()
versions = os.environ.get("FAKE_VERSIONS", "0.1.0,0.2.0,0.3.0,0.3.1,0.4.0,1.0.0").split(",")
def reply(obj, rc=0):
    sys.stdout.write(json.dumps(obj))
    sys.exit(rc)
def log(entry):
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps(entry) + "\\n")
if cmd == "VERSION":
    log({{"cmd": cmd}})
    reply({{"cniVersion": versions[-1], "supportedVersions": versions}})
conf = json.loads(raw)
log({{"cmd": cmd, "conf": conf, "raw": raw,
     "env": {{k: os.environ.get(k) for k in ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS")}}}})
version = conf.get("cniVersion") or "0.1.0"
if version not in versions:
    details = "config is %r" % version
    if os.environ.get("FAKE_SKEL_REFUSAL"):  # the CNI library's wording, which lists the versions
        details = 'config is "%s", plugin supports [%s]' % (version, " ".join('"%s"' % v for v in versions))
    reply({{"code": 1, "msg": "incompatible CNI versions", "details": details}}, 1)
if os.environ.get("FAKE_FAIL") == cmd:
    sys.stderr.write("fake stderr\\n")
    reply({{"code": 11, "msg": "fake %s failure" % cmd, "details": "fake details"}}, 1)
if cmd == "ADD":
    if version in ("0.1.0", "0.2.0"):
        reply({{"cniVersion": version, "ip4": {{"ip": "10.1.17.2/24", "gateway": "10.1.17.1"}}}})
    ip = {{"address": "10.1.17.2/24", "gateway": "10.1.17.1", "interface": 0}}
    if version.startswith("0."):
        ip["version"] = "4"
    reply({{"cniVersion": version, "interfaces": [{{"name": "eth0", "sandbox": "/x"}}], "ips": [ip],
           "routes": [{{"dst": "10.1.0.0/16"}}]}})
"""


class Harness:
    """A CNI bin directory with the stand-in ``bridge``, a subnet.env, a data dir, and a way to call flannel."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        plugin = self.bin / "bridge"
        plugin.write_text(FAKE_PLUGIN.format(python=sys.executable))
        plugin.chmod(0o755)
        self.subnet_file = tmp / "subnet.env"
        self.subnet_file.write_text(V4_ENV)
        self.data_dir = tmp / "data"
        self.log = tmp / "delegate.log"
        self.env: dict[str, str] = {}

    def conf(self, version: str | None = "0.3.1", **extra: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": str(self.subnet_file),
            "dataDir": str(self.data_dir),
            **extra,
        }
        if version is not None:
            doc["cniVersion"] = version
        return doc

    def run(
        self, command: str, conf: dict[str, Any] | None = None, stdin: bytes | None = None, **env: str | None
    ) -> subprocess.CompletedProcess[bytes]:
        full = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        full.update(
            CNI_COMMAND=command,
            CNI_CONTAINERID="ctr1",
            CNI_NETNS="/var/run/netns/pod",
            CNI_IFNAME="eth0",
            CNI_PATH=f"/nonexistent:{self.bin}",
            FAKE_LOG=str(self.log),
            **self.env,
        )
        for key, value in env.items():
            if value is None:
                full.pop(key, None)
            else:
                full[key] = value
        data = stdin if stdin is not None else json.dumps(conf if conf is not None else self.conf()).encode()
        return subprocess.run([FLANNEL], input=data, env=full, capture_output=True, timeout=30, check=False)

    def calls(self, version_queries: bool = False) -> list[dict[str, Any]]:
        """What the delegate was asked to do, in order (its VERSION queries only when asked for)."""
        if not self.log.exists():
            return []
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [c for c in calls if version_queries or c["cmd"] != "VERSION"]

    def saved(self, container_id: str = "ctr1") -> Path:
        return self.data_dir / container_id


@pytest.fixture(name="cni")
def cni_fixture(tmp_path: Path) -> Iterator[Harness]:
    yield Harness(tmp_path)


def error_of(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """The error object of a failed call, checked for shape: exactly one object, four keys, no traceback."""
    assert proc.returncode != 0, proc
    assert b"Traceback" not in proc.stderr, proc.stderr.decode()
    err = json.loads(proc.stdout)
    assert set(err) == {"cniVersion", "code", "msg", "details"}, err
    assert isinstance(err["code"], int) and isinstance(err["msg"], str) and err["msg"]
    return err


def test_version_lists_every_supported_version(cni: Harness) -> None:
    proc = cni.run("VERSION", stdin=b"not even json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {
        "cniVersion": "1.1.0",
        "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


def test_no_command_prints_the_about_text(cni: Harness) -> None:
    proc = cni.run("", CNI_COMMAND=None)
    assert proc.returncode == 0 and proc.stdout == b""
    assert proc.stderr.startswith(b"CNI Plugin flannel version ")
    assert b"CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0" in proc.stderr


ENV_ERRORS = [
    (
        {"CNI_CONTAINERID": None, "CNI_NETNS": None, "CNI_IFNAME": None, "CNI_PATH": None},
        "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing",
    ),
    ({"CNI_NETNS": ""}, "required env variables [CNI_NETNS] missing"),
    ({"CNI_CONTAINERID": "../etc"}, "invalid characters in containerID"),
    ({"CNI_CONTAINERID": "-x"}, "invalid characters in containerID"),
    ({"CNI_IFNAME": "a" * 16}, "interface name is too long"),
    ({"CNI_IFNAME": "a/b"}, "interface name contains / or : or whitespace characters"),
    ({"CNI_IFNAME": ".."}, "interface name is . or .."),
]


@pytest.mark.parametrize(("env", "msg"), ENV_ERRORS)
def test_missing_or_invalid_environment_is_code_4(cni: Harness, env: dict[str, str | None], msg: str) -> None:
    err = error_of(cni.run("ADD", **env))
    assert (err["code"], err["msg"]) == (4, msg)
    assert not cni.saved().exists()


def test_unknown_command_is_code_4(cni: Harness) -> None:
    assert error_of(cni.run("FROB"))["msg"] == "unknown CNI_COMMAND: FROB"


@pytest.mark.parametrize(
    ("stdin", "needle"),
    [
        (b"{", "error parsing network config from stdin"),
        (b"", "error parsing network config from stdin: unexpected end of JSON input"),
        (b"[]", "expected a JSON object"),
        (b'{"type":"flannel"}', "missing network name"),
        (b'{"name":"a b"}', "invalid characters found in network name"),
        (b'{"name":"n","cniVersion":1}', "'cniVersion' must be a string"),
        (b'{"name":"n","subnetFile":5}', "'subnetFile' must be a string"),
        (b'{"name":"n","delegate":"bridge"}', "'delegate' must be a JSON object"),
        (b'{"name":"n","ipam":[]}', "'ipam' must be a JSON object"),
    ],
)
def test_invalid_network_config_is_code_7(cni: Harness, stdin: bytes, needle: str) -> None:
    for command in ("ADD", "DEL", "CHECK"):
        err = error_of(cni.run(command, stdin=stdin))
        assert err["code"] == 7 and needle in err["msg"], err


def test_unsupported_version_is_code_1(cni: Harness) -> None:
    err = error_of(cni.run("ADD", cni.conf("0.5.0")))
    assert (err["code"], err["msg"]) == (1, "incompatible CNI versions")
    assert (
        err["details"] == 'config is "0.5.0", plugin supports ["0.1.0" "0.2.0" "0.3.0" "0.3.1" "0.4.0" "1.0.0" "1.1.0"]'
    )
    assert err["cniVersion"] == "1.1.0"


@pytest.mark.parametrize(("command", "version"), [("CHECK", "0.3.1"), ("STATUS", "1.0.0"), ("GC", "0.4.0")])
def test_verbs_newer_than_the_config_version_are_code_1(cni: Harness, command: str, version: str) -> None:
    err = error_of(cni.run(command, cni.conf(version)))
    assert (err["code"], err["msg"], err["cniVersion"]) == (1, f"config version does not allow {command}", version)


def test_add_before_flanneld_wrote_subnet_env_is_try_again_later(cni: Harness) -> None:
    cni.subnet_file.unlink()
    err = error_of(cni.run("ADD"))
    assert err["code"] == 11
    assert err["msg"] == (
        f"failed to load flannel 'subnet.env' file: open {cni.subnet_file}: no such file or directory. "
        "Check the flannel pod log for this node."
    )
    assert err["cniVersion"] == "0.3.1"
    assert not cni.saved().exists() and cni.calls() == []


@pytest.mark.parametrize(
    ("text", "code", "needle"),
    [
        (V4_ENV + "FLANNEL_MTU\n", 6, "line 5: FLANNEL_MTU has no value"),
        (V4_ENV.replace("10.1.17.1/24", "10.1.17.1/99"), 6, "FLANNEL_SUBNET: invalid CIDR address: 10.1.17.1/99"),
        ("foo=bar\n", 6, "is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET"),
        ("", 11, "is missing"),
    ],
)
def test_bad_subnet_env_is_a_clear_error(cni: Harness, text: str, code: int, needle: str) -> None:
    cni.subnet_file.write_text(text)
    err = error_of(cni.run("ADD"))
    assert err["code"] == code and needle in err["msg"] and str(cni.subnet_file) in err["msg"], err


@pytest.mark.parametrize(
    ("delegate", "code", "needle"),
    [
        ({"name": "x"}, 7, "'delegate' dictionary must not have 'name' field"),
        ({"type": 1}, 7, "must have (string) 'type' field"),
        ({"type": "nosuch"}, 999, 'failed to find plugin "nosuch" in path [/nonexistent '),
        ({"type": "../bin/sh"}, 999, "invalid plugin name: ../bin/sh"),
    ],
)
def test_unusable_delegate_is_reported_and_nothing_saved(cni: Harness, delegate: Any, code: int, needle: str) -> None:
    err = error_of(cni.run("ADD", cni.conf(delegate=delegate)))
    assert err["code"] == code and needle in err["msg"], err
    assert not cni.saved().exists()


def test_add_saves_the_delegate_config_and_prints_the_delegates_result(cni: Harness) -> None:
    proc = cni.run("ADD")
    assert proc.returncode == 0, proc
    result = json.loads(proc.stdout)
    assert result["cniVersion"] == "0.3.1" and result["ips"][0]["address"] == "10.1.17.2/24"
    saved = cni.saved()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and stat.S_IMODE(cni.data_dir.stat().st_mode) == 0o700
    assert saved.read_bytes() == (
        b'{"cniVersion":"0.3.1","ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],'
        b'"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cbr0","type":"bridge"}'
    )
    [call] = cni.calls()
    assert call["cmd"] == "ADD" and call["raw"].encode() == saved.read_bytes()
    assert b"delegateAdd: netconf sent to delegate plugin:" in proc.stderr
    assert os.listdir(cni.data_dir) == ["ctr1"], "no temporary file is left"


def test_add_1_1_0_negotiates_down_and_answers_in_1_1_0(cni: Harness) -> None:
    proc = cni.run("ADD", cni.conf("1.1.0"))
    assert proc.returncode == 0, proc
    result = json.loads(proc.stdout)
    assert result["cniVersion"] == "1.1.0" and result["ips"] == [
        {"address": "10.1.17.2/24", "gateway": "10.1.17.1", "interface": 0}
    ]
    assert [c["conf"]["cniVersion"] for c in cni.calls()] == ["1.1.0", "1.0.0"]
    assert [c["cmd"] for c in cni.calls(version_queries=True)] == ["ADD", "VERSION", "ADD"]
    assert json.loads(cni.saved().read_bytes())["cniVersion"] == "1.1.0", "saved as upstream saves it"


def test_negotiation_reads_the_versions_from_the_cni_librarys_refusal(cni: Harness) -> None:
    cni.env["FAKE_SKEL_REFUSAL"] = "1"
    proc = cni.run("ADD", cni.conf("1.1.0"))
    assert proc.returncode == 0 and json.loads(proc.stdout)["cniVersion"] == "1.1.0", proc
    assert [(c["cmd"], c["conf"]["cniVersion"]) for c in cni.calls(version_queries=True)] == [
        ("ADD", "1.1.0"),
        ("ADD", "1.0.0"),
    ]


def test_add_0_2_0_against_a_1_0_0_only_delegate_converts_the_result(cni: Harness) -> None:
    cni.env["FAKE_VERSIONS"] = "1.0.0"
    proc = cni.run("ADD", cni.conf("0.2.0"))
    assert proc.returncode == 0, proc
    assert json.loads(proc.stdout) == {
        "cniVersion": "0.2.0",
        "ip4": {"ip": "10.1.17.2/24", "gateway": "10.1.17.1", "routes": [{"dst": "10.1.0.0/16"}]},
        "dns": {},
    }


def test_add_without_common_version_is_code_1(cni: Harness) -> None:
    cni.env["FAKE_VERSIONS"] = "0.1.0,0.2.0"
    err = error_of(cni.run("CHECK", cni.conf("0.4.0"), CNI_CONTAINERID="none"))
    assert err["code"] == 3  # CHECK of an unknown container fails before any delegate call
    cni.run("ADD", cni.conf("0.2.0"))
    err = error_of(cni.run("CHECK", cni.conf("0.4.0")))
    assert err["code"] == 1 and '["0.1.0" "0.2.0"]' in err["details"], err


def test_failed_delegate_add_passes_its_error_on_and_keeps_the_saved_config(cni: Harness) -> None:
    err = error_of(cni.run("ADD", FAKE_FAIL="ADD"))
    assert (err["code"], err["msg"], err["details"]) == (11, "fake ADD failure", "fake details")
    assert cni.saved().exists(), "the runtime's DEL that follows a failed ADD needs it"


def test_del_without_saved_config_succeeds_without_calling_the_delegate(cni: Harness) -> None:
    proc = cni.run("DEL", CNI_NETNS=None)
    assert (proc.returncode, proc.stdout) == (0, b"")
    assert cni.calls() == []


def test_del_replays_the_saved_bytes_even_while_flanneld_is_down(cni: Harness) -> None:
    assert cni.run("ADD", cni.conf(runtimeConfig={"a": 1})).returncode == 0
    saved = cni.saved().read_bytes()
    cni.subnet_file.unlink()
    proc = cni.run("DEL", cni.conf(runtimeConfig={"b": 2}), CNI_NETNS=None)
    assert (proc.returncode, proc.stdout) == (0, b""), proc
    delete = cni.calls()[-1]
    assert delete["cmd"] == "DEL" and delete["raw"].encode() == saved
    assert not cni.saved().exists()
    assert cni.run("DEL").returncode == 0, "a second DEL succeeds"


def test_failed_delegate_del_keeps_the_saved_config_for_a_retry(cni: Harness) -> None:
    assert cni.run("ADD").returncode == 0
    err = error_of(cni.run("DEL", FAKE_FAIL="DEL"))
    assert (err["code"], err["msg"]) == (11, "fake DEL failure")
    assert cni.saved().exists()
    assert cni.run("DEL").returncode == 0
    assert not cni.saved().exists()


@pytest.mark.parametrize("content", [b"{not json", b"", b"[]", b'{"cniVersion":"0.3.1"}', b'{"type":""}'])
def test_corrupt_saved_config_at_del_is_an_error_and_is_kept(cni: Harness, content: bytes) -> None:
    cni.data_dir.mkdir()
    cni.saved().write_bytes(content)
    err = error_of(cni.run("DEL"))
    assert err["code"] == 6 and err["msg"].startswith(f"saved delegate config {cni.saved()} is corrupt: ")
    assert "kept for inspection" in err["details"]
    assert cni.saved().read_bytes() == content and cni.calls() == []


def test_del_of_a_1_1_0_config_negotiates_too(cni: Harness) -> None:
    assert cni.run("ADD", cni.conf("1.1.0"), CNI_CONTAINERID="first").returncode == 0
    (cni.data_dir / ".versions-bridge").unlink()
    assert cni.run("DEL", cni.conf("1.1.0"), CNI_CONTAINERID="first").returncode == 0
    assert [(c["cmd"], c["conf"]["cniVersion"]) for c in cni.calls()][-2:] == [("DEL", "1.1.0"), ("DEL", "1.0.0")]
    assert not cni.saved("first").exists()


def test_versions_learnt_from_a_refusal_are_remembered_per_binary(cni: Harness) -> None:
    assert cni.run("ADD", cni.conf("1.1.0"), CNI_CONTAINERID="a").returncode == 0
    cache = cni.data_dir / ".versions-bridge"
    assert cache.read_text().split("\n")[1] == "0.1.0,0.2.0,0.3.0,0.3.1,0.4.0,1.0.0"
    assert stat.S_IMODE(cni.data_dir.stat().st_mode) == 0o700
    before = len(cni.calls(version_queries=True))
    assert cni.run("ADD", cni.conf("1.1.0"), CNI_CONTAINERID="b").returncode == 0
    assert cni.run("DEL", cni.conf("1.1.0"), CNI_CONTAINERID="b").returncode == 0
    assert [(c["cmd"], c["conf"]["cniVersion"]) for c in cni.calls(version_queries=True)[before:]] == [
        ("ADD", "1.0.0"),
        ("DEL", "1.0.0"),
    ], "no refused call, no VERSION query"
    plugin = cni.bin / "bridge"
    plugin.write_text(plugin.read_text() + "\n")  # a new binary: the remembered versions no longer apply
    cni.env["FAKE_VERSIONS"] = "0.3.1,0.4.0,1.0.0,1.1.0"
    assert cni.run("ADD", cni.conf("1.1.0"), CNI_CONTAINERID="c").returncode == 0
    assert cni.calls()[-1]["conf"]["cniVersion"] == "1.1.0"


def test_a_wrong_version_cache_is_relearnt(cni: Harness) -> None:
    assert cni.run("ADD", cni.conf("1.1.0"), CNI_CONTAINERID="a").returncode == 0
    cache = cni.data_dir / ".versions-bridge"
    identity = cache.read_text().split("\n")[0]
    cache.write_text(f"{identity}\n0.2.0\n")  # claims a version the plugin no longer speaks
    cni.env["FAKE_VERSIONS"] = "1.0.0"
    proc = cni.run("ADD", cni.conf("1.1.0"), CNI_CONTAINERID="b")
    assert proc.returncode == 0, proc
    assert [c["conf"]["cniVersion"] for c in cni.calls()][-3:] == ["0.2.0", "1.1.0", "1.0.0"]
    assert cache.read_text().split("\n")[1] == "1.0.0"


def test_check_runs_the_delegates_check_with_the_prev_result(cni: Harness) -> None:
    result = json.loads(cni.run("ADD", cni.conf("1.1.0")).stdout)
    proc = cni.run("CHECK", cni.conf("1.1.0", prevResult=result))
    assert (proc.returncode, proc.stdout) == (0, b""), proc
    check = cni.calls()[-1]
    assert check["cmd"] == "CHECK" and check["conf"]["cniVersion"] == "1.0.0"
    routes = [{"dst": "10.1.0.0/16", "gw": "10.1.17.1"}]  # the gateway the route was installed with
    assert check["conf"]["prevResult"] == {**result, "cniVersion": "1.0.0", "routes": routes}
    assert check["conf"]["ipam"]["ranges"] == [[{"subnet": "10.1.17.0/24"}]]


def test_check_failure_of_the_delegate_fails_check(cni: Harness) -> None:
    assert cni.run("ADD", cni.conf("0.4.0")).returncode == 0
    err = error_of(cni.run("CHECK", cni.conf("0.4.0"), FAKE_FAIL="CHECK"))
    assert err["msg"] == "fake CHECK failure"


def test_check_of_an_unknown_container_is_code_3(cni: Harness) -> None:
    err = error_of(cni.run("CHECK", cni.conf("1.0.0")))
    assert err["code"] == 3 and "no saved delegate config for container ctr1" in err["msg"]


def test_a_bug_still_answers_with_an_error_object_and_logs_the_traceback(cni: Harness) -> None:
    code = (
        "import flannel.cni.plugin as p\n"
        "def boom(args, conf):\n"
        "    raise KeyError('oops')\n"
        "p._HANDLERS['ADD'] = boom\n"
        "p.main()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(CNI_COMMAND="ADD", CNI_CONTAINERID="c", CNI_NETNS="/x", CNI_IFNAME="eth0", CNI_PATH=str(cni.bin))
    proc = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(cni.conf()).encode(), env=env, capture_output=True, check=False
    )
    assert proc.returncode == 1
    err = json.loads(proc.stdout)
    assert (err["code"], err["cniVersion"]) == (999, "0.3.1") and "KeyError('oops')" in err["msg"]
    assert b"Traceback" in proc.stderr
