"""The node's WireGuard private key: kept in a file across restarts, never printed.

Upstream's rules (spec §10.6): ``WIREGUARD_KEY_FILE`` (default ``/run/flannel/wgkey``) holds the key as 44
characters of base64 with no newline; when the file is missing a key is generated, the directory is made
0755 and the file 0400. One difference: a file that exists but does not hold a key is refused with an error
that names it, and left as it is. Regenerating would silently change the node's identity (every peer would
drop it until its lease is rewritten), and the file may be an operator's mistake worth seeing.

The public key is derived here with X25519 (RFC 7748) in pure Python: one scalar multiplication at start-up
costs a few milliseconds, where a crypto library would cost megabytes of resident memory for the life of
the daemon (the measurement is in docs/performance.md).
"""

from __future__ import annotations

import base64
import logging
import os

from flannel.backend.wireguard_config import KEY_LEN
from flannel.errors import FlannelError
from flannel.secret import Secret

log = logging.getLogger(__name__)

_P = 2**255 - 19
_A24 = 121665
_BASE_POINT = 9


def clamp(scalar: bytes) -> bytes:
    """A private key as WireGuard uses it: low 3 bits cleared, bit 255 cleared, bit 254 set."""
    raw = bytearray(scalar)
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return bytes(raw)


def x25519(scalar: bytes, u: bytes) -> bytes:
    """RFC 7748's X25519 function: the Montgomery ladder over Curve25519."""
    k = int.from_bytes(clamp(scalar), "little")
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P, (x2 - z2) % _P
        aa, bb = a * a % _P, b * b % _P
        e = (aa - bb) % _P
        c, d = (x3 + z3) % _P, (x3 - z3) % _P
        da, cb = d * a % _P, c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


def public_key(private: Secret[bytes]) -> bytes:
    """The public key of ``private`` (what ``wg pubkey`` prints, before base64)."""
    return x25519(private.reveal(), _BASE_POINT.to_bytes(32, "little"))


def generate_private_key() -> Secret[bytes]:
    """A fresh clamped private key, as ``wg genkey`` and Go's ``wgtypes.GeneratePrivateKey`` make one."""
    return Secret(clamp(os.urandom(KEY_LEN)))


def b64(raw: bytes) -> str:
    """A key's text form: standard base64 with padding, 44 characters."""
    return base64.b64encode(raw).decode("ascii")


def load_or_create(path: str) -> Secret[bytes]:
    """The private key in ``path``; a new one written there (0400, directory 0755) when the file is missing.

    Raises ``FlannelError`` naming the file when it exists but cannot be read or holds no key: it is never
    overwritten.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except FileNotFoundError:
        return _create(path)
    except OSError as exc:
        raise FlannelError(f"cannot read the wireguard key file {path}: {exc.strerror}") from None
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != KEY_LEN:
        raise FlannelError(
            f"the wireguard key file {path} does not hold a base64 WireGuard key ({len(data)} bytes read); "
            "flanneld does not overwrite it: fix or delete it (a new key is generated when it is missing)")
    return Secret(raw)


def _create(path: str) -> Secret[bytes]:
    key = generate_private_key()
    directory = os.path.dirname(path)
    try:
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        # O_EXCL: a file that appeared meanwhile (another flanneld) is not overwritten; 0400 from the start,
        # so the key is never readable by others, not even between create and chmod.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
    except FileExistsError:
        return load_or_create(path)
    except OSError as exc:
        raise FlannelError(f"cannot write the wireguard key file {path}: {exc.strerror}") from None
    try:
        os.write(fd, b64(key.reveal()).encode("ascii"))
        os.fchmod(fd, 0o400)  # the umask may have narrowed it; upstream chmods to exactly 0400
    finally:
        os.close(fd)
    log.info("generated a new wireguard private key in %s", path)
    return key
