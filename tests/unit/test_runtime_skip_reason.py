"""The container runtime tests (tests/e2e/runtimes) skip a runtime only when its programs are absent, and then
say which programs and which Debian package; with everything installed they do not skip."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.runtimes.runtimes import RUNTIMES


@pytest.mark.parametrize("name", list(RUNTIMES))
def test_skip_reason_names_the_missing_programs_and_package(name: str, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    runtime = RUNTIMES[name]
    monkeypatch.setenv("PATH", str(tmp_path))
    reason = runtime.missing()
    assert reason is not None
    assert all(b in reason for b in runtime.binaries) and f"Debian package {runtime.package}" in reason


@pytest.mark.parametrize("name", list(RUNTIMES))
def test_no_skip_when_installed(name: str) -> None:
    runtime = RUNTIMES[name]
    if any(shutil.which(b) is None for b in runtime.binaries):
        pytest.skip(f"{runtime.package} is not installed here")
    assert runtime.missing() is None
