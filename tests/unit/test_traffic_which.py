"""``flannel.traffic.commands.which``: the PATH lookup that replaces ``shutil.which`` (issue #16), same answers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from flannel.traffic.commands import which


@pytest.fixture
def bins(tmp_path: Path) -> Path:
    for folder, name, mode in (("a", "tool", 0o644), ("b", "tool", 0o755), ("b", "other", 0o755),
                               ("c", "other", 0o755)):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_text("#!/bin/sh\n")
        (tmp_path / folder / name).chmod(mode)
    (tmp_path / "a" / "adir").mkdir()
    return tmp_path


@pytest.mark.parametrize("name", ["tool", "other", "adir", "absent"])
@pytest.mark.parametrize("path", ["{t}/a:{t}/b:{t}/c", "{t}/c:{t}/a:{t}/a:{t}/b", "", "{t}/a"])
def test_which_answers_as_shutil_which(bins: Path, monkeypatch: pytest.MonkeyPatch, name: str, path: str) -> None:
    monkeypatch.setenv("PATH", path.format(t=bins))
    assert which(name) == shutil.which(name)
    assert which(str(bins / "b" / name)) == shutil.which(str(bins / "b" / name))


def test_which_without_path_uses_the_system_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATH", raising=False)
    assert which("sh") == shutil.which("sh") is not None
    assert os.path.isabs(which("sh") or "")
