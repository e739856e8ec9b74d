"""The ``flanneld`` console script: process-wide memory settings, then the daemon.

flanneld must fit the 50 MiB memory limit of upstream's manifest, and Python starts far closer to it than Go.
Two process-wide settings must happen before anything else is imported, which is why they live here and
not in ``main``:

* In etcd mode Python's ``ssl`` module is kept out unless etcd is reached over TLS. asyncio imports it
  eagerly (loading OpenSSL, about 4 MiB of RSS), yet plain-HTTP etcd never needs it. asyncio works without
  ``ssl`` by design (it supports Pythons built without it). Kube mode talks HTTPS to the API server itself,
  so it keeps ``ssl`` (and never loads an etcd client).
* glibc is limited to one malloc arena, so threads (gRPC's, with ``FLANNEL_ETCD_CLIENT=grpc``) do not each grow
  their own heap, and large blocks are always mapped on their own, so that freeing them gives them back.
  Where the environment already sets both as glibc tunables (``GLIBC_TUNABLES``: the image and the systemd
  unit do), they hold from the first allocation and ``ctypes`` (0.4 MiB) is not loaded to set them.

The JSON-gateway etcd client (the default since issue #16) has no TLS stack of its own: with an ``https://``
endpoint or a client certificate it needs ``ssl``, loaded before asyncio. The gRPC client
(``FLANNEL_ETCD_CLIENT=grpc``) brings its own TLS, so ``ssl`` stays out with it whatever the endpoints.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 * 1024
"""Blocks from this size on get their own mapping, returned to the system when freed (see ``_limit_memory``)."""
MALLOC_TUNABLES = ("glibc.malloc.arena_max=1", f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}")
"""``_limit_memory``'s settings in ``GLIBC_TUNABLES`` form (colon-separated), read by glibc at process start."""


def _tunables_set(environ: Mapping[str, str]) -> bool:
    """Whether glibc started with ``MALLOC_TUNABLES`` in effect (the last setting of a name wins)."""
    settings = dict(item.partition("=")[::2] for item in environ.get("GLIBC_TUNABLES", "").split(":") if item)
    return all(settings.get(name) == value for name, _, value in (t.partition("=") for t in MALLOC_TUNABLES))


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


def _flag(argv: list[str], environ: Mapping[str, str], name: str) -> str:
    """The last value of ``--name=value``/``--name value`` in ``argv``, else ``FLANNELD_NAME`` (a pre-scan)."""
    value = environ.get("FLANNELD_" + name.upper().replace("-", "_"), "")
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        flag, eq, rest = arg.lstrip("-").partition("=")
        if arg.startswith("-") and flag == name:
            value = rest if eq else (argv[i + 1] if i + 1 < len(argv) else "")
    return value


def _gateway_needs_ssl(argv: list[str], environ: Mapping[str, str]) -> bool:
    """Whether the JSON-gateway etcd client (the default) is chosen and will speak TLS (``https://``, or a client
    certificate, which bare endpoints use too); over-approximating only costs the 4 MiB that ``ssl`` would cost
    anyway."""
    if environ.get("FLANNEL_ETCD_CLIENT", "") not in ("", "gateway"):
        return False
    return "https://" in _flag(argv, environ, "etcd-endpoints") or bool(_flag(argv, environ, "etcd-certfile"))


def _limit_memory(kube: bool, environ: Mapping[str, str]) -> None:
    if not kube:
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    if _tunables_set(environ):
        return
    import ctypes

    try:
        # The process' own symbols, libc's among them; ``ctypes.util.find_library`` would import 1.3 MiB of
        # modules (shutil, bz2, lzma, tempfile) and run ``ldconfig`` to find the same library.
        libc = ctypes.CDLL(None)
        libc.mallopt(M_ARENA_MAX, 1)
        # A fixed threshold: glibc's default one rises to the size of the largest block freed (asyncio's
        # 256 KiB socket reads, a page of an etcd listing), after which such blocks come from the heap, and
        # a heap fragmented by them does not shrink. Measured at 5000 peers with TLS: -0.2 MiB peak holding
        # them, -0.6 MiB after a full re-list (docs/performance.md).
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def run() -> None:
    """Entry point of the ``flanneld`` script."""
    argv = sys.argv[1:]
    _limit_memory(_kube_mode(argv, os.environ) or _gateway_needs_ssl(argv, os.environ), os.environ)
    from flannel.daemon.main import entry

    entry()
