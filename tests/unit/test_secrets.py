"""Secrets stay secret: every credential flanneld holds is absent from the repr, str and messages of the objects
that carry it; URL user info is dropped or redacted wherever an endpoint is printed; the process can be made
non-dumpable. The whole daemon is checked end to end in tests/integration/test_secrets_process.py."""

from __future__ import annotations

import base64
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from flannel.daemon import flags
from flannel.daemon.logs import KlogFormatter
from flannel.errors import ConfigError
from flannel.kube.client import KubeClient
from flannel.kube.config import KubeClientConfig
from flannel.kube.loading import load_client_config
from flannel.readiness import Readiness
from flannel.secret import REDACTED, Secret, redact_urls, strip_userinfo
from flannel.subnet.etcd_store import EtcdStoreOptions

PASSWORD = "pw-Zq81-etcd"
URL_PASSWORD = "pw-Kx77-url"
TOKEN = "tok-Rb55-bearer"
BASIC = "pw-Hj23-basic"
KEY = b"-----BEGIN PRIVATE KEY-----\nkey-Wd19-material\n-----END PRIVATE KEY-----\n"
ALL = (PASSWORD, URL_PASSWORD, TOKEN, BASIC, "key-Wd19-material")


def assert_hidden(*texts: str) -> None:
    for text in texts:
        for secret in ALL:
            assert secret not in text, f"{secret!r} leaked in {text!r}"


def shown(obj: object) -> list[str]:
    """Every way an object is commonly printed."""
    return [repr(obj), str(obj), f"{obj}", "%s" % (obj,), "%r" % (obj,)]  # noqa: UP031


def test_secret_prints_redacted_and_reveals_on_request() -> None:
    s = Secret(PASSWORD)
    assert_hidden(*shown(s), f"{s:>40}")
    assert str(s) == REDACTED and s.reveal() == PASSWORD
    assert repr(Secret("")) == "Secret(<empty>)" and str(Secret("")) == "" and not Secret("") and s
    assert s == Secret(PASSWORD) and s != Secret("other") and s != PASSWORD and Secret(b"x") != Secret("x")
    assert hash(s) == hash(Secret(PASSWORD))
    assert pickle.loads(pickle.dumps(s)).reveal() == PASSWORD


def test_options_from_the_command_line_and_the_env_hide_the_password() -> None:
    argv = ["--etcd-password", PASSWORD, "--etcd-username=u"]
    from_argv = flags.parse_args(argv, {})
    from_env = flags.parse_args([], {"FLANNELD_ETCD_PASSWORD": PASSWORD})
    for opts in (from_argv, from_env):
        assert opts.etcd_password.reveal() == PASSWORD
        assert_hidden(*shown(opts))
    assert [s.name for s in flags.secrets_on_command_line(from_argv)] == ["etcd-password"]
    assert flags.secrets_on_command_line(from_env) == []
    assert "-etcd-password string\n" in flags.usage_text()


def test_etcd_store_options_hide_the_password_and_drop_url_user_info(caplog: pytest.LogCaptureFixture) -> None:
    opts = EtcdStoreOptions.from_flag(f"http://root:{URL_PASSWORD}@10.0.0.1:2379,10.0.0.2:2379", username="root",
                                      password=Secret(PASSWORD))
    assert opts.endpoints == ("http://10.0.0.1:2379", "10.0.0.2:2379")
    assert_hidden(*shown(opts), caplog.text)
    assert "etcd endpoint http://10.0.0.1:2379: user info in the URL is ignored" in caplog.text
    plain = EtcdStoreOptions(password=PASSWORD)  # type: ignore[arg-type]  # as tests and tools write it
    assert isinstance(plain.password, Secret) and plain.password.reveal() == PASSWORD
    assert_hidden(*shown(plain))


def kubeconfig(tmp_path: Path, user: str, server: str = "https://10.0.0.1:6443") -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(f"""
current-context: c
contexts: [{{name: c, context: {{cluster: k, user: u}}}}]
clusters: [{{name: k, cluster: {{server: "{server}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {user}}}]
""")
    return str(path)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("user", [
    f"{{token: {TOKEN}}}",
    f"{{username: admin, password: {BASIC}}}",
    f"{{client-certificate-data: {b64(b'CERT')}, client-key-data: {b64(KEY)}}}",
])
def test_kube_client_config_hides_token_password_and_key(tmp_path: Path, user: str) -> None:
    cfg = load_client_config("", kubeconfig(tmp_path, user), {})
    assert cfg.token.reveal() == TOKEN or cfg.password.reveal() == BASIC or cfg.key_data.reveal() == KEY
    assert_hidden(*shown(cfg))


def test_in_cluster_token_is_hidden(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    cfg = load_client_config("", "", {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
                             service_account_dir=str(tmp_path))
    assert cfg.token.reveal() == TOKEN
    assert_hidden(*shown(cfg))


def test_kube_client_still_sends_the_credentials() -> None:
    with_token = KubeClient(KubeClientConfig(server="http://127.0.0.1:1", token=Secret(TOKEN)))
    assert with_token._credentials.header() == f"Bearer {TOKEN}"
    basic = KubeClient(KubeClientConfig(server="http://127.0.0.1:1", username="a", password=BASIC))  # type: ignore[arg-type]
    assert basic._credentials.header() == "Basic " + b64(f"a:{BASIC}".encode())
    assert_hidden(*shown(with_token.config), *shown(basic.config))


def test_kube_server_url_user_info_is_dropped_and_never_in_an_error(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_client_config("", kubeconfig(tmp_path, f"{{token: {TOKEN}}}",
                                            f"https://admin:{URL_PASSWORD}@10.0.0.1:6443"), {})
    assert cfg.server == "https://10.0.0.1:6443"
    assert "user info in the API server URL https://10.0.0.1:6443 is ignored" in caplog.text
    with pytest.raises(ConfigError) as bad:
        load_client_config(f"https://admin:{URL_PASSWORD}@10.0.0.1:6443/?q=1", "", {})
    assert_hidden(str(bad.value), caplog.text)


def test_redact_urls_replaces_user_info_in_free_text() -> None:
    text = f"etcd http://root:{URL_PASSWORD}@10.0.0.1:2379: refused; also https://tok@h/x and mail a@b.c"
    assert redact_urls(text) == ("etcd http://<redacted>@10.0.0.1:2379: refused; also https://<redacted>@h/x "
                                 "and mail a@b.c")
    assert strip_userinfo(f"https://u:{URL_PASSWORD}@[::1]:6443/p") == "https://[::1]:6443/p"
    assert strip_userinfo("10.0.0.1:2379") == "10.0.0.1:2379"


def test_log_lines_and_readiness_reasons_never_carry_url_user_info() -> None:
    record = logging.LogRecord("x", logging.ERROR, "f.py", 1, "etcd %s failed", (f"http://u:{URL_PASSWORD}@h:1",),
                               None)
    line = KlogFormatter().format(record)
    assert line.endswith("etcd http://<redacted>@h:1 failed")
    readiness = Readiness()
    readiness.mark_started()
    readiness.problem("datastore", f"etcd http://u:{URL_PASSWORD}@h:1: connection refused")
    assert readiness.explain().startswith("flanneld is not ready: datastore: etcd http://<redacted>@h:1: connection")
    assert_hidden(readiness.explain())


NON_DUMPABLE = """
import ctypes, sys
from flannel.secret import make_non_dumpable
libc = ctypes.CDLL(None)
before = libc.prctl(3, 0, 0, 0, 0)
ok = make_non_dumpable()
print(before, ok, libc.prctl(3, 0, 0, 0, 0))
"""


def test_make_non_dumpable_turns_off_core_dumps_of_the_calling_process() -> None:
    out = subprocess.run([sys.executable, "-c", NON_DUMPABLE], capture_output=True, text=True, timeout=30,
                         check=True)
    assert out.stdout.split() == ["1", "True", "0"]
