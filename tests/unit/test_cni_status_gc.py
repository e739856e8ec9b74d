"""CNI 1.1's STATUS and GC verbs of the ``flannel`` executable, against the stand-in delegate."""

from __future__ import annotations

import json
import os
import time

from tests.unit.test_cni_plugin import Harness, cni_fixture, error_of  # noqa: F401 - a fixture

DEBIAN_AND_1_1 = "0.1.0,0.2.0,0.3.0,0.3.1,0.4.0,1.0.0,1.1.0"


def saved(cni: Harness) -> list[str]:
    """The saved configs (hidden files, the version cache and temporary files, left out)."""
    return sorted(n for n in os.listdir(cni.data_dir) if not n.startswith("."))


def test_status_succeeds_when_subnet_env_and_delegate_are_there(cni: Harness) -> None:
    proc = cni.run("STATUS", cni.conf("1.1.0"), CNI_CONTAINERID=None, CNI_NETNS=None, CNI_IFNAME=None)
    assert (proc.returncode, proc.stdout) == (0, b""), proc
    assert cni.calls() == [], "a delegate without CNI 1.1 is not asked for its STATUS"


def test_status_without_subnet_env_is_plugin_not_available(cni: Harness) -> None:
    cni.subnet_file.unlink()
    err = error_of(cni.run("STATUS", cni.conf("1.1.0")))
    assert err["code"] == 50 and f"open {cni.subnet_file}: no such file or directory" in err["msg"]


def test_status_with_a_malformed_subnet_env_is_plugin_not_available(cni: Harness) -> None:
    cni.subnet_file.write_text("FLANNEL_SUBNET\n")
    err = error_of(cni.run("STATUS", cni.conf("1.1.0")))
    assert err["code"] == 50 and "FLANNEL_SUBNET has no value" in err["msg"]


def test_status_without_the_delegate_binary_is_plugin_not_available(cni: Harness) -> None:
    err = error_of(cni.run("STATUS", cni.conf("1.1.0", delegate={"type": "missing"})))
    assert err["code"] == 50 and 'failed to find plugin "missing"' in err["msg"]


def test_status_asks_a_cni_1_1_delegate(cni: Harness) -> None:
    cni.env["FAKE_VERSIONS"] = DEBIAN_AND_1_1
    assert cni.run("STATUS", cni.conf("1.1.0")).returncode == 0
    assert [c["cmd"] for c in cni.calls()] == ["STATUS"]
    err = error_of(cni.run("STATUS", cni.conf("1.1.0"), FAKE_FAIL="STATUS"))
    assert err["msg"] == "fake STATUS failure"


def add(cni: Harness, *container_ids: str) -> None:
    for container_id in container_ids:
        assert cni.run("ADD", cni.conf("1.1.0"), CNI_CONTAINERID=container_id).returncode == 0


def gc_conf(cni: Harness, *valid: str) -> dict[str, object]:
    return cni.conf("1.1.0", **{"cni.dev/valid-attachments": [{"containerID": c, "ifname": "eth0"} for c in valid]})


def test_gc_releases_and_forgets_attachments_that_are_not_valid(cni: Harness) -> None:
    add(cni, "a", "b", "c")
    proc = cni.run("GC", gc_conf(cni, "b"), CNI_CONTAINERID=None, CNI_NETNS=None, CNI_IFNAME=None)
    assert (proc.returncode, proc.stdout) == (0, b""), proc
    assert saved(cni) == ["b"]
    deletes = [c for c in cni.calls() if c["cmd"] == "DEL" and c["conf"]["cniVersion"] == "1.0.0"]
    assert [(c["env"]["CNI_CONTAINERID"], c["env"]["CNI_IFNAME"], c["env"]["CNI_NETNS"]) for c in deletes] == [
        ("a", "eth0", None),
        ("c", "eth0", None),
    ]


def test_gc_keeps_what_it_could_not_release(cni: Harness) -> None:
    add(cni, "a", "b")
    err = error_of(cni.run("GC", gc_conf(cni), FAKE_FAIL="DEL"))
    assert err["code"] == 999 and "GC failed for 2 item(s)" in err["msg"] and "a: fake DEL failure" in err["details"]
    assert saved(cni) == ["a", "b"]


def test_gc_with_null_attachments_releases_everything(cni: Harness) -> None:
    add(cni, "a")
    assert cni.run("GC", cni.conf("1.1.0", **{"cni.dev/valid-attachments": None})).returncode == 0
    assert saved(cni) == []


def test_gc_accepts_the_old_attachments_key(cni: Harness) -> None:
    add(cni, "a", "b")
    conf = cni.conf("1.1.0", **{"cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}]})
    assert cni.run("GC", conf).returncode == 0
    assert saved(cni) == ["a"]


def test_gc_without_an_attachment_list_refuses_to_release_anything(cni: Harness) -> None:
    add(cni, "a")
    err = error_of(cni.run("GC", cni.conf("1.1.0")))
    assert err["code"] == 7 and "cni.dev/valid-attachments" in err["msg"]
    assert saved(cni) == ["a"]


def test_gc_rejects_malformed_attachments(cni: Harness) -> None:
    for value in ({"containerID": "a"}, [{"ifname": "eth0"}], ["a"]):
        err = error_of(cni.run("GC", cni.conf("1.1.0", **{"cni.dev/valid-attachments": value})))
        assert err["code"] == 7, err


def test_gc_removes_stale_temporary_files_only(cni: Harness) -> None:
    add(cni, "a")
    old, new = cni.data_dir / ".x.1.tmp", cni.data_dir / ".y.2.tmp"
    old.write_text("{")
    new.write_text("{")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert cni.run("GC", gc_conf(cni, "a")).returncode == 0
    assert sorted(os.listdir(cni.data_dir)) == [".versions-bridge", ".y.2.tmp", "a"]


def test_gc_hands_the_attachment_list_to_a_cni_1_1_delegate(cni: Harness) -> None:
    cni.env["FAKE_VERSIONS"] = DEBIAN_AND_1_1
    add(cni, "a")
    assert cni.run("GC", gc_conf(cni, "a")).returncode == 0
    [gc] = [c for c in cni.calls() if c["cmd"] == "GC"]
    assert gc["conf"]["cni.dev/valid-attachments"] == [{"containerID": "a", "ifname": "eth0"}]
    assert gc["conf"]["cniVersion"] == "1.1.0" and gc["conf"]["ipam"]["type"] == "host-local"
    err = error_of(cni.run("GC", gc_conf(cni, "a"), FAKE_FAIL="GC"))
    assert "delegate GC: fake GC failure" in err["details"]


def test_gc_still_forgets_stale_attachments_while_flanneld_is_down(cni: Harness) -> None:
    add(cni, "a")
    cni.subnet_file.unlink()
    proc = cni.run("GC", gc_conf(cni))
    assert proc.returncode == 0, proc
    assert saved(cni) == []
    assert b"delegate GC skipped" in proc.stderr
    assert json.loads(proc.stdout or b"null") is None
