"""The CNI plugin's own runtime and static launcher, built as the image builds them (deploy/image/), for
tests: ``cni_runtime.py`` run with :data:`RUNTIME_PYTHON`, ``cni_launcher.c`` compiled with ``gcc -static``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE_DIR = REPO / "deploy" / "image"
DEBIAN_PYTHON = f"/usr/bin/python3.{sys.version_info.minor}"
RUNTIME_PYTHON = DEBIAN_PYTHON if os.access(DEBIAN_PYTHON, os.X_OK) else sys.executable
"""The interpreter the runtime is built from: Debian's own, as the image's Dockerfile does (static, PGO and LTO),
where this machine has it for our minor version (so that the byte code the installer compiles with this
interpreter is the runtime's too); otherwise this interpreter."""
STATIC_LIBC = ("/usr/lib/x86_64-linux-gnu/libc.a", "/usr/lib/aarch64-linux-gnu/libc.a", "/usr/lib/libc.a")


def build_launcher(out: Path) -> Path:
    """``cni_launcher.c`` compiled statically into ``out``; skips without gcc and a static libc."""
    if shutil.which("gcc") is None or not any(os.path.exists(p) for p in STATIC_LIBC):
        pytest.skip("needs gcc and a static libc (Debian gcc, libc6-dev; make test installs them)")
    subprocess.run(["gcc", "-static", "-Os", "-Wall", "-Werror", "-o", str(out), str(IMAGE_DIR / "cni_launcher.c")],
                   check=True, capture_output=True, timeout=120)
    return out


def build_runtime(out: Path, python: str = RUNTIME_PYTHON) -> Path:
    """The runtime tree of ``python`` (default: :data:`RUNTIME_PYTHON`) into ``out`` (a new directory)."""
    subprocess.run([python, str(IMAGE_DIR / "cni_runtime.py"), str(out), str(REPO / "src")],
                   check=True, capture_output=True, timeout=300)
    return out


def bundle_env(runtime: Path, launcher: Path) -> dict[str, str]:
    """What points ``install-cni-plugin`` at a bundle outside the image's paths."""
    return {"FLANNEL_CNI_RUNTIME": str(runtime), "FLANNEL_CNI_LAUNCHER": str(launcher)}
