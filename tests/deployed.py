"""How flanneld runs where it is deployed: the environment the image (``ENV`` in the Dockerfile) and the systemd
unit (``deploy/systemd/flanneld.service``) give it.

End-to-end tests and benchmarks start flanneld with it, so that what they check and measure is what nodes
run; ``tests/unit/test_deploy_image.py`` keeps the Dockerfile and the unit in step with it.
"""

from __future__ import annotations

DEPLOYED_ENV: dict[str, str] = {
    "PYTHONOPTIMIZE": "2",
    "GLIBC_TUNABLES": "glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=65536",
}
"""``PYTHONOPTIMIZE=2``: no docstrings (nor asserts) in the loaded code, 1 MiB less RSS. ``GLIBC_TUNABLES``:
flanneld's malloc settings (``flannel.daemon.entry``) from the first allocation, without loading ``ctypes`` to
make them (0.4 MiB). Both in docs/performance.md, "Running as deployed"."""
