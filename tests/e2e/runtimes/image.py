"""A busybox container image made on this machine, for the runtime tests: no registry is reachable here.

The root filesystem is ``/bin/busybox`` (Debian's ``busybox-static``) with one symlink per applet (sh, ping,
ip, nc, sleep, ...). ``rootfs_tar`` writes it as a plain tar, which ``podman import`` and ``docker import``
take; ``oci_archive`` wraps the same layer as an OCI image archive (``oci-layout``, ``index.json``, blobs),
which is what ``ctr image import`` takes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
_DIRS = ("bin", "dev", "etc", "proc", "root", "run", "sys", "tmp", "var")


def _applets() -> list[str]:
    out = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    return sorted(a for a in out if a and "/" not in a and a != "busybox")


def _layer() -> bytes:
    """The root filesystem as an uncompressed tar, with fixed owners and times (the same bytes every run)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in _DIRS:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        data = Path(BUSYBOX).read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in _applets():
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
    return buf.getvalue()


def rootfs_tar(path: Path) -> Path:
    """Write the root filesystem tar (for ``podman import`` / ``docker import``) and return its path."""
    path.write_bytes(_layer())
    return path


def oci_archive(path: Path, ref: str) -> Path:
    """Write an OCI image archive of the root filesystem, named ``ref`` (for ``ctr image import``)."""
    layer = _layer()
    gz = gzip.compress(layer, mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
    }).encode()
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(config, "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(gz, "application/vnd.oci.image.layer.v1.tar+gzip")],
    }).encode()
    entry = blob(manifest, "application/vnd.oci.image.manifest.v1+json")
    entry["annotations"] = {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref}
    index = json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()
    with tarfile.open(path, "w") as tar:
        files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
        files.update({f"blobs/sha256/{d}": data for d, data in blobs.items()})
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return path
