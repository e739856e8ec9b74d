"""The CNI plugin for nodes without Python: ``install-cni-plugin`` with the image's own runtime tree and
static launcher (deploy/image/cni_runtime.py, cni_launcher.c), built here as the image builds them.

The launcher is run with an empty environment (no PATH: nothing can be found on the node), and every module
of the plugin is imported by the bundled interpreter, so a module the runtime left out fails here, not on a
node. The mount-namespace tests, where no Python and no libc are reachable at all, are in
tests/integration/test_cni_bundled.py.
"""

from __future__ import annotations

import json
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.cni_bundle import REPO, build_launcher, build_runtime, bundle_env

INSTALLER = REPO / "deploy" / "image" / "flannel_install.py"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    top = tmp_path_factory.mktemp("bundle")
    return bundle_env(build_runtime(top / "runtime"), build_launcher(top / "launcher"))


@pytest.fixture(scope="module")
def installer() -> ModuleType:
    from tests.unit.test_deploy_image import load_installer

    return load_installer()


def install(bin_dir: Path, bundle: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(INSTALLER), "install-cni-plugin", *flags, str(bin_dir)],
                          env={**os.environ, **bundle}, capture_output=True, text=True, timeout=120)


def call(launcher: Path, command: str) -> subprocess.CompletedProcess[str]:
    """A call with nothing in the environment but the CNI verb: no PATH, no Python variables."""
    return subprocess.run([str(launcher)], env={"CNI_COMMAND": command}, capture_output=True, text=True,
                          timeout=30)


def installed_dir(bin_dir: Path) -> Path:
    [one] = [p for p in (bin_dir / ".flannel").iterdir() if not p.name.startswith(".")]
    return one


def test_bundled_plugin_answers_version_with_an_empty_environment(tmp_path: Path, bundle: dict[str, str]) -> None:
    out = install(tmp_path, bundle)
    assert out.returncode == 0, out.stderr
    assert "runs with its own Python" in out.stdout
    launcher = tmp_path / "flannel"
    assert launcher.read_bytes()[:4] == b"\x7fELF"
    result = call(launcher, "VERSION")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["supportedVersions"][-1] == "1.1.0"


def test_runtime_tree_holds_byte_code_only_and_leaves_out_what_the_plugin_never_reaches(
        bundle: dict[str, str]) -> None:
    runtime = Path(bundle["FLANNEL_CNI_RUNTIME"])
    stdlib = runtime / "lib" / f"python3.{sys.version_info.minor}"
    assert (runtime / "bin" / "python3").is_file() and (runtime / "lib" / "ld.so").is_file()
    assert (stdlib / "os.pyc").is_file() and (stdlib / "lib-dynload").is_dir()
    assert not list(stdlib.rglob("*.py"))
    for left_out in ("asyncio", "email", "ssl.pyc", "tkinter", "unittest"):
        assert not (stdlib / left_out).exists(), left_out
    listed = {line.split(" ", 2)[2].rstrip("\n") for line in (runtime / "MANIFEST").read_text().splitlines()}
    on_disk = {str(p.relative_to(runtime)) for p in runtime.rglob("*") if p.is_file()} - {"MANIFEST"}
    assert listed == on_disk


def test_the_bundled_interpreter_imports_every_module_of_the_plugin(bundle: dict[str, str]) -> None:
    import flannel.cni

    runtime = Path(bundle["FLANNEL_CNI_RUNTIME"])
    names = ["flannel.cni." + m.name for m in pkgutil.iter_modules(flannel.cni.__path__)]
    code = f"import sys; sys.path.insert(0, {str(REPO / 'src')!r}); import " + ", ".join(names) + "; print('ok')"
    out = subprocess.run([str(runtime / "lib" / "ld.so"), "--library-path", str(runtime / "lib"),
                          str(runtime / "bin" / "python3"), "-I", "-S", "-c", code],
                         env={}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr


def test_no_verb_imports_os_in_the_bundled_interpreter(tmp_path: Path, bundle: dict[str, str]) -> None:
    """What the launcher runs (the runtime's interpreter, ``run.pyc``), with ``-X importtime`` added."""
    from tests.unit.test_cni_imports import NOT_ON_A_VERB_PATH, imports_per_verb

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    assert install(bin_dir, bundle).returncode == 0
    installed = installed_dir(bin_dir)
    runtime = installed / "runtime"
    argv = [str(runtime / "lib" / "ld.so"), "--library-path", str(runtime / "lib"), str(runtime / "bin" / "python3"),
            "-I", "-S", "-X", "importtime", str(installed / "run.pyc")]
    found = imports_per_verb(argv, tmp_path)
    for verb, modules in found.items():
        assert not NOT_ON_A_VERB_PATH & set(modules), (verb, modules)
        assert "__future__" not in modules, (verb, modules)  # a compiler flag in plugin.marshal
        assert "_json" not in modules, (verb, modules)  # plain documents are read and written by plainjson


@pytest.mark.parametrize(("command", "code"), [("VERSION", 999), ("STATUS", 50)])
def test_launcher_without_its_runtime_answers_a_cni_error(tmp_path: Path, bundle: dict[str, str], command: str,
                                                          code: int) -> None:
    assert install(tmp_path, bundle).returncode == 0
    shutil.rmtree(installed_dir(tmp_path) / "runtime")
    out = call(tmp_path / "flannel", command)
    assert out.returncode == 1
    error = json.loads(out.stdout)
    assert error["code"] == code and "run install-cni-plugin again" in error["msg"]


def test_the_launcher_runs_byte_code_that_a_reinstall_repairs(tmp_path: Path, bundle: dict[str, str]) -> None:
    """The static launcher runs run.pyc (no compiling of run.py per call); one cut short is rewritten."""
    assert install(tmp_path, bundle).returncode == 0
    run_code = installed_dir(tmp_path) / "run.pyc"
    whole = run_code.read_bytes()
    run_code.write_bytes(whole[:40])
    assert call(tmp_path / "flannel", "VERSION").returncode != 0
    assert install(tmp_path, bundle).returncode == 0
    assert run_code.read_bytes()[:4] == whole[:4] and call(tmp_path / "flannel", "VERSION").returncode == 0


def test_an_unset_launcher_says_it_was_not_installed(bundle: dict[str, str]) -> None:
    out = call(Path(bundle["FLANNEL_CNI_LAUNCHER"]), "ADD")
    assert out.returncode == 1 and "not set up by install-cni-plugin" in json.loads(out.stdout)["msg"]


def test_launcher_id_is_written_read_back_and_checked(installer: ModuleType, bundle: dict[str, str]) -> None:
    runtime = installer.cni_runtime
    blank = Path(bundle["FLANNEL_CNI_LAUNCHER"]).read_bytes()
    assert runtime.launcher_id(blank) is None
    patched = runtime.set_launcher_id(blank, "0.1.0-abc")
    assert len(patched) == len(blank) and runtime.launcher_id(patched) == "0.1.0-abc"
    assert runtime.launcher_id(runtime.set_launcher_id(patched, "0.2.0-def")) == "0.2.0-def"
    for bad in ("x" * 200, "a/b"):
        with pytest.raises(ValueError, match="does not fit"):
            runtime.set_launcher_id(blank, bad)
    with pytest.raises(ValueError, match="not a flannel CNI launcher"):
        runtime.launcher_id(b"\x7fELF" + b"\0" * 100)


def test_reinstall_keeps_the_id_and_switching_to_the_node_python_keeps_the_previous_version(
        tmp_path: Path, bundle: dict[str, str], installer: ModuleType) -> None:
    assert install(tmp_path, bundle).returncode == 0
    first = installer.installed_id(str(tmp_path / "flannel"))
    assert install(tmp_path, bundle).returncode == 0
    assert installer.installed_id(str(tmp_path / "flannel")) == first and first is not None
    out = install(tmp_path, bundle, "--python=node")
    assert out.returncode == 0 and "node's Python" in out.stdout
    second = installer.installed_id(str(tmp_path / "flannel"))
    assert second != first
    assert sorted(p.name for p in (tmp_path / ".flannel").iterdir()) == sorted([first, second])


def test_a_runtime_of_another_python_is_refused(tmp_path: Path, bundle: dict[str, str]) -> None:
    """run.pyc is compiled by the installer for the runtime: their byte code must be the same."""
    runtime = tmp_path / "runtime"
    shutil.copytree(bundle["FLANNEL_CNI_RUNTIME"], runtime, symlinks=True)
    [os_pyc] = runtime.glob("lib/python3.*/os.pyc")
    os_pyc.write_bytes(b"\0\0\r\n" + os_pyc.read_bytes()[4:])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    out = install(bin_dir, {**bundle, "FLANNEL_CNI_RUNTIME": str(runtime)}, "--python=bundled")
    assert out.returncode == 1 and "is not for this installer's Python" in out.stderr
    assert not (bin_dir / "flannel").exists()


def test_bad_modes_are_refused_with_the_reason(tmp_path: Path, bundle: dict[str, str]) -> None:
    out = install(tmp_path, bundle, "--python=fast")
    assert out.returncode == 1 and "unknown --python=fast" in out.stderr
    missing = {"FLANNEL_CNI_RUNTIME": str(tmp_path / "none"), "FLANNEL_CNI_LAUNCHER": str(tmp_path / "none")}
    out = install(tmp_path, missing, "--python=bundled")
    assert out.returncode == 1 and "--python=bundled needs the runtime" in out.stderr
    assert not (tmp_path / "flannel").exists()
