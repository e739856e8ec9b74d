"""A real, throw-away etcd server for integration tests.

Starts Debian's ``/usr/bin/etcd`` on a loopback address (127.0.0.1 unless told) with free ports and a
temporary data directory, optionally with TLS and client-certificate authentication (certificates made here
with ``cryptography``; servers on other addresses can share one CA), and stops it by PID. The store under
test talks gRPC to it exactly as it would to a production cluster.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS-enabled server and one client."""

    ca: Path
    """CA certificate that signed both the server and the client certificate."""
    ca_key: Path
    """The CA's private key, so that servers on other addresses can get certificates from the same CA."""
    server_cert: Path
    """Server certificate for the names given to ``make_tls_files`` (127.0.0.1 and localhost by default)."""
    server_key: Path
    """Server private key."""
    client_cert: Path
    """Client certificate (CN ``root``)."""
    client_key: Path
    """Client private key."""


def make_tls_files(
    directory: Path, names: Sequence[str] = ("localhost", "127.0.0.1"), ca: TlsFiles | None = None
) -> TlsFiles:
    """Generate a server certificate whose SAN holds exactly ``names`` (IP addresses or DNS names), and a
    client certificate, both signed by ``ca``'s CA, or by a new CA when ``ca`` is ``None``."""
    now = datetime.datetime.now(datetime.UTC)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def build(
        subject: str,
        pub: ec.EllipticCurvePrivateKey,
        issuer: x509.Name | None,
        signer: ec.EllipticCurvePrivateKey,
    ) -> x509.CertificateBuilder:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(pub.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flannel-test-ca")])
    if ca is not None:
        ca_cert = x509.load_pem_x509_certificate(ca.ca.read_bytes())
        loaded = serialization.load_pem_private_key(ca.ca_key.read_bytes(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_key = loaded
    else:
        ca_key = key()
        ca_cert = (
            build("flannel-test-ca", ca_key, None, ca_key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    server_key = key()
    server = (
        build(names[0], server_key, ca_name, ca_key)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    client_key = key()
    client = (
        build("root", client_key, ca_name, ca_key)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(
        ca=directory / "ca.pem",
        ca_key=directory / "ca-key.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )

    def write_key(path: Path, k: ec.EllipticCurvePrivateKey) -> None:
        path.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    write_key(files.ca_key, ca_key)
    write_key(files.server_key, server_key)
    write_key(files.client_key, client_key)
    return files


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now on ``host`` (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdServer:
    """One running etcd member; ``stop()`` kills it and removes its data."""

    workdir: Path
    """Temporary directory holding the data dir and certificates; removed on stop."""
    client_port: int
    """Port of the client URL on ``host``."""
    tls: TlsFiles | None = None
    """Certificates when the server requires TLS client certificates."""
    host: str = "127.0.0.1"
    """Loopback address the server listens on (client and peer URLs)."""
    proc: subprocess.Popen[bytes] | None = None
    """The etcd process."""
    user: tuple[str, str] | None = None
    """(user, password) once ``enable_auth`` ran; used by ``etcdctl``."""
    cmd: tuple[str, ...] = ()
    """The command line that started the process, so that ``restart`` can run it again on the same data."""

    @property
    def endpoint(self) -> str:
        """The client URL as flanneld takes it (``http://127.0.0.1:P`` or ``https://...``)."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    def etcdctl(self, *args: str, check: bool = True, stdin: bytes | None = None) -> str:
        """Run ``etcdctl`` (API v3) against this server and return its stdout."""
        cmd = [ETCDCTL, f"--endpoints={self.endpoint}", "--command-timeout=5s"]
        if self.tls:
            cmd += [
                f"--cacert={self.tls.ca}",
                f"--cert={self.tls.client_cert}",
                f"--key={self.tls.client_key}",
            ]
        if self.user:
            cmd.append(f"--user={self.user[0]}:{self.user[1]}")
        env = {**os.environ, "ETCDCTL_API": "3"}
        res = subprocess.run([*cmd, *args], capture_output=True, input=stdin, env=env, timeout=20, check=False)
        if check and res.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {res.stderr.decode().strip()}")
        return res.stdout.decode()

    def revision(self) -> int:
        """The server's current revision."""
        out = json.loads(self.etcdctl("endpoint", "status", "-w", "json"))
        return int(out[0]["Status"]["header"]["revision"])

    def compact(self) -> int:
        """Compact away all history up to the current revision; return that revision."""
        rev = self.revision()
        self.etcdctl("compaction", "--physical", str(rev))
        return rev

    def ttl_of(self, key: str) -> int | None:
        """Remaining TTL of ``key``'s etcd lease; ``None`` when the key has no lease."""
        out = json.loads(self.etcdctl("get", key, "-w", "json"))
        lease = int(out["kvs"][0].get("lease", 0))
        if not lease:
            return None
        ttl = json.loads(self.etcdctl("lease", "timetolive", f"{lease:x}", "-w", "json"))
        return int(ttl["ttl"])

    def enable_auth(self, user: str = "root", password: str = "pw") -> None:
        """Create the root user and turn authentication on."""
        self.etcdctl("user", "add", f"{user}:{password}")
        if user == "root":
            with contextlib.suppress(RuntimeError):
                self.etcdctl("role", "add", "root")
            self.etcdctl("user", "grant-role", "root", "root")
        self.etcdctl("auth", "enable")
        self.user = (user, password)

    def halt(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process with ``sig`` (an outage), keeping its data for ``restart``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def restart(self, timeout: float = 20.0) -> None:
        """Start the process again on the same data, address and ports; wait until it is healthy."""
        assert self.proc is None and self.cmd, "restart() needs a halted server"
        _launch(self, timeout)

    def restore(self, snapshot: Path) -> None:
        """Halt, replace the data with ``snapshot`` (``etcdctl snapshot restore``), and start again."""
        self.halt()
        data = self.workdir / "data"
        shutil.rmtree(data)
        peer = next(arg.split("=", 1)[1] for arg in self.cmd if arg.startswith("--listen-peer-urls="))
        res = subprocess.run(
            [ETCDCTL, "snapshot", "restore", str(snapshot), f"--data-dir={data}", "--name=test",
             f"--initial-cluster=test={peer}", f"--initial-advertise-peer-urls={peer}"],
            capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=30, check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"snapshot restore failed: {res.stderr.decode().strip()}")
        self.restart()

    def stop(self) -> None:
        """Terminate the process (kill after 5 s) and remove the working directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _healthy(self) -> bool:
        context: ssl.SSLContext | None = None
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1, context=context) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False


def start_etcd(
    tls: bool = False, timeout: float = 20.0, host: str = "127.0.0.1", ca: TlsFiles | None = None
) -> EtcdServer:
    """Start an etcd member on the loopback address ``host`` and wait until it reports healthy.

    With ``tls``, the server certificate names 127.0.0.1 and localhost on the default address, and only
    ``host`` on any other (like a kubeadm member's); ``ca`` (another server's files) makes it share that CA.
    """
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"test etcd servers listen on loopback addresses only, not {host}")
    workdir = Path(tempfile.mkdtemp(prefix="flannel-etcd-"))
    names = ("localhost", "127.0.0.1") if host == "127.0.0.1" else (host,)
    tls_files = make_tls_files(workdir, names, ca) if tls or ca else None
    server = EtcdServer(workdir, free_port(host), tls_files, host=host)
    peer = f"http://{host}:{free_port(host)}"
    cmd = [
        ETCD,
        "--name=test",
        f"--data-dir={workdir / 'data'}",
        f"--listen-client-urls={server.endpoint}",
        f"--advertise-client-urls={server.endpoint}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=test={peer}",
        "--logger=zap",
        "--log-level=error",
        "--log-outputs=stderr",
    ]
    if server.tls:
        cmd += [
            f"--cert-file={server.tls.server_cert}",
            f"--key-file={server.tls.server_key}",
            f"--trusted-ca-file={server.tls.ca}",
            "--client-cert-auth",
        ]
    server.cmd = tuple(cmd)
    _launch(server, timeout)
    return server


def _launch(server: EtcdServer, timeout: float) -> None:
    """Start ``server.cmd`` and wait until it answers healthy; stop and raise with its log when it does not."""
    log = (server.workdir / "etcd.log").open("ab")
    try:
        server.proc = subprocess.Popen(server.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    while not server._healthy():
        if server.proc.poll() is not None or time.monotonic() > deadline:
            output = (server.workdir / "etcd.log").read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"etcd did not become healthy: {output}")
        time.sleep(0.05)
