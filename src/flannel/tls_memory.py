"""Less memory for TLS: a smaller read buffer for asyncio's TLS connections (a quarter MiB of RSS each otherwise).

asyncio's TLS transport (``asyncio.sslproto.SSLProtocol``) allocates and zero-fills a read buffer of its class
attribute ``max_size``, 256 KiB, for every connection, so every page of it is resident: flanneld keeps a few
connections to etcd (a small pool plus one per watch) or to the API server, and with TLS they measured
+0.22 MiB each (``bench/bench_tls_cost.py``). One TLS record is at most 16 KiB, so a 16 KiB buffer still takes
a whole record per read; large answers (a 1000-key page is ~330 KB) cost a few more reads, no more memory.

The attribute is process-wide, and flanneld's TLS connections are all its own (etcd or the API server), so it
is set once, when the first TLS context is built. A Python without the attribute is left alone.

``client_context`` also keeps the ``idna`` codec (0.3 MiB) out for the ASCII server names every deployment uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

TLS_READ_BUFFER = 16 * 1024
"""Bytes asyncio's TLS transport reads from the socket at a time: one maximal TLS record."""


_context_class: type[ssl.SSLContext] | None = None
"""``client_context``'s class, made once ``ssl`` may be imported."""


def shrink_tls_read_buffer() -> None:
    """Make asyncio's TLS connections opened from now on use a ``TLS_READ_BUFFER`` read buffer."""
    import asyncio.sslproto

    proto = asyncio.sslproto.SSLProtocol
    if isinstance(getattr(proto, "max_size", None), int) and proto.max_size > TLS_READ_BUFFER:
        proto.max_size = TLS_READ_BUFFER


def client_context() -> ssl.SSLContext:
    """A bare TLS client context (``PROTOCOL_TLS_CLIENT``: certificates and host names verified) that encodes an
    ASCII server name without Python's ``idna`` codec.

    ``ssl`` passes every server name through ``str.encode("idna")``, whose module loads ``stringprep`` and
    ``unicodedata`` (0.3 MiB resident) at the first connection, though an ASCII name (an IP address, a DNS
    name) comes out unchanged. The ASCII case is checked here as the codec checks it; any other name still goes
    through the codec.
    """
    import ssl

    global _context_class
    if _context_class is None:
        class _Context(ssl.SSLContext):
            def _encode_hostname(self, hostname: object) -> object:
                if isinstance(hostname, str) and hostname.isascii():
                    return ascii_server_name(hostname)
                return super()._encode_hostname(hostname)  # type: ignore[misc]

        _context_class = _Context
    return _context_class(ssl.PROTOCOL_TLS_CLIENT)


def ascii_server_name(name: str) -> str:
    """``name.encode("idna").decode()`` for an ASCII ``name``: the name itself, once its labels are checked."""
    labels = name.split(".")
    for label in labels[:-1]:
        if not 0 < len(label) < 64:
            raise UnicodeError("label empty or too long")
    if len(labels[-1]) >= 64:
        raise UnicodeError("label too long")
    return name
