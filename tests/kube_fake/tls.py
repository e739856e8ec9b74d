"""A throw-away CA, API server certificate and client certificate, made with the ``openssl`` CLI.

kubeadm clusters use exactly this shape: a self-signed cluster CA, a serving certificate whose SANs list the
API server's addresses, and client certificates (``O=system:nodes``) for mutual TLS. Making them with the
CLI at test time keeps the fake free of Python crypto dependencies, so it also runs in a bare namespace.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
_CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class TlsDir:
    """The PEM files of one test PKI (all in ``path``)."""

    path: Path

    @property
    def ca(self) -> Path:
        return self.path / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.path / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.path / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.path / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.path / "client.key"


def _run(*args: str | Path) -> None:
    subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True, timeout=60)


def make_tls_dir(directory: str | Path, names: Sequence[str] = ("127.0.0.1", "localhost")) -> TlsDir:
    """Write ca.crt/ca.key, server.crt/server.key (SANs: ``names``) and client.crt/client.key into
    ``directory``; an existing CA there is reused so that several servers can share it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = TlsDir(d)
    if not files.ca.exists():
        _run("req", "-x509", *_CURVE, "-keyout", d / "ca.key", "-out", files.ca, "-days", "2",
             "-subj", "/CN=fake-kubernetes-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    sans = ",".join(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in names)
    _issue(d, "server", "/CN=kube-apiserver", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
    _issue(d, "client", "/O=system:nodes/CN=system:node:fake", "extendedKeyUsage=clientAuth\n")
    return files


def _issue(d: Path, name: str, subject: str, extensions: str) -> None:
    ext = d / f"{name}.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n" + extensions)
    _run("req", *_CURVE, "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr", "-subj", subject)
    _run("x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
         "-CAcreateserial", "-out", d / f"{name}.crt", "-days", "2", "-extfile", ext)
    (d / f"{name}.csr").unlink()
    ext.unlink()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
