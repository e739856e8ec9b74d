"""The image's own parts (deploy/image/, Dockerfile), tested without building the image.

* ``install-cni-plugin`` puts the plugin into a CNI bin directory, and the launcher it writes runs the plugin
  with a Python that has no ``flannel`` package installed, as a node's has not: VERSION, ADD and DEL against
  a stand-in delegate. No Python, or too old a one, gives a CNI error that says so. Reinstalling, upgrading
  and pruning keep a working plugin at every step.
* ``install-conf`` copies atomically with the source's mode, and insists on exactly two arguments.
* ``iptables-wrapper`` picks the node's iptables backend, driven through stand-in ``*-save`` tools.
* The Dockerfile copies only what exists and what .dockerignore lets through, and creates what the
  manifests run.
"""

from __future__ import annotations

import ast
import dis
import importlib.util
import json
import marshal
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.deployed import DEPLOYED_ENV

REPO = Path(__file__).resolve().parents[2]
IMAGE_DIR = REPO / "deploy" / "image"
INSTALLER = IMAGE_DIR / "flannel_install.py"
WRAPPER = IMAGE_DIR / "iptables-wrapper"
SRC_PACKAGE = REPO / "src" / "flannel"
SUBNET_ENV = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"

ADD_RESULT = {
    "cniVersion": "0.3.1",
    "interfaces": [{"name": "eth0", "sandbox": "/x"}],
    "ips": [{"version": "4", "address": "10.1.17.2/24", "gateway": "10.1.17.1", "interface": 0}],
}
FAKE_BRIDGE = f"""#!/bin/sh
# Stand-in delegate: keeps what it was given, answers like the bridge plugin.
cat > "$FAKE_DIR/$CNI_COMMAND.conf"
case "$CNI_COMMAND" in
ADD) echo '{json.dumps(ADD_RESULT)}' ;;
VERSION) echo '{{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}}' ;;
esac
"""


def load_installer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flannel_install", INSTALLER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def installer() -> ModuleType:
    return load_installer()


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding this interpreter outside the virtualenv, as ``python3.X``: no ``flannel`` in it.

    Named by its version, it is the launcher's first choice even where /usr/bin has a python3.X too.
    """
    pybin = tmp_path_factory.mktemp("pybin")
    python = pybin / f"python3.{sys.version_info.minor}"
    python.symlink_to(os.path.realpath(sys.executable))
    probe = subprocess.run([str(python), "-c", "import flannel"], capture_output=True, timeout=30)
    if probe.returncode == 0:
        pytest.skip(f"{os.path.realpath(sys.executable)} can import flannel outside the venv")
    return pybin


def run_installer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(INSTALLER), *args], capture_output=True, text=True, timeout=60)


def node_env(pybin: Path, **extra: str) -> dict[str, str]:
    """The environment a container runtime gives a plugin: a plain PATH, no Python variables."""
    return {"PATH": f"{pybin}:/usr/local/bin:/usr/bin:/bin", **extra}


def call_plugin(
    launcher: Path, pybin: Path, command: str, stdin: bytes = b"", **env: str
) -> subprocess.CompletedProcess[bytes]:
    full = node_env(pybin, CNI_COMMAND=command, **env)
    return subprocess.run([str(launcher)], input=stdin, env=full, capture_output=True, timeout=30)


# --- install-cni-plugin --------------------------------------------------------------------------------


def test_installed_plugin_answers_version_with_a_bare_host_python(tmp_path: Path, bare_python: Path) -> None:
    out = run_installer("install-cni-plugin", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "Python >= 3.11" in out.stdout
    launcher = tmp_path / "flannel"
    assert stat.S_IMODE(launcher.stat().st_mode) == 0o755
    assert launcher.read_text().startswith("#!/bin/sh\n")
    result = call_plugin(launcher, bare_python, "VERSION")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["supportedVersions"][-1] == "1.1.0"
    assert list((tmp_path / ".flannel").rglob("cni/__pycache__/plugin.*.pyc"))


def test_launcher_without_any_python_says_what_the_node_needs(tmp_path: Path, installer: Any) -> None:
    installer.install_cni_plugin(str(tmp_path), str(SRC_PACKAGE))
    empty = tmp_path / "empty"
    empty.mkdir()
    out = subprocess.run(
        [str(tmp_path / "flannel")], env={"PATH": str(empty), "CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30
    )
    assert out.returncode == 1
    error = json.loads(out.stdout)
    assert error["code"] == 999
    assert "needs Python 3.11 or later" in error["msg"]
    assert b"needs Python 3.11" in out.stderr


PYENV_SHIM = """#!/bin/sh
# What pyenv's shim does for a version that is not installed: complain and exit 127.
echo "$0" >> "$SHIM_LOG"
echo "pyenv: ${0##*/}: command not found" >&2
exit 127
"""
OLD_PYTHON = """#!/bin/sh
# Stand-in for a Python 3.9 (none can run here): answers the launcher's probe with its version.
echo "$0" >> "$SHIM_LOG"
echo 3.9.18
"""


@pytest.fixture
def broken_pythons(tmp_path: Path) -> Path:
    """A directory whose two newest ``python3.X`` names fail: a pyenv shim (exit 127) and a too-old Python."""
    if sys.version_info >= (3, 15):
        pytest.skip("the shims take the names python3.16 and python3.15, this interpreter's own")
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, text in (("python3.16", PYENV_SHIM), ("python3.15", OLD_PYTHON)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    return shims


def shim_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "shim.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("verb", ["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"])
def test_launcher_with_only_broken_pythons_answers_every_verb_with_a_cni_error(
    tmp_path: Path, installer: Any, broken_pythons: Path, verb: str
) -> None:
    """A runtime that gets no error object falls back to its own network; it must get one, whatever the verb."""
    installer.install_cni_plugin(str(tmp_path), str(SRC_PACKAGE))
    env = {"PATH": str(broken_pythons), "CNI_COMMAND": verb, "SHIM_LOG": str(tmp_path / "shim.log")}
    out = subprocess.run(
        [str(tmp_path / "flannel")], input=b'{"cniVersion":"1.0.0"}', env=env, capture_output=True, timeout=30
    )
    assert out.returncode == 1
    error = json.loads(out.stdout)
    assert error["code"] == (50 if verb == "STATUS" else 999)
    assert error["msg"].startswith("the flannel CNI plugin needs Python 3.11 or later on this host")
    assert "python3.16 (exit status 127)" in error["details"]
    assert "python3.15 (Python 3.9.18)" in error["details"]
    assert f"PATH={broken_pythons}" in error["details"]
    assert b"needs Python 3.11" in out.stderr


def test_launcher_passes_over_broken_pythons_to_a_working_one_and_remembers_it(
    tmp_path: Path, broken_pythons: Path, bare_python: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    assert run_installer("install-cni-plugin", str(bin_dir)).returncode == 0
    env = {"PATH": f"{broken_pythons}:{bare_python}", "CNI_COMMAND": "VERSION", "SHIM_LOG": str(tmp_path / "shim.log")}
    first = subprocess.run([str(bin_dir / "flannel")], env=env, capture_output=True, timeout=30)
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads(first.stdout)["supportedVersions"][-1] == "1.1.0"
    assert len(shim_calls(tmp_path)) == 2, "each broken candidate was tried once"
    (cache,) = (bin_dir / ".flannel").glob("*/python")
    assert cache.read_text() == f"{bare_python}/python3.{sys.version_info.minor}\n"

    again = subprocess.run([str(bin_dir / "flannel")], env=env, capture_output=True, timeout=30)
    assert again.returncode == 0, again.stderr
    assert len(shim_calls(tmp_path)) == 2, "the remembered interpreter is used without probing"


def test_launcher_probes_again_when_the_remembered_python_is_gone(
    tmp_path: Path, installer: Any, bare_python: Path
) -> None:
    pkg_id = installer.install_cni_plugin(str(tmp_path), str(SRC_PACKAGE))
    cache = tmp_path / ".flannel" / pkg_id / "python"
    cache.write_text(str(tmp_path / "uninstalled" / "python3.11") + "\n")
    out = call_plugin(tmp_path / "flannel", bare_python, "VERSION")
    assert out.returncode == 0, out.stderr
    assert cache.read_text() == f"{bare_python}/python3.{sys.version_info.minor}\n"


def test_installed_plugin_adds_and_deletes_through_its_delegate(tmp_path: Path, bare_python: Path) -> None:
    """ADD and DEL import most of the plugin: the installed copy must hold all of it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    assert run_installer("install-cni-plugin", str(bin_dir)).returncode == 0
    bridge = bin_dir / "bridge"
    bridge.write_text(FAKE_BRIDGE)
    bridge.chmod(0o755)
    (tmp_path / "subnet.env").write_text(SUBNET_ENV)
    conf = {
        "cniVersion": "0.3.1",
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": str(tmp_path / "subnet.env"),
        "dataDir": str(tmp_path / "data"),
        "delegate": {"hairpinMode": True, "isDefaultGateway": True},
    }
    env = {
        "CNI_CONTAINERID": "ctr1",
        "CNI_NETNS": "/var/run/netns/pod",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(bin_dir),
        "FAKE_DIR": str(tmp_path),
    }
    added = call_plugin(bin_dir / "flannel", bare_python, "ADD", json.dumps(conf).encode(), **env)
    assert added.returncode == 0, added.stdout + added.stderr
    assert json.loads(added.stdout)["ips"][0]["address"] == "10.1.17.2/24"
    delegate = json.loads((tmp_path / "ADD.conf").read_text())
    assert delegate["type"] == "bridge"
    assert delegate["ipam"]["ranges"] == [[{"subnet": "10.1.17.0/24"}]]
    assert (tmp_path / "data" / "ctr1").exists()

    deleted = call_plugin(bin_dir / "flannel", bare_python, "DEL", json.dumps(conf).encode(), **env)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert json.loads((tmp_path / "DEL.conf").read_text()) == delegate
    assert not (tmp_path / "data" / "ctr1").exists()


def test_plugin_names_the_problem_on_an_old_python(tmp_path: Path, installer: Any) -> None:
    """RHEL 9's python3 is 3.9: run.py must say so, as a CNI error, instead of failing on a syntax error."""
    pkg_id = installer.install_cni_plugin(str(tmp_path), str(SRC_PACKAGE))
    run_py = tmp_path / ".flannel" / pkg_id / "run.py"
    ast.parse(run_py.read_text(), str(run_py), feature_version=(3, 7))  # no newer syntax
    code = (
        "import runpy, sys; sys.version_info = (3, 9, 18, 'final', 0); "
        f"runpy.run_path({str(run_py)!r}, run_name='__main__')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    error = json.loads(out.stdout)
    assert error["code"] == 999
    assert "needs Python 3.11 or later" in error["msg"]
    assert "3.9.18" in error["details"]
    assert "needs Python 3.11" in out.stderr


def copy_package(dest: Path, marker: str) -> Path:
    """A copy of src/flannel with one comment changed: another version of the plugin."""
    for path in SRC_PACKAGE.rglob("*.py"):
        target = dest / path.relative_to(SRC_PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    with (dest / "cni" / "plugin.py").open("a") as f:
        f.write(f"# {marker}\n")
    return dest


def test_reinstalling_the_same_sources_changes_nothing(tmp_path: Path, installer: Any) -> None:
    first = installer.install_cni_plugin(str(tmp_path), str(SRC_PACKAGE))
    launcher_before = (tmp_path / "flannel").read_text()
    second = installer.install_cni_plugin(str(tmp_path), str(SRC_PACKAGE))
    assert first == second
    assert (tmp_path / "flannel").read_text() == launcher_before
    assert sorted(p.name for p in (tmp_path / ".flannel").iterdir()) == [first]
    installed = tmp_path / ".flannel" / first / "flannel"
    assert sorted(p.relative_to(installed).as_posix() for p in installed.rglob("*.py")) == sorted(
        p.relative_to(SRC_PACKAGE).as_posix() for p in SRC_PACKAGE.rglob("*.py")
    )
    assert list(installed.rglob("__pycache__/*.pyc")), "byte-compiled for the image's Python"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".flannel", "flannel"]  # no temporary leftovers


def test_reinstalling_repairs_a_damaged_copy(tmp_path: Path, installer: Any, bare_python: Path) -> None:
    """A node crash can cut a file short; the next start of the DaemonSet's pod must put it right."""
    pkg_id = installer.install_cni_plugin(str(tmp_path), str(SRC_PACKAGE))
    installed = tmp_path / ".flannel" / pkg_id
    code_file = installed / installer.cni_runtime.CODE_FILE
    whole = code_file.read_bytes()
    damaged = installed / "flannel" / "cni" / "plugin.py"
    damaged.write_text("")
    code_file.write_bytes(whole[: len(whole) // 2])
    assert call_plugin(tmp_path / "flannel", bare_python, "VERSION").returncode != 0
    assert installer.install_cni_plugin(str(tmp_path), str(SRC_PACKAGE)) == pkg_id
    assert damaged.read_bytes() == (SRC_PACKAGE / "cni" / "plugin.py").read_bytes()
    assert code_file.read_bytes() == whole
    assert call_plugin(tmp_path / "flannel", bare_python, "VERSION").returncode == 0


def loaded_through_run_py(run_py: Path, python: str, modules: str) -> dict[str, list[str]]:
    """Run ``run.py`` up to (not including) ``main()``, import ``modules``; each flannel module's loader and
    the file its functions' code names."""
    probe = (
        "import sys, types\n"
        f"run = {str(run_py)!r}\n"
        "source = open(run).read().rsplit('main()', 1)[0]\n"
        "exec(compile(source, run, 'exec'), {'__file__': run, '__name__': 'run'})\n"
        f"import {modules}\n"
        "out = {}\n"
        "for name, mod in sorted(sys.modules.items()):\n"
        "    if name.split('.')[0] == 'flannel':\n"
        "        files = {f.__code__.co_filename for f in vars(mod).values() if isinstance(f, types.FunctionType)\n"
        "                 and f.__module__ == name}\n"
        "        out[name] = [getattr(mod.__loader__, '__name__', type(mod.__loader__).__name__), *sorted(files)]\n"
        "print(repr(out))\n"
    )
    done = subprocess.run([python, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    result: dict[str, list[str]] = ast.literal_eval(done.stdout)
    return result


VERB_MODULES = "flannel.cni.plugin, flannel.cni.delegate, flannel.cni.invoke, flannel.cni.state, " \
    "flannel.cni.subnet_file, flannel.cni.results, flannel.cni.cidr"
"""Everything ADD, DEL, CHECK, STATUS, GC and version negotiation import."""


def test_the_plugins_modules_come_from_the_code_file_and_name_their_sources(tmp_path: Path, installer: Any) -> None:
    """run.py imports every module the verbs need from one file of byte code (docs/performance.md); their
    functions name the installed sources, so a traceback shows the lines."""
    pkg_id = installer.install_cni_plugin(str(tmp_path), str(SRC_PACKAGE))
    installed = tmp_path / ".flannel" / pkg_id
    loaded = loaded_through_run_py(installed / "run.py", os.path.realpath(sys.executable), VERB_MODULES)
    assert {"flannel.cni.plugin", "flannel.atomicfile", "flannel.cni.results"} <= set(loaded)
    for name, (loader, *files) in loaded.items():
        assert loader == "Finder", name
        assert all(Path(f).resolve().is_relative_to(installed.resolve()) and Path(f).is_file() for f in files), name


def module_attributes_through_run_py(run_py: Path, modules: str, *, fast: bool) -> dict[str, list[object]]:
    """``run.py`` run up to ``main()`` (``fast``: as installed; else without its import shortcut, so that every
    import takes importlib's way through its Finder), then ``modules`` imported: what importlib sets on each
    flannel module, and whether each is bound in its package."""
    probe = (
        "import sys\n"
        f"run = {str(run_py)!r}\n"
        "source = open(run).read().rsplit('main()', 1)[0]\n"
        f"source = source if {fast!r} else source.replace('builtins.__import__ = plugin_import', '')\n"
        "exec(compile(source, run, 'exec'), {'__file__': run, '__name__': 'run'})\n"
        f"import {modules}\n"
        "out = {}\n"
        "for name, mod in sorted(sys.modules.items()):\n"
        "    if name.split('.')[0] == 'flannel':\n"
        "        spec = mod.__spec__\n"
        "        package, _, child = name.rpartition('.')\n"
        "        out[name] = [mod.__name__, mod.__package__, mod.__file__, getattr(mod, '__path__', None),\n"
        "                     mod.__loader__.__name__, spec.name, spec.origin, spec.parent, spec.has_location,\n"
        "                     spec.submodule_search_locations, spec.loader.__name__,\n"
        "                     not package or getattr(sys.modules[package], child) is mod]\n"
        "print(repr(out))\n"
    )
    done = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=30,
                          check=True)
    result: dict[str, list[object]] = ast.literal_eval(done.stdout)
    return result


def test_run_py_imports_the_plugins_modules_as_importlib_would(tmp_path: Path, installer: Any) -> None:
    """``run.py`` loads the plugin's modules itself, past importlib's machinery (docs/performance.md, session 6):
    each module gets the attributes importlib would give it (``__cached__`` aside), and is bound in its package."""
    pkg_id = installer.install_cni_plugin(str(tmp_path), str(SRC_PACKAGE))
    run_py = tmp_path / ".flannel" / pkg_id / "run.py"
    fast = module_attributes_through_run_py(run_py, VERB_MODULES, fast=True)
    assert "builtins.__import__ = plugin_import" in run_py.read_text()
    assert fast == module_attributes_through_run_py(run_py, VERB_MODULES, fast=False)
    assert {"flannel", "flannel.cni", "flannel.cni.plugin", "flannel.atomicfile", "flannel.cni.results"} <= set(fast)


def test_the_code_file_applies_postponed_annotations_without_importing_future(installer: Any) -> None:
    """``from __future__ import annotations`` becomes a compiler flag: same annotations (text), same lines, and
    no import of ``__future__`` when the module runs."""
    source = (SRC_PACKAGE / "cni" / "netconf.py").read_bytes()
    code = installer.cni_runtime._compile_module(source, "flannel/cni/netconf.py")
    names = {i.argval for i in dis.get_instructions(code) if i.opname == "IMPORT_NAME"}
    assert "__future__" not in names and "flannel.cni.errors" in names
    plain = compile(source, "flannel/cni/netconf.py", "exec", dont_inherit=True)
    functions = {c.co_name: c for c in code.co_consts if hasattr(c, "co_firstlineno")}
    assert functions and all(functions[c.co_name].co_firstlineno == c.co_firstlineno
                             for c in plain.co_consts if hasattr(c, "co_firstlineno"))
    module: dict[str, Any] = {"__name__": "netconf_copy"}
    exec(code, module)
    assert "annotations" not in module
    assert module["read_args"].__annotations__ == {"environ": "Mapping[str, str]", "return": "CniArgs"}


def test_a_code_file_for_another_python_or_cut_short_is_passed_over(tmp_path: Path, installer: Any,
                                                                    bare_python: Path) -> None:
    """A node's Python of another version cannot run this byte code: it imports the sources, as before."""
    pkg_id = installer.install_cni_plugin(str(tmp_path), str(SRC_PACKAGE))
    installed = tmp_path / ".flannel" / pkg_id
    code_file = installed / installer.cni_runtime.CODE_FILE
    whole = code_file.read_bytes()
    _, digest, modules = marshal.loads(whole)
    for damage in (marshal.dumps((b"\0\0\r\n", digest, modules)), whole[:100]):
        code_file.write_bytes(damage)
        loaded = loaded_through_run_py(installed / "run.py", os.path.realpath(sys.executable), VERB_MODULES)
        assert {loader for loader, *_ in loaded.values()} == {"SourceFileLoader"}
        assert call_plugin(tmp_path / "flannel", bare_python, "VERSION").returncode == 0


def test_upgrades_keep_the_previous_version_and_prune_older_ones(tmp_path: Path, installer: Any) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ids = [
        installer.install_cni_plugin(str(bin_dir), str(copy_package(tmp_path / f"v{i}", f"version {i}")))
        for i in range(3)
    ]
    assert len(set(ids)) == 3
    assert all(i.startswith(installer.__version__ + "-") for i in ids)
    assert installer.installed_id(str(bin_dir / "flannel")) == ids[2]
    # the one before stays for plugin calls that started from it; the oldest is gone
    assert sorted(p.name for p in (bin_dir / ".flannel").iterdir()) == sorted(ids[1:])


def test_stale_temporary_directories_are_removed_and_fresh_ones_kept(tmp_path: Path, installer: Any) -> None:
    store = tmp_path / ".flannel"
    stale, fresh = store / ".tmp-crashed-1", store / ".tmp-running-2"
    stale.mkdir(parents=True)
    fresh.mkdir()
    os.utime(stale, (1, 1))
    pkg_id = installer.install_cni_plugin(str(tmp_path), str(SRC_PACKAGE))
    assert sorted(p.name for p in store.iterdir()) == sorted([pkg_id, fresh.name])


def test_installer_refuses_what_is_not_the_package(tmp_path: Path, installer: Any) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "x.py").write_text("")
    with pytest.raises(installer.InstallError, match=r"no cni/plugin\.py"):
        installer.install_cni_plugin(str(tmp_path / "bin"), str(tmp_path / "pkg"))


def test_installer_usage_errors() -> None:
    for args in ([], ["install-cni-plugin"], ["install-cni-plugin", "a", "b"], ["frobnicate"]):
        out = run_installer(*args)
        assert out.returncode == 1, args
        assert "usage:" in out.stderr


def test_installer_dispatches_on_the_name_it_is_called_by(tmp_path: Path) -> None:
    link = tmp_path / "install-conf"
    link.symlink_to(INSTALLER)
    out = subprocess.run([sys.executable, str(link), "only-one"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.startswith("usage: install-conf SOURCE DESTINATION")


# --- install-conf --------------------------------------------------------------------------------------


def test_install_conf_copies_atomically_with_the_source_mode(tmp_path: Path) -> None:
    source = tmp_path / "cni-conf.json"
    source.write_text('{"name": "cbr0"}\n')
    source.chmod(0o640)
    dest_dir = tmp_path / "net.d"
    dest_dir.mkdir()
    dest = dest_dir / "10-flannel.conflist"
    dest.write_text("old")
    out = run_installer("install-conf", str(source), str(dest))
    assert out.returncode == 0, out.stderr
    assert dest.read_text() == '{"name": "cbr0"}\n'
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert [p.name for p in dest_dir.iterdir()] == ["10-flannel.conflist"]


@pytest.mark.parametrize("args", [[], ["a"], ["a", "b", "c"]])
def test_install_conf_wants_exactly_two_arguments(args: list[str]) -> None:
    out = run_installer("install-conf", *args)
    assert out.returncode == 1
    assert out.stderr.strip() == "usage: install-conf SOURCE DESTINATION"


def test_install_conf_reports_a_missing_source(tmp_path: Path) -> None:
    out = run_installer("install-conf", str(tmp_path / "nope"), str(tmp_path / "dest"))
    assert out.returncode == 1
    assert out.stderr.startswith("install-conf: ") and "nope" in out.stderr
    assert not (tmp_path / "dest").exists()


# --- iptables-wrapper ----------------------------------------------------------------------------------

HINT = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"
RULES = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j MASQUERADE\n-A POSTROUTING -j RETURN\nCOMMIT\n"
ONE_RULE = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j ACCEPT\nCOMMIT\n"


class Iptables:
    """A PATH of stand-ins: ``*-<mode>-save`` print the tables the test set, the rest log how they were called.

    The stand-ins come first on PATH and /usr/sbin is not on it, so nothing here touches the real iptables or
    the machine's alternatives.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bin = tmp / "stubs"
        self.bin.mkdir()
        self.log = tmp / "calls.log"
        for family in ("iptables", "ip6tables"):
            for mode in ("legacy", "nft"):
                self._stub(f"{family}-{mode}-save", f'cat "{tmp}/{family}-{mode}.rules" 2>/dev/null || true')
                for suffix in ("", "-restore"):
                    self._stub(f"{family}-{mode}{suffix}", f'echo "{family}-{mode}{suffix} $*" >> "{self.log}"')
        self._stub("update-alternatives", f'echo "update-alternatives $*" >> "{self.log}"')

    def _stub(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)

    def tables(self, family: str, mode: str, text: str) -> None:
        (self.tmp / f"{family}-{mode}.rules").write_text(text)

    def run(self, name: str, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
        """Call the wrapper as ``name``; return the result and the stand-ins' calls (not the -save ones)."""
        link = self.tmp / name
        if not link.exists():
            link.symlink_to(WRAPPER)
        out = subprocess.run(
            [str(link), *args],
            env={"PATH": f"{self.bin}:/usr/bin:/bin", **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        calls = [c.rstrip() for c in self.log.read_text().splitlines()] if self.log.exists() else []
        self.log.unlink(missing_ok=True)
        return out, calls


@pytest.fixture
def iptables(tmp_path: Path) -> Iptables:
    return Iptables(tmp_path)


def alternatives(mode: str) -> list[str]:
    return [f"update-alternatives --set {f} /usr/sbin/{f}-{mode}" for f in ("iptables", "ip6tables")]


def test_wrapper_follows_the_kubelets_hint_in_nft(iptables: Iptables) -> None:
    iptables.tables("iptables", "nft", HINT)
    iptables.tables("iptables", "legacy", RULES + ONE_RULE)  # more rules, but the hint wins
    out, calls = iptables.run("iptables-restore", "--noflush", "--wait")
    assert out.returncode == 0, out.stderr
    assert calls == [*alternatives("nft"), "iptables-nft-restore --noflush --wait"]


def test_wrapper_follows_the_kubelets_hint_in_legacy(iptables: Iptables) -> None:
    iptables.tables("ip6tables", "legacy", HINT.replace("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"))
    out, calls = iptables.run("ip6tables", "-t", "nat", "-S")
    assert out.returncode == 0, out.stderr
    assert calls == [*alternatives("legacy"), "ip6tables-legacy -t nat -S"]


def test_wrapper_without_hints_takes_the_backend_with_more_rules(iptables: Iptables) -> None:
    iptables.tables("iptables", "legacy", RULES)
    iptables.tables("ip6tables", "nft", ONE_RULE)
    out, calls = iptables.run("iptables-save")
    assert out.returncode == 0, out.stderr
    assert calls == alternatives("legacy")
    assert out.stdout == RULES  # iptables-legacy-save ran


def test_wrapper_on_an_empty_node_takes_nft(iptables: Iptables) -> None:
    out, calls = iptables.run("iptables", "-L")
    assert out.returncode == 0, out.stderr
    assert calls == [*alternatives("nft"), "iptables-nft -L"]


def test_wrapper_mode_can_be_forced(iptables: Iptables) -> None:
    iptables.tables("iptables", "nft", HINT)
    out, calls = iptables.run("ip6tables-restore", IPTABLES_WRAPPER_MODE="legacy")
    assert out.returncode == 0, out.stderr
    assert calls == [*alternatives("legacy"), "ip6tables-legacy-restore"]
    out, _ = iptables.run("iptables", IPTABLES_WRAPPER_MODE="both")
    assert out.returncode == 1
    assert "must be legacy or nft" in out.stderr


def test_wrapper_refuses_other_names(iptables: Iptables) -> None:
    out, calls = iptables.run("arptables")
    assert out.returncode == 1
    assert "must be called as iptables" in out.stderr
    assert calls == []


# --- Dockerfile ----------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    joined = text.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def dockerignore_allows(rel: str) -> bool:
    """Whether .dockerignore sends ``rel`` to the builder (last matching pattern wins, as Docker's)."""
    import fnmatch

    allowed = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pattern[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if hit:
            allowed = negate
    return allowed


def test_dockerfile_copies_only_files_that_exist_and_reach_the_builder() -> None:
    copies = [line.split()[1:] for line in dockerfile_instructions() if line.startswith("COPY ")]
    local = [args for args in copies if not args[0].startswith("--from=")]
    assert local, "the Dockerfile copies nothing from the repository"
    for *sources, _dest in local:
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such file"
            assert dockerignore_allows(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"
    excluded = (".venv/bin/python", "tests/unit/test_deploy_image.py", "docs/cni.md", "src/flannel/__pycache__/x.pyc")
    for unwanted in excluded:
        assert not dockerignore_allows(unwanted), f".dockerignore lets {unwanted} through"
    assert dockerignore_allows("src/flannel/cni/plugin.py")


def test_dockerfile_provides_what_the_manifests_run() -> None:
    text = " ".join(dockerfile_instructions())
    for path in ("/opt/bin/flanneld", "/opt/bin/install-cni-plugin", "/opt/bin/install-conf"):
        assert path in text, f"the image has no {path}"
    # upstream's image carries the Docker helper as /opt/bin/mk-docker-opts.sh; ours is the console script
    assert "ln -s /opt/flannel/bin/mk-docker-opts /opt/bin/mk-docker-opts.sh" in text
    assert "/opt/bin/mk-docker-opts.sh -f /nonexistent -d /dev/null" in text, "the build runs it once"
    assert 'ENTRYPOINT ["/opt/bin/flanneld"]' in text
    assert "iptables-wrapper" in text and "update-alternatives --install" in text
    for package in ("iptables", "nftables", "iproute2", "ca-certificates"):
        assert package in text
    assert (INSTALLER.stat().st_mode & 0o111) and (WRAPPER.stat().st_mode & 0o111), "scripts must be executable"


def test_dockerfile_runs_flanneld_optimized_with_its_byte_code_compiled() -> None:
    """``PYTHONOPTIMIZE=2`` is 1 MiB of flanneld's RSS (docs/performance.md); its byte code must be in the image,
    or every container start would compile the standard library and the package again."""
    lines = dockerfile_instructions()
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")):]
    env = " ".join(line for line in final if line.startswith("ENV ")).split()
    unit = [line.removeprefix("Environment=").split() for line in
            (REPO / "deploy" / "systemd" / "flanneld.service").read_text().splitlines()
            if line.startswith("Environment=")]
    for name, value in DEPLOYED_ENV.items():  # what the e2e tests and the benchmarks run flanneld with
        assert f"{name}={value}" in env, f"the image does not set {name}={value}"
        assert any(f"{name}={value}" in line for line in unit), f"the systemd unit does not set {name}={value}"
    compiled = " ".join(line for line in final if "compileall" in line)
    assert "-o 2 /opt/flannel/lib/python3.11/site-packages/flannel" in compiled
    assert "-o 2" in compiled and "/usr/lib/python3.11" in compiled


def test_the_plugin_is_compiled_plain_whatever_the_installer_runs_with(tmp_path: Path) -> None:
    """The image sets ``PYTHONOPTIMIZE=2`` for every process, install-cni-plugin included; the plugin's runtime
    runs without it (``python -I``), so the installer must write level-0 byte code, the same as without it."""
    ids = []
    for level, dest in (("0", tmp_path / "plain"), ("2", tmp_path / "optimized")):
        dest.mkdir()
        code = ("import importlib.util, sys\n"
                f"spec = importlib.util.spec_from_file_location('flannel_install', {str(INSTALLER)!r})\n"
                "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
                f"print(m.install_cni_plugin({str(dest)!r}, {str(SRC_PACKAGE)!r}))\n")
        env = {**os.environ, "PYTHONOPTIMIZE": level}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        ids.append(r.stdout.strip())
        installed = dest / ".flannel" / ids[-1]
        assert list(installed.rglob("__pycache__/*.cpython-*.pyc"))
        assert not list(installed.rglob("*.opt-*.pyc")), f"PYTHONOPTIMIZE={level}: optimized byte code installed"
    assert ids[0] == ids[1]
