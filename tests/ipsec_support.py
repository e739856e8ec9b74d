"""What the ipsec tests share: a charon configuration for simulated hosts, a VICI reader, the ESP probe.

Each simulated host has its own ``/run`` (``Cluster(private_mounts=True)``), hence its own
``/run/charon.vici`` and ``charon.pid``; the test reads the socket from outside at ``holder.run_dir``. charon is
pointed at ``STRONGSWAN_CONF`` (inherited from flanneld's environment): a file listing exactly the plugins
needed, so that the machine's ``/etc/strongswan.d`` (which may load plugins that want more of the host, or log
to syslog) plays no part.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PSK = "flannel-ipsec-test-psk-" + "0123456789abcdef" * 5 + "end"
"""A test PSK of more than 96 characters; tests also check that it never reaches a log."""
assert len(PSK) >= 96

PLUGINS = "random nonce aes sha1 sha2 hmac kdf gmp openssl gcm kernel-netlink socket-default vici"
"""What charon needs here: IKE (aes256-sha256-modp4096: aes sha2 hmac kdf gmp), the default ESP proposal's
AES-GCM and ECP-256 (openssl gcm), the kernel interface, the IKE sockets and VICI."""

STRONGSWAN_CONF = f"""\
charon {{
  load_modular = no
  load = {PLUGINS}
  install_routes = no
  filelog {{
    stderr {{
      default = 1
    }}
  }}
}}
"""

LIBIPSEC_CONF = STRONGSWAN_CONF.replace("kernel-netlink", "kernel-libipsec kernel-netlink").replace(
    "install_routes = no", "install_routes = yes")
"""For ``UserspaceESP``: ESP in charon's kernel-libipsec (a TUN device, ``ipsec0``), routes to it in table 220."""

ESP_MISSING = "the kernel has no ESP (ip xfrm state add ... proto esp: Requested type not found)"


def write_strongswan_conf(directory: Path, text: str = STRONGSWAN_CONF) -> Path:
    path = directory / "strongswan.conf"
    path.write_text(text)
    return path


@contextlib.contextmanager
def vici_session(run_dir: Path) -> Iterator[Any]:
    """A VICI session to the charon of the host whose ``/run`` is ``run_dir``."""
    import vici

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(str(run_dir / "charon.vici"))
        yield vici.Session(sock)
    finally:
        sock.close()


def text(value: Any) -> Any:
    """A VICI answer with bytes decoded, recursively (for asserts and messages)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, dict):
        return {k: text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [text(v) for v in value]
    return value


def esp_unavailable(netns: str) -> str | None:
    """Why the kernel cannot do ESP, probed in ``netns`` with a throwaway SA; None when it can."""
    add = ["ip", "netns", "exec", netns, "ip", "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2",
           "proto", "esp", "spi", "0x4242", "mode", "tunnel", "aead", "rfc4106(gcm(aes))",
           "0x" + "11" * 20, "128"]
    r = subprocess.run(add, capture_output=True, text=True, timeout=10)
    if r.returncode == 0:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "xfrm", "state", "delete", "src", "192.0.2.1", "dst",
                        "192.0.2.2", "proto", "esp", "spi", "0x4242"], capture_output=True, timeout=10)
        return None
    if "Requested type not found" in r.stderr:
        return ESP_MISSING
    return f"the kernel refused an ESP SA: {r.stderr.strip()}"


def require_charon() -> None:
    """Skip without root; fail when charon is missing, looked up as flanneld looks it up (upstream's list)."""
    import pytest

    from flannel.backend.ipsec_charon import CharonError, find_charon
    from tests.e2e.conftest import _skip_reason

    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        find_charon()
    except CharonError:
        pytest.fail("charon is missing (make deps installs strongswan-charon)")
