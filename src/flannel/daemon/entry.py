"""The ``flanneld`` console script: process-wide memory settings, then the daemon.

flanneld must fit the 50 MiB memory limit of upstream's manifest, and Python starts far closer to it than Go.
Two process-wide settings must happen before anything else is imported, which is why they live here and
not in ``main``:

* In etcd mode Python's ``ssl`` module is kept out. asyncio imports it eagerly (loading OpenSSL, about 4 MiB
  of RSS), yet flanneld never uses it there: etcd TLS runs inside gRPC's own TLS stack. asyncio works without
  ``ssl`` by design (it supports Pythons built without it). Kube mode talks HTTPS to the API server itself,
  so it keeps ``ssl`` (and never loads gRPC).
* glibc is limited to one malloc arena, so gRPC's threads do not each grow their own heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping

M_ARENA_MAX = -8


def _kube_mode(argv: list[str], environ: Mapping[str, str]) -> bool:
    """Whether ``--kube-subnet-mgr`` is on, by Go's flag syntax (``-x``, ``--x``, ``--x=true``) or the env.

    A cheap pre-scan: the real parse comes later, and a flag spelt wrongly fails there.
    """
    on = environ.get("FLANNELD_KUBE_SUBNET_MGR", "").lower() in ("1", "t", "true")
    for arg in argv:
        if arg == "--":
            break
        name, eq, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == "kube-subnet-mgr":
            on = not eq or value.lower() in ("1", "t", "true")
    return on


def _limit_memory(kube: bool) -> None:
    if not kube:
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_ARENA_MAX, 1)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def run() -> None:
    """Entry point of the ``flanneld`` script."""
    _limit_memory(_kube_mode(sys.argv[1:], os.environ))
    from flannel.daemon.main import entry

    entry()
