#!/usr/bin/env python3
"""Build the CNI plugin's own Python: a relocatable copy of this interpreter with only what the plugin uses.

Nodes whose OS has no Python (Flatcar, Talos, Bottlerocket, COS) cannot run the plugin with the node's
interpreter, where upstream's static Go binary just works. So the image carries a small runtime tree, made at
image build time by this script, and ``install-cni-plugin`` puts it on the node beside the plugin:

* ``bin/python3``: this interpreter's executable;
* ``lib/``: every shared library it and the kept extension modules link (``ldd``), libc included, and the
  dynamic loader as ``lib/ld.so``. The static launcher (``cni_launcher.c``) runs the interpreter *through*
  that loader, with ``--library-path lib``: nothing is taken from the node, whatever its libc;
* ``lib/python3.X/``: the standard-library modules the plugin can import, found by ``modulefinder`` over the
  plugin's code (every import in every function counts, so error paths are covered), byte-compiled, with the
  extension modules in ``lib-dynload/``. Packages the plugin never reaches (asyncio, email, ssl, tkinter,
  ...) are excluded by name, and the build fails if the plugin imports one of them directly.

The tree is about 3 % of the interpreter's full installation. ``MANIFEST`` lists every file with its size and
SHA-256, for the installer's content-addressed id.

``code_file`` serves both ways of running the plugin: the installer writes the plugin's own modules, compiled,
into one file next to ``run.py``, whose finder imports them from there (docs/performance.md, session 5).

Usage: ``cni_runtime.py OUT_DIR [PLUGIN_SRC]``, run with the interpreter to bundle. The image runs it with
Debian's ``/usr/bin/python3.11`` (statically linked, built with PGO and LTO: it starts faster than the image's
own ``/usr/local`` build), while ``install-cni-plugin`` runs with the image's Python: any two builds of one
minor version share their byte code (the magic number), which the installer checks.
"""

from __future__ import annotations
import __future__

import ast
import compileall
import hashlib
import importlib.util
import marshal
import modulefinder
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import types
from collections.abc import Iterable, Sequence

EXCLUDED = (
    "tkinter", "_tkinter", "lib2to3", "test", "unittest", "pydoc", "pydoc_data", "doctest", "pdb", "bdb",
    "multiprocessing", "asyncio", "email", "http", "xml", "xmlrpc", "distutils", "ctypes", "concurrent",
    "importlib.metadata", "importlib.resources", "webbrowser", "ftplib", "readline", "tarfile", "zipfile",
    "lzma", "bz2", "ssl", "_ssl", "hashlib", "_hashlib", "urllib", "decimal", "_decimal", "_pydecimal",
    "sqlite3", "curses", "dbm", "idlelib", "ensurepip", "turtle", "netrc", "mimetypes", "socketserver",
    "pickle", "_pickle", "cmd", "code", "codeop", "getpass", "tty", "termios", "plistlib", "_testcapi",
    "_testinternalcapi",
)
"""Standard-library packages that the plugin's import graph reaches only through modules it never calls
(``modulefinder`` follows every import of every module it meets, e.g. ``inspect`` → ``dis`` is kept but
``argparse`` → ``gettext`` is harmless while ``subprocess`` → ``multiprocessing`` would pull in everything)."""

ALWAYS = ("encodings",)
"""Packages kept whole: the interpreter loads codecs by name at start-up and when a locale asks for one."""

MANIFEST = "MANIFEST"
CODE_FILE = "plugin.marshal"
"""File in an installed version's directory holding the plugin's modules as byte code, in one piece."""
PLUGIN_MODULES = ("__init__.py", "atomicfile.py")
PLUGIN_PACKAGES = ("cni/",)
"""What the plugin imports, as paths in the ``flannel`` package: the modules of ``CODE_FILE`` (anything else
would come from the package directory as usual, only slower; tests/unit/test_deploy_image.py checks the list)."""

RUNTIME_SOURCE = "/opt/flannel/cni-runtime"
"""Where the image keeps the runtime tree (``FLANNEL_CNI_RUNTIME`` overrides it, for tests)."""
LAUNCHER_BINARY = "/opt/flannel/libexec/flannel-cni-launcher"
"""Where the image keeps the static launcher (``FLANNEL_CNI_LAUNCHER`` overrides it, for tests)."""
MODES = ("auto", "bundled", "node")
ID_MARKER = b"FLANNEL-PACKAGE-ID:"
"""Where the launcher's ``PACKAGE_ID`` field starts (``cni_launcher.c``)."""
ID_FIELD = 160
"""The size of that field, the marker and the terminating NUL included (``cni_launcher.c``)."""


def _stdlib_modules(plugin_src: str) -> dict[str, str]:
    """Module name → file, for every standard-library module the plugin can import."""
    finder = modulefinder.ModuleFinder(path=[plugin_src, *sys.path[1:]], excludes=list(EXCLUDED))
    finder.run_script(os.path.join(plugin_src, "flannel", "cni", "plugin.py"))
    found = {}
    for name, module in finder.modules.items():
        if name.split(".")[0] == "flannel" or name == "__main__" or not module.__file__:
            continue
        found[name] = module.__file__
    _check_no_direct_use(finder, plugin_src)
    return found


def _check_no_direct_use(finder: modulefinder.ModuleFinder, plugin_src: str) -> None:
    """The plugin's own modules must not import an excluded package: that import would fail on the node."""
    for name, module in finder.modules.items():
        if name.split(".")[0] != "flannel" or not module.__file__:
            continue
        with open(module.__file__, encoding="utf-8") as f:
            text = f.read()
        for excluded in EXCLUDED:
            if re.search(rf"^\s*(?:import|from)\s+{re.escape(excluded)}\b", text, re.MULTILINE):
                raise SystemExit(f"{module.__file__} imports {excluded}, which the CNI runtime leaves out")


def _shared_libraries(binaries: Iterable[str]) -> tuple[dict[str, str], str]:
    """The libraries ``ldd`` names for ``binaries`` (the name the binary asks for → the file), and the
    dynamic loader's path."""
    libs: dict[str, str] = {}
    loader = ""
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            line = line.strip()
            if "=>" in line:
                soname, _, rest = line.partition("=>")
                path = rest.split("(")[0].strip()
                if path.startswith("/"):
                    libs[soname.strip()] = os.path.realpath(path)
            elif line.startswith("/"):
                loader = os.path.realpath(line.split("(")[0].strip())
    if not loader:
        raise SystemExit(f"ldd names no dynamic loader for {sys.executable}")
    return libs, loader


def _copy(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy2(src, dst)


def build(out: str, plugin_src: str) -> None:
    """Write the runtime tree into ``out`` (which must not exist yet)."""
    if os.path.exists(out):
        raise SystemExit(f"{out} exists; the runtime is built into a new directory")
    stdlib = sysconfig.get_paths()["stdlib"]
    version_dir = os.path.basename(stdlib)  # python3.X
    executable = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    modules = _stdlib_modules(plugin_src)
    extensions = [f for f in modules.values() if f.endswith(".so")]
    libs, loader = _shared_libraries([executable, *extensions])
    _copy(executable, os.path.join(out, "bin", "python3"))
    for soname, lib in sorted(libs.items()):
        _copy(lib, os.path.join(out, "lib", soname))
    _copy(loader, os.path.join(out, "lib", "ld.so"))
    target_lib = os.path.join(out, "lib", version_dir)
    for path in modules.values():
        rel = os.path.relpath(path, stdlib)
        if rel.startswith(".."):
            raise SystemExit(f"{path} is outside the standard library {stdlib}")
        _copy(path, os.path.join(target_lib, rel))
    for package in ALWAYS:
        shutil.copytree(os.path.join(stdlib, package), os.path.join(target_lib, package), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    # os is the interpreter's landmark for its prefix, lib-dynload for its exec prefix: both must exist.
    _copy(os.path.join(stdlib, "os.py"), os.path.join(target_lib, "os.py"))
    os.makedirs(os.path.join(target_lib, "lib-dynload"), exist_ok=True)
    # Byte code beside the source's place (legacy layout), then no source: half the size, same start-up.
    if not compileall.compile_dir(target_lib, quiet=1, legacy=True, optimize=0):
        raise SystemExit(f"byte-compiling {target_lib} failed")
    for directory, _, files in os.walk(target_lib):
        for name in files:
            if name.endswith(".py"):
                os.unlink(os.path.join(directory, name))
    _strip([os.path.join(out, "bin", "python3"), *(os.path.join(out, "lib", so) for so in libs
                                                   if so.startswith("libpython"))])
    write_manifest(out)


def _strip(files: Iterable[str]) -> None:
    """Drop debug symbols from the interpreter and libpython where ``strip`` exists (a source build keeps
    them: 23 MB of a 25 MB libpython here); the system's own libraries are left as they are."""
    strip = shutil.which("strip")
    if strip is not None:
        subprocess.run([strip, "--strip-unneeded", *files], check=True)


def write_manifest(out: str) -> None:
    """``MANIFEST``: one ``<sha256> <size> <path>`` line per file, sorted, for the installer's id."""
    lines = []
    for directory, subdirs, files in os.walk(out):
        subdirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, out)
            if rel == MANIFEST:
                continue
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            lines.append(f"{digest} {os.path.getsize(path)} {rel}\n")
    with open(os.path.join(out, MANIFEST), "w", encoding="utf-8") as f:
        f.writelines(lines)


def code_file(root: str, files: Sequence[str]) -> bytes:
    """``CODE_FILE`` for the ``flannel`` package in ``root`` (``files``: its ``.py`` files, relative).

    ``(magic number, digest of the sources, {module: (is package, path under the installed version's
    directory, marshalled code)})``: ``run.py``'s finder checks the magic number against its own Python,
    unmarshals a module's code only when it is imported, and prefixes the path with its own directory, since
    the node may see the CNI bin directory at another path than the installer did. Importing a module from
    its directory costs a path search, stats, an open and a read each; with this, one read for all.
    """
    modules = {}
    for rel in _plugin_files(files):
        with open(os.path.join(root, rel), "rb") as f:
            source = f.read()
        path = os.path.join("flannel", rel)
        parts = ["flannel", *rel[: -len(".py")].split("/")]
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = (is_package, path, marshal.dumps(_compile_module(source, path)))
    return marshal.dumps((importlib.util.MAGIC_NUMBER, _plugin_digest(root, files), modules))


def _compile_module(source: bytes, path: str) -> types.CodeType:
    """A module's code, with ``from __future__ import annotations`` applied as a compiler flag and the statement
    itself left out: run, it imports ``__future__`` (0.3 ms of every plugin call, docs/performance.md, session 6)
    only to bind the name ``annotations``, which nothing reads. Everything else is the source's, lines included."""
    tree = ast.parse(source, path)
    flags = 0
    kept: list[ast.stmt] = []
    for node in tree.body:
        if (isinstance(node, ast.ImportFrom) and node.module == "__future__" and node.level == 0
                and [(a.name, a.asname) for a in node.names] == [("annotations", None)]):
            flags |= __future__.annotations.compiler_flag
        else:
            kept.append(node)
    tree.body = kept
    return compile(tree, path, "exec", flags=flags, dont_inherit=True, optimize=0)


def code_file_matches(root: str, files: Sequence[str], path: str) -> bool:
    """Whether ``path`` holds a whole ``CODE_FILE`` of these sources, for this Python."""
    try:
        with open(path, "rb") as f:
            magic, digest, modules = marshal.loads(f.read())
    except (OSError, EOFError, ValueError, TypeError):
        return False
    return bool(magic == importlib.util.MAGIC_NUMBER and digest == _plugin_digest(root, files) and modules)


def _plugin_files(files: Sequence[str]) -> list[str]:
    return [rel for rel in files if rel in PLUGIN_MODULES or rel.startswith(PLUGIN_PACKAGES)]


def _plugin_digest(root: str, files: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for rel in _plugin_files(files):
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _id_field(launcher: bytes) -> int:
    """Offset of the id field in a launcher binary; the binary must hold exactly one."""
    at = launcher.find(ID_MARKER)
    if at < 0 or launcher.find(ID_MARKER, at + 1) >= 0 or at + ID_FIELD > len(launcher):
        raise ValueError("not a flannel CNI launcher (its PACKAGE_ID field is missing or ambiguous)")
    return at + len(ID_MARKER)


def set_launcher_id(launcher: bytes, pkg_id: str) -> bytes:
    """A copy of the launcher binary that runs the installed version ``pkg_id``."""
    start = _id_field(launcher)
    size = ID_FIELD - len(ID_MARKER)
    raw = pkg_id.encode()
    if len(raw) >= size or b"\0" in raw or b"/" in raw:
        raise ValueError(f"package id {pkg_id!r} does not fit the launcher's field")
    return launcher[:start] + raw.ljust(size, b"\0") + launcher[start + size:]


def launcher_id(launcher: bytes) -> str | None:
    """The installed version a launcher binary runs (None when it is not set)."""
    start = _id_field(launcher)
    value = launcher[start:start + ID_FIELD - len(ID_MARKER)].split(b"\0", 1)[0]
    return value.decode() if value else None


class Bundle:
    """The image's own interpreter tree and the static launcher that runs it."""

    def __init__(self, runtime: str, launcher: bytes) -> None:
        self.runtime = runtime
        self.launcher = launcher
        with open(os.path.join(runtime, MANIFEST), encoding="utf-8") as f:
            self.manifest = f.read()

    def magic(self) -> bytes | None:
        """The byte-code magic number of the runtime's Python (from its ``os.pyc``), None if unreadable."""
        for line in self.manifest.splitlines():
            rel = line.split(" ", 2)[2]
            if re.fullmatch(r"lib/python3\.\d+/os\.pyc", rel):
                try:
                    with open(os.path.join(self.runtime, rel), "rb") as f:
                        return f.read(4)
                except OSError:
                    return None
        return None


def find_bundle(mode: str) -> Bundle | None:
    """The bundle to install for ``mode``: None means the node's Python (``node``, or ``auto`` without one).
    ``FLANNEL_CNI_RUNTIME`` and ``FLANNEL_CNI_LAUNCHER`` override the image's paths (for tests)."""
    if mode not in MODES:
        raise ValueError(f"unknown --python={mode}: use one of {', '.join(MODES)}")
    if mode == "node":
        return None
    runtime = os.environ.get("FLANNEL_CNI_RUNTIME", RUNTIME_SOURCE)
    launcher = os.environ.get("FLANNEL_CNI_LAUNCHER", LAUNCHER_BINARY)
    if not (os.path.isfile(os.path.join(runtime, MANIFEST)) and os.path.isfile(launcher)):
        if mode == "bundled":
            raise ValueError(f"--python=bundled needs the runtime {runtime} and the launcher {launcher}")
        return None
    with open(launcher, "rb") as f:
        return Bundle(runtime, f.read())


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: cni_runtime.py OUT_DIR [PLUGIN_SRC]   (PLUGIN_SRC: the directory holding the flannel"
              " package; default: where this interpreter imports it from)", file=sys.stderr)
        return 2
    if len(argv) == 3:
        plugin_src = argv[2]
    else:
        import flannel

        plugin_src = os.path.dirname(os.path.dirname(os.path.abspath(flannel.__file__)))
    build(argv[1], plugin_src)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
