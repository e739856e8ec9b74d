"""The flanneld executable, in a network namespace at ``-v=10``: no credential in its log, /healthz, /readyz or
/metrics; a password on the command line is warned about; holding one makes the process non-dumpable; and the
health port survives more idle connections than the process has file descriptors.

etcd mode runs against an endpoint that refuses (so flanneld keeps retrying and its health server keeps
answering); kube mode against the fake API server (tests/kube_fake), which rejects the token flanneld sends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flannel.netlink import nsenter
from tests.kube_fake.process import start_fake_process
from tests.netns import NetNS, netns_fixture  # noqa: F401
from tests.waiting import wait_until_sync

pytestmark = pytest.mark.root

FLANNELD = str(Path(sys.executable).parent / "flanneld")
PORT = 10257
PASSWORD = "pw-Zq81-etcd"
URL_PASSWORD = "pw-Kx77-url"
KEY_MATERIAL = "key-Wd19-material"
TOKEN = "tok-Rb55-bearer"
SECRETS = (PASSWORD, URL_PASSWORD, KEY_MATERIAL, TOKEN)


def get(netns: NetNS, path: str) -> tuple[int, bytes]:
    """One request to flanneld's health port from inside ``netns``."""
    with nsenter.entered(netns.name), socket.create_connection(("127.0.0.1", PORT), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@contextlib.contextmanager
def flanneld(netns: NetNS, tmp_path: Path, args: list[str], env: dict[str, str],
             prefix: tuple[str, ...] = ()) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = tmp_path / "flanneld.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", netns.name, *prefix, FLANNELD, "-v=10",
                                 f"--subnet-file={tmp_path / 'subnet.env'}", *args],
                                env={"PATH": os.environ["PATH"], **env}, stdout=out, stderr=out)
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def etcd_args(tmp_path: Path) -> list[str]:
    key, cert = tmp_path / "client.key", tmp_path / "client.crt"
    key.write_text(f"-----BEGIN PRIVATE KEY-----\n{KEY_MATERIAL}\n-----END PRIVATE KEY-----\n")
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot-a-cert\n-----END CERTIFICATE-----\n")
    return [f"--etcd-endpoints=https://root:{URL_PASSWORD}@127.0.0.1:1", "--etcd-username=root",
            f"--etcd-keyfile={key}", f"--etcd-certfile={cert}", f"--healthz-port={PORT}", "--healthz-ip=127.0.0.1"]


NO_CAPS = ("setpriv", "--inh-caps=-all", "--bounding-set=-all", "--")
"""Run as root without any capability: ptrace access checks then hinge on the target being dumpable (a target
with more capabilities than the caller would need CAP_SYS_PTRACE anyway, so flanneld runs capless too; it needs
none before it reaches the datastore)."""


def environ_readable_without_cap_sys_ptrace(pid: int) -> bool:
    """Whether capless root may read /proc/<pid>/environ: yes for a dumpable capless root process, no otherwise."""
    r = subprocess.run([*NO_CAPS, "cat", f"/proc/{pid}/environ"], capture_output=True, timeout=10)
    return r.returncode == 0


@pytest.mark.parametrize("via", ["env", "argv"])
def test_etcd_credentials_appear_in_no_log_line_nor_http_answer(netns: NetNS, tmp_path: Path, via: str) -> None:
    args, env = etcd_args(tmp_path), {}
    if via == "env":
        env["FLANNELD_ETCD_PASSWORD"] = PASSWORD
    else:
        args.append(f"--etcd-password={PASSWORD}")
    with flanneld(netns, tmp_path, args, env, prefix=NO_CAPS) as (proc, log):
        wait_until_sync(lambda: log.read_text().count("failed to retrieve network config") >= 2
                        or proc.poll() is not None, "two failed datastore attempts", timeout=30)
        assert proc.poll() is None, log.read_text()
        answers = [get(netns, path) for path in ("/healthz", "/readyz", "/metrics")]
        assert [code for code, _ in answers] == [200, 503, 200]
        control = subprocess.Popen([*NO_CAPS, "sleep", "30"])
        try:
            assert environ_readable_without_cap_sys_ptrace(control.pid)  # the probe works on a dumpable process
            assert not environ_readable_without_cap_sys_ptrace(proc.pid)  # flanneld holds a password: not dumpable
        finally:
            control.kill()
            control.wait()
    assert proc.returncode == 0
    text = log.read_text()
    for secret in SECRETS:
        assert secret not in text
        for _, body in answers:
            assert secret.encode() not in body
    assert "https://127.0.0.1:1: user info in the URL is ignored" in text
    assert "process marked non-dumpable" in text
    assert ("--etcd-password is on the command line" in text) == (via == "argv")
    assert not (tmp_path / "subnet.env").exists()


def test_kube_token_appears_in_no_log_line_when_the_api_server_rejects_it(netns: NetNS, tmp_path: Path) -> None:
    fake = start_fake_process("127.0.0.1:6443", netns=netns.name, args=["--token", "the-right-one"])
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(f"""
current-context: c
contexts: [{{name: c, context: {{cluster: k, user: u}}}}]
clusters: [{{name: k, cluster: {{server: "http://flannel:{URL_PASSWORD}@127.0.0.1:6443"}}}}]
users: [{{name: u, user: {{token: {TOKEN}}}}}]
""")
        netconf = tmp_path / "net-conf.json"
        netconf.write_text('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
        with flanneld(netns, tmp_path, ["--kube-subnet-mgr", f"--kubeconfig-file={kubeconfig}",
                                        f"--net-config-path={netconf}"], {"NODE_NAME": "node-1"}) as (proc, log):
            proc.wait(60)
    finally:
        fake.stop()
    text = log.read_text()
    assert proc.returncode == 1 and "401 Unauthorized" in text, text
    for secret in SECRETS:
        assert secret not in text


def answers(netns: NetNS, path: str) -> bool:
    try:
        return get(netns, path)[0] == 200
    except OSError:  # not listening yet
        return False


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_beyond_the_bound_neither_exhaust_fds_nor_block_healthz(netns: NetNS,
                                                                                 tmp_path: Path) -> None:
    from flannel.daemon.health import MAX_CONNECTIONS

    fd_limit, idle = 200, 300  # more idle connections than flanneld may open files
    with flanneld(netns, tmp_path, ["--etcd-endpoints=http://127.0.0.1:1", f"--healthz-port={PORT}",
                                    "--healthz-ip=127.0.0.1"], {},
                  prefix=("prlimit", f"--nofile={fd_limit}:{fd_limit}", "--")) as (proc, log):
        wait_until_sync(lambda: answers(netns, "/healthz"), "a first answer", timeout=30)
        baseline = fd_count(proc.pid)
        clients: list[socket.socket] = []
        try:
            with nsenter.entered(netns.name):
                for _ in range(idle):
                    clients.append(socket.create_connection(("127.0.0.1", PORT), timeout=10))
            assert get(netns, "/healthz") == (200, b"flanneld is running")
            assert proc.poll() is None
            bound = baseline + MAX_CONNECTIONS + 4
            wait_until_sync(lambda: fd_count(proc.pid) <= bound, f"flanneld's fds to settle at most {bound}",
                            timeout=30)
        finally:
            for c in clients:
                c.close()
        assert get(netns, "/readyz")[0] == 503
    text = log.read_text()
    assert text.count("connections open; dropped the one idle the longest") == 1  # rate-limited
    assert "Too many open files" not in text
