"""``mk-docker-opts`` writes, byte for byte, what upstream's ``dist/mk-docker-opts.sh`` writes.

The vectors in ``docker_opts_vectors.json`` were produced by upstream's script itself: flannel-io/flannel
``dist/mk-docker-opts.sh`` at v0.28.9 (commit 5cd0d52648e891d73a6dcb9bb2c67d7c365cf7aa; unchanged up to
cdf76059), run by ``/bin/sh`` = dash 0.5.12 in a fresh network namespace, with ``-f FILE -d OUT`` plus each
case's flags and environment. Each case records the exit status, stderr (``PROG`` for the script's ``$0``) and
the output file's bytes, or ``null`` when none was written. They are a 114-case selection of a 1,076-case
comparison of the two programs (15 subnet files x 14 flag sets x 5 environments, 6 bad flag sets, 20 route
setups), which found no difference. Both ran the script's route check in a namespace holding ``routes``.

Here ours runs as a process: the console script, with the case's environment. Cases without routes run with
a PATH that has no ``ip``, as the script then finds no clash either; the route cases need a namespace (root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

VECTORS = json.loads((Path(__file__).parent / "docker_opts_vectors.json").read_text(encoding="utf-8"))
TOOL = Path(sys.executable).parent / "mk-docker-opts"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None,
    reason="a route clash needs a network namespace of our own (root, unshare, ip)",
)


def case_id(case: dict[str, Any]) -> str:
    return "-".join([case["file"], "_".join(case["flags"]) or "noflags", case["env"], case["routes"]])


def run_case(case: dict[str, Any], tmp_path: Path, path: str, prefix: list[str]) -> tuple[int, str, bytes | None]:
    """Run ``mk-docker-opts -f FILE -d OUT FLAGS`` the way the vectors were made; return status, stderr, output."""
    content = VECTORS["files"][case["file"]]
    subnet_file = tmp_path / f"{case['file']}.env"
    if content is not None:
        subnet_file.write_bytes(content.encode())
    out = tmp_path / "out.env"
    env = {"PATH": path, **VECTORS["envs"][case["env"]]}
    argv = [*prefix, str(TOOL), "-f", str(subnet_file), "-d", str(out), *case["flags"]]
    done = subprocess.run(argv, env=env, capture_output=True, timeout=30)
    stderr = done.stderr.decode().replace(str(TOOL), "PROG")
    return done.returncode, stderr, out.read_bytes() if out.exists() else None


def expected(case: dict[str, Any]) -> tuple[int, str, bytes | None]:
    output = case["output"]
    return case["rc"], case["stderr"], None if output is None else output.encode()


def test_the_console_script_is_installed() -> None:
    assert TOOL.exists(), "pip install -e . puts mk-docker-opts next to the interpreter"


@pytest.mark.parametrize("case", [c for c in VECTORS["cases"] if c["routes"] == "none"], ids=case_id)
def test_output_matches_upstreams_script(case: dict[str, Any], tmp_path: Path) -> None:
    """Ordering, quoting, the combined key's leading space, -k's old value, errors and usage: as upstream's."""
    no_ip = tmp_path / "bin"
    no_ip.mkdir()
    assert run_case(case, tmp_path, str(no_ip), []) == expected(case)


@needs_root
@pytest.mark.root
@pytest.mark.parametrize("case", [c for c in VECTORS["cases"] if c["routes"] != "none"], ids=case_id)
def test_a_route_via_a_gateway_to_our_subnet_fails_after_writing(case: dict[str, Any], tmp_path: Path) -> None:
    """The script's last step: ``ip route`` lines matching our subnet (as grep matches) with ``via`` mean exit 1."""
    setup = ["ip link set lo up", *(f"ip route add {route}" for route in VECTORS["routes"][case["routes"]])]
    prefix = ["unshare", "--net", "sh", "-ec", "; ".join([*setup, 'exec "$@"']), "sh"]
    path = os.pathsep.join(d for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin") if os.path.isdir(d))
    assert run_case(case, tmp_path, path, prefix) == expected(case)


def test_the_matrix_covers_what_the_issue_names() -> None:
    """A guard on the vectors: each behaviour the issue lists has at least one case."""
    cases = VECTORS["cases"]
    outputs = [c["output"] or "" for c in cases]
    assert any('DOCKER_OPTS=" --bip=' in o for o in outputs), "the combined key's leading space"
    assert any("--log-level=warn --storage-driver=overlay2  --bip" in o for o in outputs), "-k key's old value"
    assert any(c["stderr"] == "Invalid value of FLANNEL_IPMASQ: yes\n" and c["rc"] == 1 for c in cases)
    assert any(c["stderr"].startswith("Illegal option -x\nPROG [-f") and c["rc"] == 1 for c in cases)
    assert any(c["file"] == "missing" for c in cases)
    assert any(c["rc"] == 1 and "routing table already contains" in c["stderr"] for c in cases)


def test_defaults_are_upstreams_paths() -> None:
    from flannel import docker_opts

    flags = docker_opts.parse_flags([])
    assert (flags["f"], flags["d"], flags["k"]) == ("/run/flannel/subnet.env", "/run/docker_opts.env", "DOCKER_OPTS")


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("FLANNEL_SUBNET=10.1.2.1/24\nrm -rf /\n", "only NAME=VALUE assignments"),
        ("FLANNEL_SUBNET=$(hostname)\n", "only NAME=VALUE assignments"),
        ('FLANNEL_SUBNET="10.1.2.1/24\n', "unterminated"),
    ],
)
def test_a_subnet_file_that_is_not_assignments_is_refused(content: str, complaint: str, tmp_path: Path) -> None:
    """Upstream sources the file as shell; we do not run commands, we say what we cannot read and write nothing."""
    (tmp_path / "subnet.env").write_text(content)
    out = tmp_path / "out.env"
    done = subprocess.run(
        [str(TOOL), "-f", str(tmp_path / "subnet.env"), "-d", str(out)],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert complaint in done.stderr
    assert not out.exists()


def test_a_relative_subnet_file_is_read_from_the_working_directory(tmp_path: Path) -> None:
    """dash's ``.`` would search PATH for it and write nothing; we read the file that ``-f`` names."""
    (tmp_path / "subnet.env").write_text("FLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_MTU=1450\n")
    done = subprocess.run(
        [str(TOOL), "-f", "subnet.env", "-d", "out.env", "-c"],
        cwd=tmp_path,
        env={"PATH": str(tmp_path)},
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.env").read_text() == 'DOCKER_OPTS=" --bip=10.1.2.1/24 --mtu=1450"\n'


# --- the docker.service drop-in (deploy/systemd/docker.service.d/flannel.conf) -------------------------

DROP_IN = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "docker.service.d" / "flannel.conf"


def unit_settings(text: str) -> list[tuple[str, str, str]]:
    """``(section, key, value)`` in file order; repeated keys kept, as systemd reads them (empty resets)."""
    settings, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.append((section, key, value))
    return settings


def test_drop_in_orders_docker_after_flanneld_and_insists_on_a_subnet() -> None:
    unit = {(s, k): v for s, k, v in unit_settings(DROP_IN.read_text()) if s == "Unit"}
    assert unit[("Unit", "After")] == unit[("Unit", "Wants")] == "flanneld.service"
    assert unit[("Unit", "AssertPathExists")] == "/run/flannel/subnet.env"


def test_drop_in_steps_give_dockerd_flannels_options_after_the_hosts_own(tmp_path: Path) -> None:
    """systemd's steps, run for real with the paths moved to tmp_path: remove, generate, load, expand."""
    service = [(k, v) for s, k, v in unit_settings(DROP_IN.read_text()) if s == "Service"]
    pre = [v for k, v in service if k == "ExecStartPre"]
    assert pre[0] == "/bin/rm -f /run/docker_opts.env", "the previous run's DOCKER_OPTS must not be fed back"
    env_file = next(v for k, v in service if k == "EnvironmentFile").lstrip("-")
    generate = pre[1].split()
    assert generate[0] == "/opt/flannel/bin/mk-docker-opts" and generate[generate.index("-d") + 1] == env_file
    starts = [v for k, v in service if k == "ExecStart"]
    assert starts[0] == "" and "$DOCKER_OPTS" in starts[1].split(), "reset, then unbraced: split into words"

    subnet = tmp_path / "subnet.env"
    subnet.write_text(
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
    out = tmp_path / "docker_opts.env"
    args = [a.replace("/run/flannel/subnet.env", str(subnet)).replace(env_file, str(out)) for a in generate[1:]]
    for _restart in range(2):  # the same result on every start
        out.unlink(missing_ok=True)  # the first ExecStartPre
        host_env = {"PATH": str(tmp_path), "DOCKER_OPTS": "--log-level=warn"}  # e.g. Debian's /etc/default/docker
        done = subprocess.run([str(TOOL), *args], env=host_env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        key, _, quoted = out.read_text().strip().partition("=")
        assert key == "DOCKER_OPTS"
        argv = [
            w for word in starts[1].split() for w in (quoted.strip('"').split() if word == "$DOCKER_OPTS" else [word])
        ]
        assert argv[0] == "/usr/bin/dockerd"
        assert argv[-4:] == ["--log-level=warn", "--bip=10.5.72.1/24", "--ip-masq=false", "--mtu=1450"]
