"""Where the Kubernetes client connects and how it authenticates, chosen as flanneld's client-go does it.

flanneld calls ``clientcmd.BuildConfigFromFlags(--kube-api-url, --kubeconfig-file)``:

* neither given: the in-cluster configuration (``KUBERNETES_SERVICE_HOST``/``_PORT`` and the service
  account's token and CA);
* a kubeconfig: its current context's cluster and user (see ``flannel.kube.kubeconfig``);
* ``--kube-api-url``: replaces the server (alone, it is the whole configuration: no credentials).

``KUBECONFIG`` and ``~/.kube/config`` are never consulted, because client-go's explicit-path loading rules
do not either. Every bad input raises ``ConfigError`` naming the file and the field.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from flannel.errors import ConfigError
from flannel.secret import NO_SECRET, NO_SECRET_BYTES, Secret, has_userinfo, redact_urls, strip_userinfo

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


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


def load_client_config(
    api_url: str,
    kubeconfig_path: str,
    environ: Mapping[str, str],
    *,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
) -> KubeClientConfig:
    """The client configuration for ``--kube-api-url`` and ``--kubeconfig-file``, as client-go builds it.

    ``service_account_dir`` replaces the in-cluster token and CA directory (tests).
    """
    if kubeconfig_path:
        from flannel.kube.kubeconfig import load_kubeconfig

        cfg = load_kubeconfig(kubeconfig_path, server_override=api_url)
    elif api_url:
        cfg = KubeClientConfig(server=api_url, source="--kube-api-url")
    else:
        cfg = in_cluster_config(environ, service_account_dir)
    return _with_full_server_url(cfg)


def in_cluster_config(environ: Mapping[str, str], service_account_dir: str = SERVICE_ACCOUNT_DIR) -> KubeClientConfig:
    """client-go's ``rest.InClusterConfig``: the service's address, the pod's service-account token and CA."""
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ConfigError(
            "unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be "
            "defined (or give --kube-api-url or --kubeconfig-file)",
            field="KUBERNETES_SERVICE_HOST" if not host else "KUBERNETES_SERVICE_PORT",
        )
    token_file = os.path.join(service_account_dir, "token")
    token = Secret(read_token_file(token_file, "in-cluster service account token"))
    ca_file = os.path.join(service_account_dir, "ca.crt")
    if not os.path.isfile(ca_file):
        # client-go only logs this and falls back to the system CAs.
        log.error("expected to load root CA config from %s, but it is missing; using the system CAs", ca_file)
        ca_file = ""
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return KubeClientConfig(
        server=f"https://{hostport}", token=token, token_file=token_file, ca_file=ca_file, source="in-cluster"
    )


def read_token_file(path: str, what: str) -> str:
    """A bearer token file's content without surrounding white space; ``ConfigError`` if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}", field="tokenFile") from exc


def _with_full_server_url(cfg: KubeClientConfig) -> KubeClientConfig:
    """Complete and check the server URL. Like client-go, a bare ``host:port`` gets ``https://`` when any TLS
    setting is present and ``http://`` otherwise. ``user:password@`` in the URL is dropped with a warning: the
    client never sent it, and the URL is printed in logs and errors."""
    server = cfg.server.strip()
    if has_userinfo(server):
        server = strip_userinfo(server)
        log.warning("%s: user info in the API server URL %s is ignored; use the kubeconfig's user", cfg.source,
                    server)
    shown = redact_urls(cfg.server)
    if "://" not in server:
        tls = bool(cfg.ca_file or cfg.ca_data or cfg.cert_file or cfg.cert_data or cfg.insecure_skip_tls_verify)
        server = ("https://" if tls else "http://") + server
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{cfg.source}: invalid API server URL {shown!r}: want http(s)://host[:port]",
                          field="server")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(f"{cfg.source}: invalid port in API server URL {shown!r}", field="server") from None
    if parts.query or parts.fragment:
        raise ConfigError(f"{cfg.source}: API server URL {shown!r} must not have a query", field="server")
    server = server.rstrip("/")
    return cfg if server == cfg.server else replace(cfg, server=server)
