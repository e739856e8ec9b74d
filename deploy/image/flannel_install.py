#!/usr/bin/env python3
"""The image's installers, run by the kube-flannel DaemonSet's init containers: ``install-cni-plugin`` and
``install-conf`` (the image links both names to this file; the name it is called by picks the command).

``install-conf SOURCE DESTINATION`` is upstream's: it puts the CNI conflist from the ConfigMap into the
node's ``/etc/cni/net.d`` atomically (temporary file in the destination directory, the source's mode, fsync,
rename), so the container runtime never reads half a file. Exactly two arguments, or usage and exit 1.

``install-cni-plugin [--python=auto|bundled|node] BIN_DIR`` replaces upstream's ``cp -f /flannel
/opt/cni/bin/flannel``. Our plugin is Python. Where the image carries its own runtime (``cni_runtime.py``
builds it: Debian's python3.11, a build of this interpreter's minor version, the libraries it links and the
standard-library modules the plugin uses, about 13 MB) and the static launcher (``cni_launcher.c``), the
default (``auto``) and ``bundled`` put both on the node: ``flannel`` is then the static launcher and
``.flannel/<id>/runtime/`` the interpreter, and the plugin needs nothing from the node, not even a libc
(Flatcar, Talos, Bottlerocket, COS). It is also no slower than
a node's own Python (docs/performance.md), so it is preferred whenever it is there. ``node`` (and ``auto``
without a runtime in the image, as in a development checkout) uses the node's Python instead, and the node
gets two things in its CNI bin directory:

* ``.flannel/<version>-<digest>/``: the ``flannel`` package's sources, byte-compiled for the image's Python
  (the host's Python writes its own ``__pycache__`` there on the first call if its version differs),
  ``run.py``, which checks the Python version and calls the plugin, and ``plugin.marshal``, the plugin's own
  modules compiled into one file that ``run.py`` imports them from (``cni_runtime.code_file``; ignored by a
  Python of another version). The static launcher runs ``run.pyc``, ``run.py`` compiled for its interpreter.
* ``flannel``: a ``/bin/sh`` launcher that runs ``run.py`` with the first of ``python3.16`` … ``python3.11``,
  ``python3`` on PATH that actually runs and is new enough, isolated (``-I -S``: no site-packages, no
  ``PYTHON*`` variables). Naming the versions first lets a node whose ``python3`` is older (RHEL 9, Ubuntu
  22.04) use an added ``python3.11``/``3.12``. A name on PATH is not a working Python: a pyenv shim for a
  version that is not installed exits 127, and a runtime given no error object quietly puts the pod on its
  own network. So the first call runs each candidate once and records the interpreter's real path; later
  calls exec it with no extra process. None usable gets a CNI error object, for every verb, that says what
  the node needs and what was tried.

Why not a zipapp: zipimport reads no ``__pycache__``, so every call would compile the plugin again unless the
host's Python is exactly the image's (measured here, VERSION calls: 27 ms from source, 15 ms with matching
byte code, 12 ms for this layout, which is the interpreter's own start-up). The directory name is content
addressed and the launcher is replaced last, by rename: a plugin call sees the old plugin or the new one,
never a mix. The previous version is kept, for calls still running from it; older ones are removed.
"""

from __future__ import annotations

import compileall
import hashlib
import importlib.util
import marshal
import os
import py_compile
import re
import shutil
import sys
import time
from collections.abc import Sequence
from types import CodeType, ModuleType

from flannel import __version__
from flannel.atomicfile import write_atomically

PACKAGE = "flannel"
STORE = ".flannel"
"""Directory under the CNI bin dir that holds the installed versions (hidden: it is not a plugin)."""
LAUNCHER = "flannel"
"""The plugin's name in the CNI bin dir: the ``type`` in the conflist."""
STALE_TMP_SECONDS = 3600
"""A temporary directory this old is a crashed installer's leftover, not a concurrent installer's work."""
MIN_PYTHON = (3, 11)
"""The plugin's ``requires-python`` (pyproject.toml)."""

PYTHONS = ("python3.16", "python3.15", "python3.14", "python3.13", "python3.12", "python3.11", "python3")
"""What the launcher looks for on PATH, in order: a named version first, as ``python3`` may be older."""
RUN = "run.py"
RUN_CODE = "run.pyc"
"""``run.py`` compiled, which the static launcher runs (bundled mode: the interpreter is known, the compiling
of a script given as source is saved)."""
RUNTIME = "runtime"
"""Directory of an installed version that holds the bundled interpreter (bundled mode only)."""

ERROR_CODE = 999
"""The code of the launcher's CNI error: 1-99 belong to the spec, so a plugin's own errors take 100 and up, and
999 is what libcni's skel (and so upstream's Go plugin) reports for any failure that is not a typed CNI error."""
STATUS_ERROR_CODE = 50
"""For STATUS the spec names the code: 50, "the plugin is not available (cannot service ADD requests)"."""

PYTHON_CACHE = "python"
"""File in the installed version's directory naming the interpreter the launcher verified, for later calls."""
PROBE = (
    "import sys; v = sys.version_info; "
    "print(sys.executable if v >= {min_python!r} and sys.executable else '%d.%d.%d' % tuple(v[:3]))"
)
"""What the launcher runs to vet a candidate: its real path (past any shim) if new enough, else its version.

Python 2 syntax too, so an ancient ``python3`` still answers with its version rather than a traceback."""

LAUNCHER_TEMPLATE = """#!/bin/sh
# The flannel CNI plugin (flannel-py {version}), installed by the kube-flannel DaemonSet (install-cni-plugin).
# It runs {store}/$PACKAGE_ID/{run} next to this file with Python {min_text} or later (docs/kubernetes.md): the
# interpreter recorded in {store}/$PACKAGE_ID/{cache} by an earlier call, else the first of the names below on
# PATH that actually runs and is new enough (a pyenv shim for a version that is not installed exits 127).
PACKAGE_ID="{package_id}"
case "$0" in
    */*) here=${{0%/*}} ;;
    *) here=$(dirname "$(command -v -- "$0")") ;;
esac
pkg="$here/{store}/$PACKAGE_ID"
if [ -r "$pkg/{cache}" ] && read -r python < "$pkg/{cache}" && [ -x "$python" ]; then
    exec "$python" -I -S "$pkg/{run}" "$@"
fi
tried=""
for candidate in {pythons}; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    found=$("$candidate" -I -S -c "{probe}" </dev/null 2>/dev/null)
    status=$?
    case "$status:$found" in
        0:/*)
            # One write of one line: a reader racing it sees no complete line and probes on its own.
            {{ printf '%s\\n' "$found" > "$pkg/{cache}"; }} 2>/dev/null
            exec "$found" -I -S "$pkg/{run}" "$@"
            ;;
        0:[0-9]*) tried="$tried $candidate (Python $found)," ;;
        *) tried="$tried $candidate (exit status $status)," ;;
    esac
done
tried=${{tried%,}}
msg="the flannel CNI plugin needs Python {min_text} or later on this host, as python3 or python3.X on PATH"
details="PATH=$PATH; tried:${{tried:- no python3 found}}"
echo "flannel: $msg ($details)" >&2
# JSON-quote the details with builtins only: PATH may hold no tr or sed.
rest=$details
details=""
while [ -n "$rest" ]; do
    char=${{rest%"${{rest#?}}"}}
    rest=${{rest#?}}
    case $char in
        '"' | '\\') details="$details\\\\$char" ;;
        [[:cntrl:]]) ;;
        *) details="$details$char" ;;
    esac
done
code={code}
[ "$CNI_COMMAND" = STATUS ] && code={status_code}
printf '{{"cniVersion":"1.1.0","code":%s,"msg":"%s","details":"%s"}}\\n' "$code" "$msg" "$details"
exit 1
"""

RUN_TEMPLATE = """# The flannel CNI plugin's entry point (flannel-py {version}), run as `python -I -S run.py`
# (or compiled, run.pyc) by the launcher {launcher} in the CNI bin directory. It must parse on any
# Python 3, to say that it is too old.
import sys

if sys.version_info < {min_python!r}:
    import json
    import os

    found = "%d.%d.%d at %s" % (sys.version_info[0], sys.version_info[1], sys.version_info[2], sys.executable)
    message = "the flannel CNI plugin needs Python {min_text} or later on this host"
    sys.stderr.write("flannel: %s, found %s\\n" % (message, found))
    code = {status_code} if os.environ.get("CNI_COMMAND") == "STATUS" else {code}
    error = {{"cniVersion": "1.1.0", "code": code, "msg": message, "details": "Python " + found}}
    sys.stdout.write(json.dumps(error) + "\\n")
    sys.exit(1)


def directory_of(path):
    # os.path.dirname(os.path.abspath(path)), without importing os (1.3 ms of every call, and the plugin
    # itself does without it): both launchers give an absolute path, which is then normal too.
    if path.startswith("/") and "//" not in path and "/./" not in path and "/../" not in path:
        return path[: path.rindex("/")] or "/"
    import os

    return os.path.dirname(os.path.abspath(path))


here = directory_of(__file__)
sys.path.insert(0, here)


def use_code_file(path):
    # The plugin's modules as the installer compiled them, read in one go: importing each from the package
    # directory costs a path search, stats, an open and a read per module (1 ms of an ADD). Only for the
    # Python that wrote the file; without it, or on any problem with it, they are imported as usual.
    import marshal

    prefix = here.rstrip("/") + "/"
    try:
        import posix  # built in, loaded already: cheaper than open()'s buffered file object

        fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
        try:
            chunks = []
            chunk = posix.read(fd, posix.fstat(fd).st_size + 1)
            while chunk:
                chunks.append(chunk)
                chunk = posix.read(fd, 1 << 16)
        finally:
            posix.close(fd)
        magic, _, modules = marshal.loads(b"".join(chunks))
        if magic != sys.modules["_frozen_importlib_external"].MAGIC_NUMBER:
            return
        ModuleSpec = sys.modules["_frozen_importlib"].ModuleSpec
        from _imp import _fix_co_filename
    except Exception:
        return

    class Finder:
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            entry = modules.get(name)
            if entry is None:
                return None
            origin = prefix + entry[1]
            spec = ModuleSpec(name, cls, origin=origin, is_package=entry[0])
            spec.has_location = True
            if entry[0]:
                spec.submodule_search_locations = [origin[: origin.rindex("/")]]
            return spec

        @staticmethod
        def create_module(spec):
            return None

        @staticmethod
        def exec_module(module):
            code = marshal.loads(modules[module.__name__][2])
            _fix_co_filename(code, module.__spec__.origin)
            exec(code, module.__dict__)

    sys.meta_path.insert(0, Finder)

    # The import statements for these modules skip importlib (its locks, searches and spec handling cost
    # 20-60 us an import, 0.4 ms of an ADD): load() does what it would do with the Finder's spec (module
    # attributes, in sys.modules while it runs and removed if that fails, bound in its package). Any other
    # import, and importlib.import_module, take the usual way (the Finder above serves those).
    def load(name):
        package, _, child = name.rpartition(".")
        if package and package not in sys.modules:
            load(package)
        spec = Finder.find_spec(name)
        module = type(sys)(name)
        module.__spec__ = spec
        module.__loader__ = Finder
        module.__file__ = spec.origin
        module.__package__ = spec.parent
        if spec.submodule_search_locations is not None:
            module.__path__ = spec.submodule_search_locations
        sys.modules[name] = module
        try:
            Finder.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        module = sys.modules[name]
        if package:
            setattr(sys.modules[package], child, module)
        return module

    import builtins

    standard_import = builtins.__import__

    def plugin_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level or name not in modules:
            return standard_import(name, globals, locals, fromlist, level)
        module = sys.modules.get(name) or load(name)
        if not fromlist:
            return sys.modules[name.partition(".")[0]]
        for item in fromlist:
            if not hasattr(module, item) and name + "." + item in modules:
                load(name + "." + item)
        return module

    builtins.__import__ = plugin_import


use_code_file(here.rstrip("/") + "/{code_file}")
from flannel.cni.plugin import main

main()
"""

_PACKAGE_ID_LINE = re.compile(r'^PACKAGE_ID="([^"/]+)"$', re.MULTILINE)
_MIN_TEXT = ".".join(map(str, MIN_PYTHON))


class InstallError(Exception):
    """A failure worth one line on stderr (the init container then exits 1 and the kubelet retries)."""


def _load_cni_runtime() -> ModuleType:
    """``cni_runtime.py``, which sits next to this file (in the image: /opt/bin)."""
    path = os.path.join(os.path.dirname(os.path.realpath(__file__)), "cni_runtime.py")
    spec = importlib.util.spec_from_file_location("cni_runtime", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cni_runtime = _load_cni_runtime()


def package_dir() -> str:
    """Where the image's ``flannel`` package lives (site-packages, or ``src/`` in an editable install)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InstallError(f"the {PACKAGE} package is not installed in {sys.executable}")
    return next(iter(spec.submodule_search_locations))


def source_files(root: str) -> list[str]:
    """The package's ``.py`` files, relative to ``root``, sorted (no byte code, no stray files)."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        rel = os.path.relpath(directory, root)
        found += [os.path.normpath(os.path.join(rel, f)) for f in files if f.endswith(".py")]
    return sorted(found)


def package_id(root: str, files: Sequence[str], bundle: cni_runtime.Bundle | None = None) -> str:
    """``<version>-<digest>``: the same sources (and runtime) always get the same directory name."""
    digest = hashlib.sha256(run_text().encode())
    if bundle is not None:
        digest.update(b"runtime\0" + bundle.manifest.encode())
    for rel in files:
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return f"{__version__}-{digest.hexdigest()[:12]}"


def launcher_text(pkg_id: str) -> str:
    """The ``flannel`` launcher for the installed version ``pkg_id``."""
    return LAUNCHER_TEMPLATE.format(
        version=__version__,
        store=STORE,
        package_id=pkg_id,
        run=RUN,
        cache=PYTHON_CACHE,
        min_text=_MIN_TEXT,
        pythons=" ".join(PYTHONS),
        probe=PROBE.format(min_python=MIN_PYTHON),
        code=ERROR_CODE,
        status_code=STATUS_ERROR_CODE,
    )


def run_text() -> str:
    """``run.py``, installed next to the package."""
    return RUN_TEMPLATE.format(
        version=__version__,
        launcher=LAUNCHER,
        min_python=MIN_PYTHON,
        min_text=_MIN_TEXT,
        code=ERROR_CODE,
        status_code=STATUS_ERROR_CODE,
        code_file=cni_runtime.CODE_FILE,
    )


def installed_id(launcher: str) -> str | None:
    """The version the current launcher runs, if it is ours (the script or the static binary)."""
    try:
        with open(launcher, "rb") as f:
            data = f.read(4 << 20)
    except OSError:
        return None
    if data.startswith(b"#!"):
        match = _PACKAGE_ID_LINE.search(data[:4096].decode("utf-8", "replace"))
        return match.group(1) if match else None
    try:
        return cni_runtime.launcher_id(data)
    except ValueError:
        return None


def _matches(root: str, files: Sequence[str], target: str, bundle: cni_runtime.Bundle | None) -> bool:
    """Whether ``target`` holds exactly these sources, ``run.py`` and runtime (not a copy cut short)."""
    try:
        with open(os.path.join(target, RUN), encoding="utf-8") as f:
            if f.read() != run_text():
                return False
        if not cni_runtime.code_file_matches(root, files, os.path.join(target, cni_runtime.CODE_FILE)):
            return False
        if bundle is not None:
            with open(os.path.join(target, RUNTIME, cni_runtime.MANIFEST), encoding="utf-8") as f:
                if f.read() != bundle.manifest:
                    return False
            if not _run_code_loads(os.path.join(target, RUN_CODE)):
                return False
        for rel in files:
            with open(os.path.join(root, rel), "rb") as a, open(os.path.join(target, PACKAGE, rel), "rb") as b:
                if a.read() != b.read():
                    return False
    except OSError:
        return False
    return True


def _run_code_loads(path: str) -> bool:
    """Whether ``path`` is whole byte code for this Python (a pyc header, then one code object)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        return data[:4] == importlib.util.MAGIC_NUMBER and isinstance(marshal.loads(data[16:]), CodeType)
    except (OSError, EOFError, ValueError, TypeError):
        return False


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(top: str) -> None:
    """Flush every file and directory under ``top`` (byte code too: a truncated .pyc fails the import)."""
    for directory, _, files in os.walk(top, topdown=False):
        for name in files:
            _fsync(os.path.join(directory, name))
        _fsync(directory)


def _copy_package(root: str, files: Sequence[str], target: str, bundle: cni_runtime.Bundle | None) -> None:
    """Copy the sources into a fresh directory next to ``target``, byte-compile, flush, rename into place."""
    store = os.path.dirname(target)
    tmp = os.path.join(store, f".tmp-{os.path.basename(target)}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for rel in files:
            dest = os.path.join(tmp, PACKAGE, rel)
            os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
            shutil.copyfile(os.path.join(root, rel), dest)
            os.chmod(dest, 0o644)
        with open(os.path.join(tmp, RUN), "w", encoding="utf-8") as f:
            f.write(run_text())
        with open(os.path.join(tmp, cni_runtime.CODE_FILE), "wb") as f:
            f.write(cni_runtime.code_file(os.path.join(tmp, PACKAGE), files))
        if bundle is not None:
            shutil.copytree(bundle.runtime, os.path.join(tmp, RUNTIME), symlinks=True)
            # For the bundled interpreter: another build of this Python's minor version (the image makes the
            # runtime of Debian's python3.11 and runs this with its own 3.11), so the same byte code; the magic
            # number was checked in install_cni_plugin, and nothing below depends on the exact executable.
            py_compile.compile(os.path.join(tmp, RUN), os.path.join(tmp, RUN_CODE), RUN, doraise=True, optimize=0,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        # For a host whose Python is the image's; others write their own __pycache__ on the first call. Level 0
        # whatever this process runs with (the image sets PYTHONOPTIMIZE=2 for flanneld): the plugin runs plain.
        if not compileall.compile_dir(os.path.join(tmp, PACKAGE), quiet=1, optimize=0):
            raise InstallError(f"byte-compiling {tmp} failed")
        _fsync_tree(tmp)
        shutil.rmtree(target, ignore_errors=True)  # a damaged copy (see _matches)
        os.rename(tmp, target)
        _fsync(store)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prune(store: str, keep: set[str]) -> None:
    """Remove installed versions other than ``keep``, and temporary directories left by a crash."""
    now = time.time()
    for name in os.listdir(store):
        path = os.path.join(store, name)
        if name in keep or not os.path.isdir(path) or os.path.islink(path):
            continue
        if name.startswith(".tmp-") and now - os.stat(path).st_mtime < STALE_TMP_SECONDS:
            continue
        shutil.rmtree(path, ignore_errors=True)


def install_cni_plugin(bin_dir: str, root: str | None = None, mode: str = "auto") -> str:
    """Install the plugin into ``bin_dir``; return the installed version's id."""
    root = root or package_dir()
    try:
        bundle = cni_runtime.find_bundle(mode)
    except ValueError as exc:
        raise InstallError(str(exc)) from exc
    if bundle is not None and bundle.magic() != importlib.util.MAGIC_NUMBER:
        # run.pyc and plugin.marshal, compiled here, must be byte code for the bundled interpreter: any build of
        # this minor version will do (the image's runtime is Debian's 3.11, this installer the image's 3.11).
        raise InstallError(f"the runtime {bundle.runtime} is not for this installer's Python {sys.version.split()[0]}"
                           " (its byte code differs); build it with a Python of the same minor version")
    files = source_files(root)
    if "cni/plugin.py" not in files:
        raise InstallError(f"{root} does not look like the {PACKAGE} package (no cni/plugin.py)")
    pkg_id = package_id(root, files, bundle)
    store = os.path.join(bin_dir, STORE)
    os.makedirs(store, mode=0o755, exist_ok=True)
    target = os.path.join(store, pkg_id)
    if not _matches(root, files, target, bundle):
        _copy_package(root, files, target, bundle)
    launcher = os.path.join(bin_dir, LAUNCHER)
    previous = installed_id(launcher)
    if bundle is not None:
        try:
            program = cni_runtime.set_launcher_id(bundle.launcher, pkg_id)
        except ValueError as exc:
            raise InstallError(f"the launcher binary: {exc}") from exc
    else:
        program = launcher_text(pkg_id).encode()
    write_atomically(launcher, program, 0o755)
    _prune(store, {pkg_id} | ({previous} if previous else set()))
    return pkg_id


def main_install_cni_plugin(args: Sequence[str]) -> int:
    """``install-cni-plugin [--python=auto|bundled|node] BIN_DIR``."""
    mode = "auto"
    if args and args[0].startswith("--python="):
        mode, args = args[0].partition("=")[2], args[1:]
    if len(args) != 1:
        print("usage: install-cni-plugin [--python=auto|bundled|node] BIN_DIR   (the node's CNI bin directory,"
              " e.g. /opt/cni/bin)", file=sys.stderr)
        return 1
    try:
        pkg_id = install_cni_plugin(args[0], mode=mode)
    except (OSError, InstallError) as exc:
        print(f"install-cni-plugin: {exc}", file=sys.stderr)
        return 1
    runs = "with its own Python" if installed_id_is_binary(args[0]) else f"with the node's Python >= {_MIN_TEXT}"
    print(f"installed the flannel CNI plugin {pkg_id} in {args[0]} (it runs {runs})")
    return 0


def installed_id_is_binary(bin_dir: str) -> bool:
    """Whether the installed launcher is the static one (bundled runtime)."""
    with open(os.path.join(bin_dir, LAUNCHER), "rb") as f:
        return not f.read(2).startswith(b"#!")


def install_conf(source: str, destination: str) -> None:
    """Copy ``source`` to ``destination`` atomically, with the source's permission bits."""
    with open(source, "rb") as f:
        data = f.read()
        mode = os.fstat(f.fileno()).st_mode & 0o7777
    write_atomically(destination, data, mode)


def main_install_conf(args: Sequence[str]) -> int:
    """``install-conf SOURCE DESTINATION``."""
    if len(args) != 2:
        print("usage: install-conf SOURCE DESTINATION", file=sys.stderr)
        return 1
    try:
        install_conf(args[0], args[1])
    except OSError as exc:
        print(f"install-conf: {exc}", file=sys.stderr)
        return 1
    print(f"installed {args[0]} as {args[1]}")
    return 0


COMMANDS = {"install-cni-plugin": main_install_cni_plugin, "install-conf": main_install_conf}


def main(argv: Sequence[str]) -> int:
    """Dispatch on the name this file was called by, or on the first argument (``flannel_install.py CMD``)."""
    name = os.path.basename(argv[0]) if argv else ""
    if name in COMMANDS:
        return COMMANDS[name](argv[1:])
    if len(argv) > 1 and argv[1] in COMMANDS:
        return COMMANDS[argv[1]](argv[2:])
    print(f"usage: {name or 'flannel_install.py'} {{{','.join(COMMANDS)}}} ARGS...", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
