"""The real ``KubeClient`` against the fake API server over HTTPS: CA trust, bearer tokens, client certificates,
token rotation, and a kubeconfig loaded end to end."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from flannel.errors import ConfigError
from flannel.kube.client import KubeClient
from flannel.kube.config import KubeClientConfig
from flannel.kube.errors import KubeUnavailableError, UnauthorizedError
from flannel.kube.loading import load_client_config
from tests.kube_fake import FakeKubeApi, TlsDir
from tests.kube_fake.fixtures import kube_tls_fixture  # noqa: F401

TOKEN = "fake-token-1"


@pytest.fixture
async def tls_api(kube_tls: TlsDir) -> AsyncIterator[FakeKubeApi]:
    """An HTTPS fake that wants a bearer token or a client certificate."""
    async with FakeKubeApi(tls_dir=kube_tls.path, token=TOKEN, client_ca=True, bookmark_interval=0.2) as api:
        api.add_nodes(40)
        yield api
    assert not api.internal_errors, api.internal_errors


def tls_config(api: FakeKubeApi, tls: TlsDir, **kwargs: object) -> KubeClientConfig:
    return replace(KubeClientConfig(server=api.url, ca_file=str(tls.ca), source="test"), **kwargs)  # type: ignore[arg-type]


async def test_https_with_ca_and_token_gets_lists_watches_and_patches(tls_api: FakeKubeApi, kube_tls: TlsDir) -> None:
    async with KubeClient(tls_config(tls_api, kube_tls, token=TOKEN), request_timeout=5) as client:
        assert (await client.get_node("node-00003"))["metadata"]["name"] == "node-00003"
        listing = client.list_nodes(limit=15)
        assert [len(page) async for page in listing] == [15, 15, 10]
        patched = await client.patch_node_status("node-00003", {"metadata": {"annotations": {"k": "v"}}})
        async with contextlib.aclosing(client.watch_nodes(listing.resource_version, 5)) as events:
            kind, obj = await anext(events)
        assert (kind, obj) == ("MODIFIED", patched)


async def test_missing_or_wrong_token_raises_unauthorized(tls_api: FakeKubeApi, kube_tls: TlsDir) -> None:
    for token in ("", "wrong"):
        async with KubeClient(tls_config(tls_api, kube_tls, token=token), request_timeout=5) as client:
            with pytest.raises(UnauthorizedError, match="401 Unauthorized"):
                await client.get_node("node-00001")


async def test_client_certificate_files_authenticate(tls_api: FakeKubeApi, kube_tls: TlsDir) -> None:
    cfg = tls_config(tls_api, kube_tls, cert_file=str(kube_tls.client_cert), key_file=str(kube_tls.client_key))
    async with KubeClient(cfg, request_timeout=5) as client:
        assert (await client.get_node("node-00001"))["metadata"]["name"] == "node-00001"


async def test_inline_ca_and_client_certificate_data_authenticate(tls_api: FakeKubeApi, kube_tls: TlsDir) -> None:
    cfg = KubeClientConfig(server=tls_api.url, ca_data=kube_tls.ca.read_bytes(),
                           cert_data=kube_tls.client_cert.read_bytes(), key_data=kube_tls.client_key.read_bytes())
    async with KubeClient(cfg, request_timeout=5) as client:
        assert (await client.get_node("node-00002"))["metadata"]["name"] == "node-00002"


async def test_untrusted_server_certificate_is_refused(tls_api: FakeKubeApi) -> None:
    async with KubeClient(KubeClientConfig(server=tls_api.url, token=TOKEN), request_timeout=5) as client:
        with pytest.raises(KubeUnavailableError, match="certificate verify failed"):
            await client.get_node("node-00001")


async def test_insecure_skip_tls_verify_accepts_any_certificate(tls_api: FakeKubeApi) -> None:
    cfg = KubeClientConfig(server=tls_api.url, token=TOKEN, insecure_skip_tls_verify=True)
    async with KubeClient(cfg, request_timeout=5) as client:
        assert (await client.get_node("node-00001"))["metadata"]["name"] == "node-00001"


async def test_tls_server_name_is_checked_instead_of_the_url_host(tls_api: FakeKubeApi, kube_tls: TlsDir) -> None:
    good = tls_config(tls_api, kube_tls, token=TOKEN, tls_server_name="localhost")
    async with KubeClient(good, request_timeout=5) as client:
        await client.get_node("node-00001")
    bad = tls_config(tls_api, kube_tls, token=TOKEN, tls_server_name="kubernetes.default.svc")
    async with KubeClient(bad, request_timeout=5) as client:
        with pytest.raises(KubeUnavailableError, match="certificate verify failed"):
            await client.get_node("node-00001")


async def test_rotated_token_file_is_picked_up(tls_api: FakeKubeApi, kube_tls: TlsDir, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    cfg = tls_config(tls_api, kube_tls, token="stale-initial-value", token_file=str(token_file))
    async with KubeClient(cfg, request_timeout=5) as client:
        await client.get_node("node-00001")
        tls_api.tokens = {"fake-token-2"}  # the API server now accepts only the new token
        with pytest.raises(UnauthorizedError):
            await client.get_node("node-00001")
        new = tmp_path / "token.new"  # kubelet swaps the file atomically
        new.write_text("fake-token-2")
        new.rename(token_file)
        assert (await client.get_node("node-00001"))["metadata"]["name"] == "node-00001"


async def test_kubeconfig_with_relative_ca_and_token_file_works_end_to_end(tls_api: FakeKubeApi, kube_tls: TlsDir,
                                                                           tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_bytes(kube_tls.ca.read_bytes())
    (tmp_path / "token").write_text(TOKEN)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""
apiVersion: v1
kind: Config
current-context: flannel
contexts:
- name: flannel
  context: {{cluster: local, user: flannel}}
clusters:
- name: local
  cluster: {{server: "{tls_api.url}", certificate-authority: pki/ca.crt}}
users:
- name: flannel
  user: {{tokenFile: token}}
""")
    cfg = load_client_config("", str(kubeconfig), {})
    async with KubeClient(cfg, request_timeout=5) as client:
        assert (await client.get_node("node-00005"))["metadata"]["name"] == "node-00005"


async def test_kubeconfig_with_inline_client_certificate_works_end_to_end(tls_api: FakeKubeApi, kube_tls: TlsDir,
                                                                          tmp_path: Path) -> None:
    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""
apiVersion: v1
kind: Config
current-context: c
contexts: [{{name: c, context: {{cluster: k, user: u}}}}]
clusters: [{{name: k, cluster: {{server: "https://10.255.255.1:1", certificate-authority-data: {b64(kube_tls.ca)}}}}}]
users: [{{name: u, user: {{client-certificate-data: {b64(kube_tls.client_cert)},
                           client-key-data: {b64(kube_tls.client_key)}}}}}]
""")
    cfg = load_client_config(tls_api.url, str(kubeconfig), {})  # --kube-api-url replaces the server
    async with KubeClient(cfg, request_timeout=5) as client:
        assert (await client.get_node("node-00006"))["metadata"]["name"] == "node-00006"


async def test_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load the CA certificate"):
        KubeClient(KubeClientConfig(server="https://127.0.0.1:1", ca_file=str(bad)))
    await asyncio.sleep(0)
