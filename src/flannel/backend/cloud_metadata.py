"""Reading an instance metadata service (GCE, Aliyun ECS, Tencent CVM): plain HTTP GETs, bounded retries.

Every cloud backend learns where it runs (region, zone, instance, VPC) from a link-local HTTP service. That
service is normally instant, but it can be briefly away while the instance boots; it is never away for long
on a healthy instance. So a read is retried a few times with back-off and then fails with an error that
names the URL, instead of hanging a start-up or retrying forever on a machine that is not in that cloud at
all. The standard library's HTTP client is enough, and keeps the cloud SDKs out of this step.

Each backend lets its metadata base URL be replaced by an environment variable (documented per backend in
docs/backends.md); that is how the tests reach their stand-in.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping

from flannel.backend.cloud_route import MetadataError

ATTEMPTS = 4
"""Tries of one metadata read (waits 0.5 s, 1 s, 2 s between them)."""
TIMEOUT = 2.0
"""Seconds per try: the service answers in milliseconds when it exists."""


def base_url(env_var: str, default: str) -> str:
    """The metadata base URL: ``env_var`` when set (without a trailing slash), else ``default``."""
    return (os.environ.get(env_var) or default).rstrip("/")


def read(url: str, headers: Mapping[str, str] | None = None, attempts: int | None = None,
         timeout: float = TIMEOUT) -> str:
    """GET ``url`` and return the body, stripped. Blocking: call it through ``asyncio.to_thread``.

    A 404 is final at once (the path does not exist on this instance); connection failures, timeouts and
    5xx answers are retried. The error names the URL and the last reason.
    """
    request = urllib.request.Request(url, headers=dict(headers or {}))
    # No proxy, whatever the environment says: the metadata service is link-local to this instance.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    attempts = attempts or ATTEMPTS
    delay = 0.5
    reason = ""
    attempt = 0
    for attempt in range(1, attempts + 1):
        try:
            with opener.open(request, timeout=timeout) as resp:
                return str(resp.read().decode("utf-8", "replace")).strip()
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
            if exc.code < 500:
                break
        except (urllib.error.URLError, OSError) as exc:
            reason = str(getattr(exc, "reason", exc))
        if attempt < attempts:
            time.sleep(delay)
            delay *= 2
    raise MetadataError(f"cannot read instance metadata {url} ({reason}, after {attempt} attempt(s)); "
                        "is this node running in that cloud?")
