"""The bundled CNI plugin where the node has no Python, and no libc: a private mount namespace hides every
interpreter, standard library and libpython this machine has (and, for VERSION, libc and the dynamic loader
too), then execs the installed launcher. ADD and DEL run with Debian's real ``bridge`` and ``host-local``
(which need the node's libc, so only Python is hidden there), in a node namespace, as a runtime calls them.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cni_bundle import REPO, build_launcher, build_runtime, bundle_env
from tests.netns import NETNS_DIR, NetNS, netns_factory_fixture  # noqa: F401 - fixture

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for mount and network namespaces"),
    pytest.mark.skipif(not os.path.exists("/usr/lib/cni/bridge"), reason="needs containernetworking-plugins"),
]

INSTALLER = REPO / "deploy" / "image" / "flannel_install.py"
PYTHON_PLACES = ("/usr/bin/python3*", "/usr/local/bin/python3*", "/usr/lib/python3*", "/usr/local/lib/python3*",
                 "/usr/lib/x86_64-linux-gnu/libpython3*", "/usr/lib/aarch64-linux-gnu/libpython3*",
                 "/usr/local/lib/libpython3*", "/root/.pyenv", os.path.realpath(sys.prefix))
LIBC_PLACES = ("/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2", "/lib/aarch64-linux-gnu/libc.so.6",
               "/lib/ld-linux-aarch64.so.1")
"""Covered by covering their directories, last: after that, no dynamic program (mount included) can start."""
V4_ENV = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"


def hiding_script(places: tuple[str, ...], then: str, libc: bool = False) -> str:
    """sh: cover each existing place (an empty tmpfs over a directory, /dev/null over a file), and with
    ``libc`` the directories of libc and the loader last, then ``then``."""
    found = {os.path.realpath(path) for pattern in places for path in glob.glob(pattern)}
    # Files first: a file under a directory that is covered later is then covered twice, never missed.
    files, dirs = sorted(p for p in found if not os.path.isdir(p)), sorted(p for p in found if os.path.isdir(p))
    lines = ["set -e", "mount --make-rprivate /"]
    lines += [f"mount --bind /dev/null '{path}'" for path in files]
    lines += [f"mount -t tmpfs none '{path}'" for path in dirs]
    if libc:
        libc_dirs = sorted({os.path.dirname(os.path.realpath(p)) for p in LIBC_PLACES if os.path.exists(p)})
        lines += [f"mount -t tmpfs none '{path}'" for path in libc_dirs]
    lines.append(then)
    return "\n".join(lines)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("bundled")
    env = bundle_env(build_runtime(top / "runtime"), build_launcher(top / "launcher"))
    bin_dir = top / "bin"
    bin_dir.mkdir()
    out = subprocess.run([sys.executable, str(INSTALLER), "install-cni-plugin", "--python=bundled", str(bin_dir)],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return bin_dir / "flannel"


def test_version_with_no_python_and_no_libc_on_the_node(installed: Path) -> None:
    script = hiding_script(PYTHON_PLACES, f"exec '{installed}'", libc=True)
    # sh and mount run before libc is covered; the launcher is static and brings its own loader and libc.
    out = subprocess.run(["unshare", "--mount", "sh", "-c", script], env={"CNI_COMMAND": "VERSION"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["supportedVersions"][-1] == "1.1.0"
    check = hiding_script(PYTHON_PLACES, "exec /usr/bin/env true", libc=True)
    assert subprocess.run(["unshare", "--mount", "sh", "-c", check], capture_output=True, timeout=30).returncode != 0, \
        "the hidden libc must really be gone: a dynamic program cannot start"


def test_add_and_del_with_real_bridge_where_no_python_is_reachable(
        installed: Path, netns_factory: Callable[..., NetNS], tmp_path: Path) -> None:
    node, pod = netns_factory(underlay=False), netns_factory(underlay=False)
    (tmp_path / "subnet.env").write_text(V4_ENV)
    conf = {"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel", "subnetFile": str(tmp_path / "subnet.env"),
            "dataDir": str(tmp_path / "flannel"), "ipam": {"dataDir": str(tmp_path / "ipam")},
            "delegate": {"bridge": "fbundled0"}}
    probe = "for p in python3 python3.11 python3.12 python; do command -v $p && exit 97; done; "
    script = hiding_script(PYTHON_PLACES, probe + f"exec '{installed}'")

    def call(command: str) -> subprocess.CompletedProcess[str]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "ctr1", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
               "CNI_NETNS": f"{NETNS_DIR}/{pod.name}", "PATH": "/usr/local/bin:/usr/bin:/bin"}
        return subprocess.run(["ip", "netns", "exec", node.name, "unshare", "--mount", "sh", "-c", script],
                              input=json.dumps(conf), env=env, capture_output=True, text=True, timeout=60)

    added = call("ADD")
    assert added.returncode == 0, (added.stdout, added.stderr)
    [ip] = json.loads(added.stdout)["ips"]
    assert ip["address"].startswith("10.1.17.") and ip["gateway"] == "10.1.17.1"
    [link] = pod.ip_json("addr", "show", "dev", "eth0")
    assert [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"] == [ip["address"]]
    deleted = call("DEL")
    assert deleted.returncode == 0, (deleted.stdout, deleted.stderr)
    assert not pod.ip_json("link", "show")[1:], "DEL removed the pod's interface"
    assert not list((tmp_path / "ipam" / "cbr0").glob("10.1.17.*")), "DEL released the address"
