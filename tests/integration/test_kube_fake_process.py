"""The fake API server as a process (``python -m tests.kube_fake``), as end-to-end tests will run it: ready line,
nodes at start, HTTP hooks, HTTPS with a generated CA, inside a network namespace, clean stop by PID."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from flannel.kube.client import KubeClient
from flannel.kube.config import KubeClientConfig
from flannel.kube.errors import KubeUnavailableError
from tests.kube_fake import make_node
from tests.kube_fake.process import ROOT, FakeKubeProcess, start_fake_process
from tests.netns import (
    NetNS,
    netns_fixture,  # noqa: F401
)


@pytest.fixture
def fake_proc(tmp_path: Path) -> Iterator[FakeKubeProcess]:
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps({"kind": "NodeList", "items": [make_node("from-file", index=900)]}))
    proc = start_fake_process(args=["--token", "T", "--generate-nodes", "25", "--nodes-file", str(nodes),
                                    "--bookmark-interval", "0.2"])
    yield proc
    proc.stop()


async def test_process_serves_nodes_from_file_and_generated(fake_proc: FakeKubeProcess) -> None:
    async with KubeClient(KubeClientConfig(server=fake_proc.url, token="T"), request_timeout=5) as client:
        names = [n["metadata"]["name"] async for page in client.list_nodes(limit=10) for n in page]
    assert names[0] == "from-file" and len(names) == 26
    counts = fake_proc.hook("requests")
    assert counts["counts"] == {"list nodes": 3}


async def test_process_hooks_fail_requests_and_drop_watches(fake_proc: FakeKubeProcess) -> None:
    async with KubeClient(KubeClientConfig(server=fake_proc.url, token="T"), request_timeout=5) as client:
        fake_proc.hook("fail", count=1, code=503)
        with pytest.raises(KubeUnavailableError):
            await client.get_node("from-file")
        rv = fake_proc.hook("state")["resourceVersion"]
        with pytest.raises(KubeUnavailableError, match="watch connection lost"):
            async with contextlib.aclosing(client.watch_nodes(rv, timeout_seconds=30)) as events:
                async for kind, _ in events:
                    assert kind == "BOOKMARK"
                    assert fake_proc.hook("drop-watches")["dropped"] == 1


def test_process_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    proc = start_fake_process()
    proc.stop()
    assert proc.proc.returncode == 0


async def test_process_serves_https_with_a_generated_ca(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    proc = start_fake_process(args=["--tls-dir", str(tls), "--generate-nodes", "3"])
    try:
        assert proc.url.startswith("https://127.0.0.1:")
        cfg = KubeClientConfig(server=proc.url, ca_file=str(tls / "ca.crt"))
        async with KubeClient(cfg, request_timeout=5) as client:
            assert (await client.get_node("node-00002"))["metadata"]["name"] == "node-00002"
    finally:
        proc.stop()


CLIENT_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from flannel.kube.client import KubeClient
    from flannel.kube.config import KubeClientConfig

    async def main():
        cfg = KubeClientConfig(server=sys.argv[1], ca_file=sys.argv[2], token="T")
        async with KubeClient(cfg, request_timeout=5) as client:
            node = await client.patch_node_status("node-00001", {"metadata": {"annotations": {"in": "netns"}}})
            print(node["metadata"]["annotations"]["in"])

    asyncio.run(main())
""")


@pytest.mark.root
def test_process_runs_inside_a_network_namespace(netns: NetNS, tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    proc = start_fake_process("198.18.0.1:6443", netns=netns.name,
                              args=["--tls-dir", str(tls), "--token", "T", "--generate-nodes", "2"])
    try:
        assert proc.url == "https://198.18.0.1:6443"
        out = subprocess.run(["ip", "netns", "exec", netns.name, sys.executable, "-c", CLIENT_SCRIPT, proc.url,
                              str(tls / "ca.crt")], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "netns"
    finally:
        proc.stop()
