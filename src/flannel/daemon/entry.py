"""The ``flanneld`` console script: process-wide memory settings, then the daemon.

flanneld must fit the 50 MiB memory limit of upstream's manifest, and Python starts far closer to it than Go.
Two process-wide settings must happen before anything else is imported, which is why they live here and
not in ``main``:

* Python's ``ssl`` module is kept out. asyncio imports it eagerly (loading OpenSSL, about 4 MiB of RSS), yet
  flanneld never uses it: etcd TLS runs inside gRPC's own TLS stack. asyncio works without ``ssl`` by design
  (it supports Pythons built without it). A feature that needs ``ssl`` (the Kubernetes client) must drop
  this and pay for it.
* glibc is limited to one malloc arena, so gRPC's threads do not each grow their own heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_ARENA_MAX = -8


def _limit_memory() -> None:
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_ARENA_MAX, 1)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def run() -> None:
    """Entry point of the ``flanneld`` script."""
    _limit_memory()
    from flannel.daemon.main import entry

    entry()
