"""The plugin's import path stays light: it runs once per pod, and every import is paid on every pod start.

Checked in a fresh interpreter (``sys.modules`` of this test process has everything loaded already), and not by
timing: docs/performance.md has the measurements behind the list of modules kept out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DAEMON_MODULES = [
    "grpc",
    "etcd3aio",
    "flannel.netlink",
    "flannel.subnet",
    "flannel.daemon",
    "flannel.backend",
    "asyncio",
]
"""The daemon's libraries: never on the plugin's path."""
SLOW_STDLIB = ["json", "re", "dataclasses", "inspect", "typing", "ipaddress", "subprocess", "logging", "enum"]
"""Standard modules whose import alone costs 3–10 ms (measured); the ADD and DEL paths do without them."""


def loaded_after(code: str) -> set[str]:
    # The snapshot is taken before json is imported to print it.
    script = f"import sys\n{code}\nmods = sorted(sys.modules)\nimport json\nprint(json.dumps(mods))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_importing_the_plugin_loads_no_daemon_library() -> None:
    loaded = loaded_after("import flannel.cni.plugin")
    assert not {m for m in loaded for bad in DAEMON_MODULES if m == bad or m.startswith(bad + ".")}


@pytest.mark.parametrize(
    "verb_modules",
    [
        "flannel.cni.plugin, flannel.cni.delegate, flannel.cni.invoke, flannel.cni.state, flannel.cni.subnet_file",
        "flannel.cni.plugin, flannel.cni.results, flannel.cni.cidr",
    ],
    ids=["add-del-check", "negotiation"],
)
def test_the_verb_paths_load_no_slow_standard_module(verb_modules: str) -> None:
    loaded = loaded_after(f"import {verb_modules}")
    assert not loaded & set(DAEMON_MODULES + SLOW_STDLIB)


def test_lite_json_is_used_without_loading_json() -> None:
    code = (
        "from flannel.cni import lite\n"
        "assert lite.loads(lite.dumps({'a': [1, 'x']})) == {'a': [1, 'x']}\n"
        "assert 'json' not in sys.modules and 're' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", "import sys\n" + code], check=True)


# --- every verb of the installed plugin, without os ------------------------------------------------------

NOT_ON_A_VERB_PATH = {"os", "_collections_abc", "stat", "posixpath", "genericpath"}
"""What ``import os`` brings (1.3 ms of every call; docs/performance.md, session 6): no verb imports it."""
STUB_DELEGATE = """#!/bin/sh
cat >/dev/null
case "$CNI_COMMAND" in
ADD) echo '{"cniVersion":"1.1.0","ips":[{"address":"10.1.17.2/24"}]}' ;;
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]}' ;;
esac
"""
"""A delegate that answers at once: ADD's result, VERSION up to 1.0.0 (so STATUS and GC stop at asking it)."""
VERBS = ("ADD", "CHECK", "STATUS", "GC", "DEL", "VERSION")


def imports_per_verb(argv: list[str], top: Path) -> dict[str, list[str]]:
    """Run each verb once, in that order, through ``argv`` (an interpreter with ``-X importtime``, then the
    plugin's entry point), against the stub delegate, with a data directory that ADD creates (its parent is
    there, as on a node); each must succeed. The modules each call imported through importlib, in order (the
    plugin's own modules, loaded from ``plugin.marshal`` by ``run.py``, do not go through it)."""
    cni = top / "cni"
    cni.mkdir()
    (cni / "bridge").write_text(STUB_DELEGATE)
    (cni / "bridge").chmod(0o755)
    (top / "subnet.env").write_text("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
                                    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    conf = {"cniVersion": "1.1.0", "name": "cbr0", "type": "flannel", "subnetFile": str(top / "subnet.env"),
            "dataDir": str(top / "data"), "cni.dev/valid-attachments": [{"containerID": "pod1"}]}
    env = {"PATH": "/usr/bin:/bin", "CNI_CONTAINERID": "pod1", "CNI_NETNS": "/var/run/netns/pod1",
           "CNI_IFNAME": "eth0", "CNI_PATH": str(cni)}
    found = {}
    for verb in VERBS:
        out = subprocess.run(argv, input=json.dumps(conf).encode(), env={**env, "CNI_COMMAND": verb},
                             capture_output=True, timeout=60)
        assert out.returncode == 0, (verb, out.stdout, out.stderr)
        assert (top / "data" / "pod1").is_file() == (verb not in ("DEL", "VERSION")), verb  # the verb ran
        lines = out.stderr.decode().splitlines()
        found[verb] = [line.split("|")[-1].strip() for line in lines if line.startswith("import time:")][1:]
    return found


def test_no_verb_of_the_installed_plugin_imports_os(tmp_path: Path) -> None:
    """The plugin as the node's Python runs it (``run.py``, ``plugin.marshal``), each verb in a fresh process."""
    from tests.unit.test_deploy_image import load_installer

    installer = load_installer()
    bin_dir = tmp_path / "bin"
    pkg_id = installer.install_cni_plugin(str(bin_dir), mode="node")
    run = bin_dir / ".flannel" / pkg_id / "run.py"
    found = imports_per_verb([sys.executable, "-I", "-S", "-X", "importtime", str(run)], tmp_path)
    for verb, modules in found.items():
        assert not NOT_ON_A_VERB_PATH & set(modules), (verb, modules)
        assert "__future__" not in modules, (verb, modules)  # a compiler flag in plugin.marshal
        assert "_json" not in modules, (verb, modules)  # plain documents are read and written by plainjson
