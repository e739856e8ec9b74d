"""The plugin's import path stays light: it runs once per pod, and every import is paid on every pod start.

Checked in a fresh interpreter (``sys.modules`` of this test process has everything loaded already), and not by
timing: docs/performance.md has the measurements behind the list of modules kept out.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
