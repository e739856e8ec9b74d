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
from dataclasses import replace
from urllib.parse import urlsplit

from flannel.errors import ConfigError
from flannel.kube.config import KubeClientConfig, read_token_file
from flannel.secret import Secret, has_userinfo, redact_urls, strip_userinfo

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


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
