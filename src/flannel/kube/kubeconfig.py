"""Reading a kubeconfig file (``--kubeconfig-file``) into a ``KubeClientConfig``, by client-go's rules.

Only the current context is used: its cluster (server, CA file or data, insecure-skip-tls-verify,
tls-server-name) and its user (token, tokenFile, client certificate and key as files or data, basic auth).
Relative file names are resolved against the kubeconfig's own directory, as client-go does. Credential
plugins (``exec``, ``auth-provider``) and impersonation are refused with an error naming the user entry:
flanneld runs unattended and must not run helper programs. client-go's validation errors (a CA given both as
file and data, a certificate without a key, two authentication methods …) are errors here too.

PyYAML is imported here, lazily, so that only a kubeconfig user pays for it, and only for a kubeconfig that is
not JSON (kubectl reads those too; JSON is YAML): PyYAML and its C extension are 1.2 MiB of resident memory
(issue #16).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from flannel.errors import ConfigError
from flannel.kube.config import KubeClientConfig, read_token_file
from flannel.secret import Secret

_UNSUPPORTED_USER_FIELDS = {
    "exec": "exec credential plugins are not supported",
    "auth-provider": "auth-provider plugins are not supported",
    "as": "impersonation is not supported",
    "as-uid": "impersonation is not supported",
    "as-groups": "impersonation is not supported",
    "as-user-extra": "impersonation is not supported",
}


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


class _Doc:
    """One kubeconfig document plus its path, so that every error can name the file and the field."""

    def __init__(self, path: str, data: dict[str, Any]) -> None:
        self.path = path
        self.base_dir = os.path.dirname(os.path.abspath(path))
        self.data = data

    def error(self, field: str, problem: str) -> ConfigError:
        return ConfigError(f"kubeconfig {self.path}: {field}: {problem}", field=field)

    def string(self, obj: dict[str, Any], key: str, where: str) -> str:
        value = obj.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.error(_join(where, key), f"must be a string, not {type(value).__name__}")
        return value

    def boolean(self, obj: dict[str, Any], key: str, where: str) -> bool:
        value = obj.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.error(_join(where, key), f"must be true or false, not {value!r}")
        return value

    def base64(self, obj: dict[str, Any], key: str, where: str) -> bytes:
        text = self.string(obj, key, where)
        try:
            return base64.b64decode(text.encode("ascii"), validate=True) if text else b""
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise self.error(_join(where, key), f"invalid base64: {exc}") from exc

    def file(self, obj: dict[str, Any], key: str, where: str) -> str:
        """A file name, resolved against the kubeconfig's directory, that must be readable."""
        name = self.string(obj, key, where)
        if not name:
            return ""
        path = name if os.path.isabs(name) else os.path.join(self.base_dir, name)
        if not os.access(path, os.R_OK) or not os.path.isfile(path):
            raise self.error(_join(where, key), f"cannot read file {path}")
        return path

    def named(self, section: str, name: str, inner: str) -> tuple[dict[str, Any], str]:
        """The ``inner`` mapping of the entry called ``name`` in the list ``section``, and its field name."""
        entries = self.data.get(section) or []
        if not isinstance(entries, list):
            raise self.error(section, "must be a list")
        found: dict[str, Any] | None = None
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise self.error(f"{section}[{i}]", "must be a mapping with name and " + inner)
            if entry.get("name") == name:
                if found is not None:
                    raise self.error(f"{section}[{name}]", "duplicate name")
                found = entry
        if found is None:
            raise self.error(section, f"no entry named {name!r}")
        where = f"{section}[{name}].{inner}"
        body = found.get(inner) or {}
        if not isinstance(body, dict):
            raise self.error(where, "must be a mapping")
        return body, where


def load_kubeconfig(path: str, *, server_override: str = "") -> KubeClientConfig:
    """The configuration of ``path``'s current context; ``server_override`` (``--kube-api-url``) replaces the
    cluster's server."""
    doc = _Doc(path, _read_yaml(path))
    context_name = doc.string(doc.data, "current-context", "")
    if not context_name:
        if server_override:  # client-go: an empty context plus the overridden server is a usable config
            return KubeClientConfig(server=server_override, source=path)
        raise doc.error("current-context", "not set, and no --kube-api-url given: no server to connect to")
    context, ctx_where = doc.named("contexts", context_name, "context")
    cluster_name = doc.string(context, "cluster", ctx_where)
    user_name = doc.string(context, "user", ctx_where)

    settings: dict[str, Any] = {"source": path}
    if cluster_name:
        settings.update(_cluster(doc, cluster_name))
    if server_override:
        settings["server"] = server_override
    if not settings.get("server"):
        field = f"clusters[{cluster_name}].cluster.server" if cluster_name else f"{ctx_where}.cluster"
        raise doc.error(field, "no server defined (and no --kube-api-url given)")
    if user_name:
        settings.update(_user(doc, user_name))
    return KubeClientConfig(**settings)


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read kubeconfig {path}: {exc.strerror or exc}", field="kubeconfig") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"kubeconfig {path}: not valid YAML: {exc}", field="kubeconfig") from exc
    data = _json_object(text)
    if data is None:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"kubeconfig {path}: not valid YAML: {exc}", field="kubeconfig") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"kubeconfig {path}: must be a mapping (kind: Config)", field="kubeconfig")
    kind = data.get("kind")
    if kind not in (None, "", "Config"):
        raise ConfigError(f"kubeconfig {path}: kind: must be Config, not {kind!r}", field="kind")
    return data


def _json_object(text: str) -> dict[str, Any] | None:
    """``text`` decoded, when it is a JSON object (what PyYAML would read from it too); else None, for PyYAML."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None  # a YAML flow mapping ({server: x}) or a typo: PyYAML reads it, or names the error
    return data if isinstance(data, dict) else None


def _cluster(doc: _Doc, name: str) -> dict[str, Any]:
    cluster, where = doc.named("clusters", name, "cluster")
    if doc.string(cluster, "proxy-url", where):
        raise doc.error(f"{where}.proxy-url", "HTTP proxies are not supported")
    ca_file = doc.file(cluster, "certificate-authority", where)
    ca_data = doc.base64(cluster, "certificate-authority-data", where)
    insecure = doc.boolean(cluster, "insecure-skip-tls-verify", where)
    if ca_file and ca_data:
        raise doc.error(f"{where}.certificate-authority", "certificate-authority-data and certificate-authority are "
                        "both specified; give only one")
    if insecure and (ca_file or ca_data):
        raise doc.error(f"{where}.insecure-skip-tls-verify", "specifying a root certificates file with the insecure "
                        "flag is not allowed")
    return {
        "server": doc.string(cluster, "server", where),
        "ca_file": ca_file,
        "ca_data": ca_data,
        "insecure_skip_tls_verify": insecure,
        "tls_server_name": doc.string(cluster, "tls-server-name", where),
    }


def _user(doc: _Doc, name: str) -> dict[str, Any]:
    user, where = doc.named("users", name, "user")
    for key, problem in _UNSUPPORTED_USER_FIELDS.items():
        if user.get(key):
            raise doc.error(_join(where, key), f"{problem} (user {name!r}); use a token, tokenFile or client "
                            "certificate instead")
    token = doc.string(user, "token", where)
    token_file = doc.file(user, "tokenFile", where)
    if token_file and not token:
        token = read_token_file(token_file, f"kubeconfig {doc.path}: {where}.tokenFile")
    username = doc.string(user, "username", where)
    password = doc.string(user, "password", where)
    if (token or token_file) and (username or password):
        raise doc.error(where, "more than one authentication method found (token and basic auth); only one is "
                        "allowed")
    cert_file = doc.file(user, "client-certificate", where)
    cert_data = doc.base64(user, "client-certificate-data", where)
    key_file = doc.file(user, "client-key", where)
    key_data = doc.base64(user, "client-key-data", where)
    if cert_file and cert_data:
        raise doc.error(f"{where}.client-certificate", "client-certificate-data and client-certificate are both "
                        "specified; give only one")
    if key_file and key_data:
        raise doc.error(f"{where}.client-key", "client-key-data and client-key are both specified; give only one")
    if (cert_file or cert_data) and not (key_file or key_data):
        raise doc.error(f"{where}.client-key", "client-key-data or client-key must be given with a client "
                        "certificate")
    if (key_file or key_data) and not (cert_file or cert_data):
        raise doc.error(f"{where}.client-certificate", "client-certificate-data or client-certificate must be "
                        "given with a client key")
    return {
        "token": Secret(token),
        "token_file": token_file,
        "username": username,
        "password": Secret(password),
        "cert_file": cert_file,
        "cert_data": cert_data,
        "key_file": key_file,
        "key_data": Secret(key_data),
    }
