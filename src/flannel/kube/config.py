"""The Kubernetes client's configuration: the server, its CA and the credentials, as one frozen value.

Where it comes from (in-cluster, a kubeconfig, ``--kube-api-url``) is ``flannel.kube.loading``; the kubeconfig
format is ``flannel.kube.kubeconfig``. Both build a ``KubeClientConfig``; this module imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass

from flannel.errors import ConfigError
from flannel.secret import NO_SECRET, NO_SECRET_BYTES, Secret


@dataclass(frozen=True)
class KubeClientConfig:
    """Everything ``KubeClient`` needs to reach and authenticate to one API server."""

    server: str
    """Base URL, ``https://host:port`` (a path prefix such as ``/k8s/clusters/c-1`` is kept)."""
    token: Secret[str] = NO_SECRET
    """Bearer token as read when the configuration was loaded."""
    token_file: str = ""
    """File holding the bearer token; re-read whenever it changes, because projected service-account tokens
    rotate (about hourly). When set, its content wins over ``token``."""
    ca_file: str = ""
    """PEM bundle of the CAs trusted for the server's certificate; empty with ``ca_data`` empty: system CAs."""
    ca_data: bytes = b""
    """The same as PEM bytes (kubeconfig ``certificate-authority-data``, already base64-decoded)."""
    cert_file: str = ""
    """Client certificate (PEM) for mutual TLS."""
    cert_data: bytes = b""
    """The same as PEM bytes."""
    key_file: str = ""
    """Private key (PEM) of the client certificate."""
    key_data: Secret[bytes] = NO_SECRET_BYTES
    """The same as PEM bytes."""
    insecure_skip_tls_verify: bool = False
    """Do not verify the server's certificate at all (kubeconfig ``insecure-skip-tls-verify``)."""
    tls_server_name: str = ""
    """Name to verify the server's certificate against instead of the URL's host (``tls-server-name``)."""
    username: str = ""
    """HTTP basic-auth user (kubeconfig ``username``)."""
    password: Secret[str] = NO_SECRET
    """HTTP basic-auth password."""
    source: str = ""
    """Where this configuration came from ("in-cluster", a kubeconfig path, "--kube-api-url"), for logs."""

    def __post_init__(self) -> None:
        # The credentials are ``Secret``s, so that this dataclass' repr, a log line or an error text never shows
        # them; plain values from callers outside the type checker's view (tests, tools) are wrapped here.
        for name in ("token", "key_data", "password"):
            value = getattr(self, name)
            if not isinstance(value, Secret):
                object.__setattr__(self, name, Secret(value))

    @property
    def uses_tls(self) -> bool:
        """Whether connections are HTTPS (and so need Python's ``ssl`` module)."""
        return self.server.startswith("https://")


def read_token_file(path: str, what: str) -> str:
    """A bearer token file's content without surrounding white space; ``ConfigError`` if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}", field="tokenFile") from exc
