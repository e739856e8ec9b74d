"""The Kubernetes client's small, typed error tree.

Callers catch intent (``ConflictError``: re-read and retry; ``GoneError``: re-list; ``KubeUnavailableError``:
back off and retry) rather than HTTP status codes, as kopf's client does. An API server that sheds load (429,
or 5xx during a restart) says when to come back (``Retry-After``); ``retry_delay`` honours that, capped, and
otherwise paces retries with capped, jittered back-off, so that thousands of nodes do not retry in step.
``KubeUnavailableError`` is also a ``DatastoreUnavailableError``, so the daemon's retry-with-back-off treats an
unreachable API server exactly like an unreachable etcd. Every message names the verb, the path and the
server's own ``Status`` message.
"""

from __future__ import annotations

import json
from typing import Any

from flannel.backoff import Backoff
from flannel.errors import DatastoreUnavailableError, FlannelError

RETRY_AFTER_CAP = 30.0
"""The longest ``Retry-After`` honoured: a server (or proxy) asking for more must not park flanneld for hours."""


class KubeApiError(FlannelError):
    """The API server answered with an error ``Status`` (or could not be reached: see ``KubeUnavailableError``).

    ``status`` is the HTTP code (0 when no answer arrived), ``reason`` the Status reason (``NotFound``,
    ``Conflict``, ``Expired`` …), ``message`` the server's own text and ``retry_after`` the seconds the server
    asked the client to wait (``Retry-After`` header, else the Status' ``details.retryAfterSeconds``).
    """

    def __init__(self, status: int, reason: str, message: str, *, verb: str = "", path: str = "",
                 retry_after: float | None = None) -> None:
        self.status = status
        self.retry_after = retry_after
        self.reason = reason
        self.message = message
        self.verb = verb
        self.path = path
        where = f"{verb} {path}: " if verb or path else ""
        code = f"{status} {reason}: " if status else (f"{reason}: " if reason else "")
        super().__init__(f"{where}{code}{message}")


class NotFoundError(KubeApiError):
    """404: the object (or the path) does not exist."""


class ConflictError(KubeApiError):
    """409: optimistic concurrency failed (stale ``metadata.resourceVersion``) or the object already exists."""


class GoneError(KubeApiError):
    """410: the resource version (of a watch or a list continuation) is older than the server still keeps.

    The caller must list again and watch from the new list's version.
    """


class UnauthorizedError(KubeApiError):
    """401: the credentials were missing, expired or not accepted."""


class ForbiddenError(KubeApiError):
    """403: authenticated, but RBAC does not allow this verb on this resource."""


class KubeUnavailableError(KubeApiError, DatastoreUnavailableError):
    """The API server could not be reached, timed out, lost the connection, or answered 5xx or 429."""


_BY_STATUS: dict[int, type[KubeApiError]] = {
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    429: KubeUnavailableError,
}


def error_class(status: int) -> type[KubeApiError]:
    """The error class for an HTTP status code."""
    if status >= 500:
        return KubeUnavailableError
    return _BY_STATUS.get(status, KubeApiError)


def error_from_status_object(status_obj: dict[str, Any], *, verb: str, path: str, http_status: int = 0,
                             retry_after: float | None = None) -> KubeApiError:
    """Build the typed error for a decoded ``Status`` object (an error body, or a watch ``ERROR`` event's object)."""
    code = status_obj.get("code")
    status = code if isinstance(code, int) and code > 0 else http_status
    reason = str(status_obj.get("reason") or "")
    message = str(status_obj.get("message") or "")
    if retry_after is None:
        details = status_obj.get("details")
        seconds = details.get("retryAfterSeconds") if isinstance(details, dict) else None
        if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
            retry_after = float(seconds)
    return error_class(status)(status, reason, message, verb=verb, path=path, retry_after=retry_after)


def error_from_response(status: int, phrase: str, body: bytes | bytearray, *, verb: str, path: str,
                        retry_after_header: str = "") -> KubeApiError:
    """The typed error for an HTTP error response, preferring the body's ``Status`` message to the bare code."""
    retry_after = parse_retry_after(retry_after_header)
    try:
        decoded = json.loads(body) if body else None
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and decoded.get("kind") == "Status":
        return error_from_status_object(decoded, verb=verb, path=path, http_status=status, retry_after=retry_after)
    text = body[:300].decode("utf-8", "replace").strip()
    return error_class(status)(status, phrase, text or phrase, verb=verb, path=path, retry_after=retry_after)


def parse_retry_after(text: str) -> float | None:
    """``Retry-After`` in delay-seconds form, the only form kube-apiserver sends (as client-go, an HTTP date or
    garbage is ignored: the caller's own back-off applies)."""
    text = text.strip()
    return float(text) if text.isdigit() and int(text) > 0 else None


def retry_delay(backoff: Backoff, exc: BaseException) -> float:
    """How long to wait before retrying after ``exc``: the server's ``Retry-After`` (capped at
    ``RETRY_AFTER_CAP``) when it gave one, else the back-off's next delay with its jitter, so that the nodes
    of a cluster do not all come back in the same second."""
    after = getattr(exc, "retry_after", None)
    if isinstance(after, float) and after > 0:
        return min(after, RETRY_AFTER_CAP)
    return backoff.advance_jittered()


def unavailable(verb: str, path: str, why: str) -> KubeUnavailableError:
    """A connection failure or time-out, which has no HTTP status."""
    return KubeUnavailableError(0, "", why, verb=verb, path=path)
