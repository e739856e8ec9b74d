"""A smaller read buffer for asyncio's TLS connections, because each one costs a quarter MiB of RSS otherwise.

asyncio's TLS transport (``asyncio.sslproto.SSLProtocol``) allocates and zero-fills a read buffer of its class
attribute ``max_size``, 256 KiB, for every connection, so every page of it is resident: flanneld keeps a few
connections to etcd (a small pool plus one per watch) or to the API server, and with TLS they measured
+0.22 MiB each (``bench/bench_tls_cost.py``). One TLS record is at most 16 KiB, so a 16 KiB buffer still takes
a whole record per read; large answers (a 1000-key page is ~330 KB) cost a few more reads, no more memory.

The attribute is process-wide, and flanneld's TLS connections are all its own (etcd or the API server), so it
is set once, when the first TLS context is built. A Python without the attribute is left alone.
"""

from __future__ import annotations

TLS_READ_BUFFER = 16 * 1024
"""Bytes asyncio's TLS transport reads from the socket at a time: one maximal TLS record."""


def shrink_tls_read_buffer() -> None:
    """Make asyncio's TLS connections opened from now on use a ``TLS_READ_BUFFER`` read buffer."""
    import asyncio.sslproto

    proto = asyncio.sslproto.SSLProtocol
    if isinstance(getattr(proto, "max_size", None), int) and proto.max_size > TLS_READ_BUFFER:
        proto.max_size = TLS_READ_BUFFER
