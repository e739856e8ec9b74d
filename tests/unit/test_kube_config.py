"""``load_client_config``: in-cluster, --kube-api-url and kubeconfig files, by client-go's rules, and errors that name
the file and the field."""

from __future__ import annotations

import base64
import dataclasses
import os
from pathlib import Path

import pytest

from flannel.errors import ConfigError
from flannel.kube.config import KubeClientConfig
from flannel.kube.loading import load_client_config

IN_CLUSTER = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def sa_dir(tmp_path: Path) -> Path:
    d = tmp_path / "serviceaccount"
    d.mkdir()
    (d / "token").write_text("sa-token\n")
    (d / "ca.crt").write_bytes(PEM)
    return d


def write(tmp_path: Path, text: str, name: str = "kubeconfig") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


TWO_CONTEXTS = """
apiVersion: v1
kind: Config
current-context: {current}
contexts:
- name: dev
  context: {{cluster: dev-cluster, user: dev-user}}
- name: prod
  context: {{cluster: prod-cluster, user: prod-user, namespace: kube-flannel}}
clusters:
- name: dev-cluster
  cluster: {{server: "https://dev.example:6443", insecure-skip-tls-verify: true}}
- name: prod-cluster
  cluster:
    server: https://10.0.0.1:6443
    certificate-authority-data: {ca}
    tls-server-name: kubernetes
users:
- name: dev-user
  user: {{username: admin, password: s3cret}}
- name: prod-user
  user: {{token: prod-token}}
"""


def test_in_cluster_when_neither_flag_is_given(sa_dir: Path) -> None:
    cfg = load_client_config("", "", IN_CLUSTER, service_account_dir=str(sa_dir))
    assert cfg == KubeClientConfig(server="https://10.96.0.1:443", token="sa-token", token_file=str(sa_dir / "token"),
                                   ca_file=str(sa_dir / "ca.crt"), source="in-cluster")


def test_in_cluster_brackets_an_ipv6_service_host(sa_dir: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert load_client_config("", "", env, service_account_dir=str(sa_dir)).server == "https://[fd00:10:96::1]:6443"


def test_in_cluster_without_ca_file_falls_back_to_system_cas(sa_dir: Path) -> None:
    (sa_dir / "ca.crt").unlink()
    assert load_client_config("", "", IN_CLUSTER, service_account_dir=str(sa_dir)).ca_file == ""


def test_in_cluster_ignores_the_kubeconfig_environment_variable(sa_dir: Path, tmp_path: Path) -> None:
    env = {**IN_CLUSTER, "KUBECONFIG": write(tmp_path, TWO_CONTEXTS.format(current="dev", ca=b64(PEM)))}
    assert load_client_config("", "", env, service_account_dir=str(sa_dir)).source == "in-cluster"


def test_in_cluster_needs_the_service_variables(sa_dir: Path) -> None:
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT") as err:
        load_client_config("", "", {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, service_account_dir=str(sa_dir))
    assert err.value.field == "KUBERNETES_SERVICE_PORT"


def test_in_cluster_needs_the_token_file(sa_dir: Path) -> None:
    (sa_dir / "token").unlink()
    with pytest.raises(ConfigError, match=f"in-cluster service account token {sa_dir}/token"):
        load_client_config("", "", IN_CLUSTER, service_account_dir=str(sa_dir))


def test_api_url_alone_is_the_whole_configuration(sa_dir: Path) -> None:
    cfg = load_client_config("https://api.example:6443/", "", IN_CLUSTER, service_account_dir=str(sa_dir))
    assert cfg == KubeClientConfig(server="https://api.example:6443", source="--kube-api-url")


def test_api_url_without_scheme_is_http_without_tls_settings() -> None:
    assert load_client_config("127.0.0.1:8080", "", {}).server == "http://127.0.0.1:8080"


@pytest.mark.parametrize("url", ["ftp://h:1", "https://", "https://h:notaport", "https://h:1/?a=b"])
def test_invalid_api_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="API server URL") as err:
        load_client_config(url, "", {})
    assert err.value.field == "server"


def test_kubeconfig_uses_the_current_context(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_CONTEXTS.format(current="prod", ca=b64(PEM)))
    cfg = load_client_config("", path, IN_CLUSTER)
    assert cfg == KubeClientConfig(server="https://10.0.0.1:6443", token="prod-token", ca_data=PEM,
                                   tls_server_name="kubernetes", source=path)
    dev = load_client_config("", write(tmp_path, TWO_CONTEXTS.format(current="dev", ca=b64(PEM))), {})
    assert (dev.server, dev.username, dev.password.reveal(), dev.insecure_skip_tls_verify) == (
        "https://dev.example:6443", "admin", "s3cret", True)


def test_a_json_kubeconfig_reads_as_its_yaml_twin_without_loading_pyyaml(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    import yaml

    text = TWO_CONTEXTS.format(current="prod", ca=b64(PEM))
    as_yaml = load_client_config("", write(tmp_path, text), {})
    json_path = write(tmp_path, json.dumps(yaml.safe_load(text)), "kubeconfig.json")
    assert load_client_config("", json_path, {}) == dataclasses.replace(as_yaml, source=json_path)
    probe = ("import sys; from flannel.kube.loading import load_client_config;"
             "print(load_client_config('', sys.argv[1], {}).server, 'yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe, json_path], capture_output=True, text=True, timeout=30,
                         check=True)
    assert out.stdout.split() == ["https://10.0.0.1:6443", "False"]


def test_a_yaml_flow_mapping_that_is_not_json_is_still_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "{current-context: c, contexts: [{name: c, context: {cluster: k}}],"
                           " clusters: [{name: k, cluster: {server: 'https://k:6443'}}]}\n")
    assert load_client_config("", path, {}).server == "https://k:6443"


def test_api_url_overrides_only_the_kubeconfig_server(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_CONTEXTS.format(current="prod", ca=b64(PEM)))
    cfg = load_client_config("https://127.0.0.1:16443", path, {})
    assert (cfg.server, cfg.token.reveal(), cfg.ca_data) == ("https://127.0.0.1:16443", "prod-token", PEM)


def test_kubeconfig_files_are_relative_to_its_directory(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "kube"
    (conf / "pki").mkdir(parents=True)
    for name in ("ca.crt", "node.crt", "node.key"):
        (conf / "pki" / name).write_bytes(PEM)
    (conf / "token").write_text("  file-token\n")
    path = write(conf, """
current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "https://h:6443", certificate-authority: pki/ca.crt}}]
users: [{name: u, user: {tokenFile: token, client-certificate: pki/node.crt, client-key: pki/node.key}}]
""")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # resolution must not depend on the working directory
    try:
        cfg = load_client_config("", path, {})
    finally:
        os.chdir(cwd)
    assert cfg.ca_file == str(conf / "pki" / "ca.crt")
    assert (cfg.cert_file, cfg.key_file) == (str(conf / "pki" / "node.crt"), str(conf / "pki" / "node.key"))
    assert (cfg.token.reveal(), cfg.token_file) == ("file-token", str(conf / "token"))


def test_kubeconfig_inline_client_certificate_data_is_decoded(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
current-context: c
contexts: [{{name: c, context: {{cluster: k, user: u}}}}]
clusters: [{{name: k, cluster: {{server: "h:6443", certificate-authority-data: {b64(PEM)}}}}}]
users: [{{name: u, user: {{client-certificate-data: {b64(b"CERT")}, client-key-data: {b64(b"KEY")}}}}}]
""")
    cfg = load_client_config("", path, {})
    assert (cfg.cert_data, cfg.key_data.reveal(), cfg.ca_data) == (b"CERT", b"KEY", PEM)
    assert cfg.server == "https://h:6443"  # no scheme, but TLS settings: https, as client-go does


def test_kubeconfig_without_current_context_uses_the_api_url(tmp_path: Path) -> None:
    path = write(tmp_path, "apiVersion: v1\nkind: Config\n")
    assert load_client_config("http://127.0.0.1:8080", path, {}).server == "http://127.0.0.1:8080"


BASE = """
current-context: c
contexts: [{{name: c, context: {context}}}]
clusters: [{{name: k, cluster: {cluster}}}]
users: [{{name: u, user: {user}}}]
"""


@pytest.mark.parametrize(("context", "cluster", "user", "field", "message"), [
    ("{cluster: k, user: u}", "{server: 'https://h'}",
     "{exec: {command: aws, apiVersion: client.authentication.k8s.io/v1}}",
     "users[u].user.exec", "exec credential plugins are not supported (user 'u')"),
    ("{cluster: k, user: u}", "{server: 'https://h'}", "{auth-provider: {name: gcp}}",
     "users[u].user.auth-provider", "auth-provider plugins are not supported"),
    ("{cluster: k, user: u}", "{server: 'https://h'}", "{token: t, as: admin}", "users[u].user.as", "impersonation"),
    ("{cluster: other, user: u}", "{server: 'https://h'}", "{}", "clusters", "no entry named 'other'"),
    ("{cluster: k, user: nobody}", "{server: 'https://h'}", "{}", "users", "no entry named 'nobody'"),
    ("{cluster: k}", "{insecure-skip-tls-verify: true}", "{}",
     "clusters[k].cluster.server", "no server defined"),
    ("{cluster: k}", "{server: 'https://h', certificate-authority-data: '!!notbase64'}", "{}",
     "clusters[k].cluster.certificate-authority-data", "invalid base64"),
    ("{cluster: k}", "{server: 'https://h', certificate-authority: missing.crt}", "{}",
     "clusters[k].cluster.certificate-authority", "cannot read file"),
    ("{cluster: k}", "{server: 'https://h', certificate-authority: ca.pem, certificate-authority-data: QQ==}", "{}",
     "clusters[k].cluster.certificate-authority", "both specified"),
    ("{cluster: k}", "{server: 'https://h', certificate-authority: ca.pem, insecure-skip-tls-verify: true}", "{}",
     "clusters[k].cluster.insecure-skip-tls-verify", "insecure flag is not allowed"),
    ("{cluster: k}", "{server: 'https://h', insecure-skip-tls-verify: 'yes please'}", "{}",
     "clusters[k].cluster.insecure-skip-tls-verify", "must be true or false"),
    ("{cluster: k}", "{server: 'https://h', proxy-url: 'http://proxy:3128'}", "{}",
     "clusters[k].cluster.proxy-url", "proxies are not supported"),
    ("{cluster: k, user: u}", "{server: 'https://h'}", "{client-certificate-data: QQ==}",
     "users[u].user.client-key", "must be given with a client certificate"),
    ("{cluster: k, user: u}", "{server: 'https://h'}", "{client-key-data: QQ==}",
     "users[u].user.client-certificate", "must be given with a client key"),
    ("{cluster: k, user: u}", "{server: 'https://h'}", "{token: t, username: a, password: b}",
     "users[u].user", "more than one authentication method"),
    ("{cluster: k, user: u}", "{server: 'https://h'}", "{token: 12345}", "users[u].user.token", "must be a string"),
    ("{cluster: k, user: u}", "{server: 'https://h'}", "{tokenFile: no-such-token}",
     "users[u].user.tokenFile", "cannot read file"),
])
def test_bad_kubeconfig_names_the_file_and_the_field(tmp_path: Path, context: str, cluster: str, user: str,
                                                     field: str, message: str) -> None:
    (tmp_path / "ca.pem").write_bytes(PEM)
    path = write(tmp_path, BASE.format(context=context, cluster=cluster, user=user))
    with pytest.raises(ConfigError) as err:
        load_client_config("", path, {})
    assert err.value.field == field
    assert str(err.value).startswith(f"kubeconfig {path}: {field}: ")
    assert message in str(err.value)


@pytest.mark.parametrize(("text", "field", "message"), [
    ("current-context: missing\ncontexts: []\n", "contexts", "no entry named 'missing'"),
    ("kind: Config\n", "current-context", "not set, and no --kube-api-url given"),
    ("contexts: {a: b}\ncurrent-context: a\n", "contexts", "must be a list"),
    ("current-context: c\ncontexts: [{name: c, context: {cluster: k}}, {name: c}]\n", "contexts[c]",
     "duplicate name"),
])
def test_bad_kubeconfig_structure_names_the_field(tmp_path: Path, text: str, field: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as err:
        load_client_config("", path, {})
    assert err.value.field == field and path in str(err.value)


@pytest.mark.parametrize(("text", "message"), [
    ("clusters: [\n", "not valid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
    ("kind: Pod\n", "kind: must be Config"),
])
def test_unparsable_kubeconfig_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as err:
        load_client_config("", path, {})
    assert path in str(err.value)


def test_missing_kubeconfig_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"cannot read kubeconfig {tmp_path}/absent"):
        load_client_config("", str(tmp_path / "absent"), {})
