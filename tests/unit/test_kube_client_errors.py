"""The client's error tree: status codes become intent, messages name verb, path and the server's words; and the
client's imports stay light (``ssl`` only for https, PyYAML only for a kubeconfig)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from flannel.errors import DatastoreUnavailableError, FlannelError
from flannel.kube.errors import (
    ConflictError,
    ForbiddenError,
    GoneError,
    KubeApiError,
    KubeUnavailableError,
    NotFoundError,
    UnauthorizedError,
    error_from_response,
    error_from_status_object,
)


def status_body(code: int, reason: str, message: str) -> bytes:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
                       "message": message}).encode()


@pytest.mark.parametrize(("code", "error"), [
    (400, KubeApiError), (401, UnauthorizedError), (403, ForbiddenError), (404, NotFoundError),
    (409, ConflictError), (410, GoneError), (415, KubeApiError), (422, KubeApiError), (429, KubeUnavailableError),
    (500, KubeUnavailableError), (503, KubeUnavailableError), (504, KubeUnavailableError),
])
def test_status_codes_map_to_the_typed_errors(code: int, error: type[KubeApiError]) -> None:
    err = error_from_response(code, "Phrase", status_body(code, "Reason", "what happened"), verb="GET", path="/p")
    assert type(err) is error
    assert (err.status, err.reason, err.message, err.verb, err.path) == (code, "Reason", "what happened", "GET", "/p")
    assert str(err) == f"GET /p: {code} Reason: what happened"


def test_unavailable_is_a_datastore_unavailable_error_for_the_daemons_back_off() -> None:
    err = error_from_response(503, "Service Unavailable", b"", verb="PATCH", path="/api/v1/nodes/n/status")
    assert isinstance(err, DatastoreUnavailableError) and isinstance(err, KubeApiError)
    assert isinstance(err, FlannelError)
    assert str(err) == "PATCH /api/v1/nodes/n/status: 503 Service Unavailable: Service Unavailable"


def test_watch_error_event_object_becomes_gone() -> None:
    obj = {"kind": "Status", "status": "Failure", "message": "too old resource version: 1 (5)", "reason": "Expired",
           "code": 410}
    err = error_from_status_object(obj, verb="WATCH", path="/api/v1/nodes")
    assert isinstance(err, GoneError) and err.reason == "Expired"


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_client_imports_without_ssl_and_without_yaml() -> None:
    """asyncio imports ssl by itself unless it is blocked; the kube modules themselves must not need it."""
    assert run_python("""
        import sys
        sys.modules["ssl"] = None
        import flannel.kube.client, flannel.kube.config, flannel.kube.errors, flannel.kube.http, flannel.kube.loading
        print("yaml" in sys.modules)
    """) == "False"


def test_http_works_and_https_is_a_clear_error_when_ssl_is_blocked() -> None:
    """What flanneld's etcd-mode entry point does (``sys.modules["ssl"] = None``) must not break plain HTTP."""
    out = run_python("""
        import sys
        sys.modules["ssl"] = None
        from flannel.errors import ConfigError
        from flannel.kube.client import KubeClient
        from flannel.kube.config import KubeClientConfig
        KubeClient(KubeClientConfig(server="http://127.0.0.1:1"))
        try:
            KubeClient(KubeClientConfig(server="https://127.0.0.1:1"))
        except ConfigError as exc:
            print(exc)
    """)
    assert out == "https://127.0.0.1:1: https needs Python's ssl module, which this process has blocked"


def test_https_after_asyncio_was_imported_without_ssl_is_a_clear_error() -> None:
    out = run_python("""
        import sys
        sys.modules["ssl"] = None
        import asyncio
        del sys.modules["ssl"]  # unblocking later is too late: asyncio kept ssl = None
        from flannel.errors import ConfigError
        from flannel.kube.client import KubeClient
        from flannel.kube.config import KubeClientConfig
        try:
            KubeClient(KubeClientConfig(server="https://127.0.0.1:1"))
        except ConfigError as exc:
            print(exc)
    """)
    assert "asyncio was imported while ssl was blocked" in out
