"""The outages the fake API server can put on, each the way a real kube-apiserver (or the network) shows it.

* ``fail_next``/``fail_all``: error answers. kube-apiserver sheds load with ``429 TooManyRequests``, a
  ``Retry-After`` header and the same seconds in ``details.retryAfterSeconds`` (API priority and fairness);
  500/503/504 come with a ``Status`` too, and may carry ``Retry-After`` as well. Open watches stay open,
  as they do when etcd is away and the server answers from its watch cache.
* ``hang``/``unhang``: a black hole. Connections are still accepted (the kernel's backlog does that for a
  stopped process) but nothing is answered and open watches go silent; on ``unhang`` everything held is
  answered, as a process continued after SIGSTOP would.
* down and up (``FakeKubeApi.go_down``/``come_back``): nothing listens (connection refused), every open
  connection is cut; a restarted kube-apiserver's watch cache starts at the current version, so a watch from
  an older version is answered 410 (the fake compacts its history when it comes back).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tests.kube_fake.objects import ApiError

FAIL_REASONS = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
FAIL_MESSAGES = {
    429: "Too many requests, please try again later.",
    503: "the server is currently unable to handle the request",
    504: "the server was unable to return a response in the time allotted, but may still be processing the request",
}


@dataclass(frozen=True)
class Failure:
    """One injected error answer."""

    code: int
    retry_after: int | None = None

    def error(self) -> ApiError:
        details = {"retryAfterSeconds": self.retry_after} if self.retry_after else None
        message = FAIL_MESSAGES.get(self.code, "injected failure (fake)")
        return ApiError(self.code, FAIL_REASONS.get(self.code, "InternalError"), message, details)

    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))] if self.retry_after else []


class Faults:
    """The faults in force; the server asks it before answering each API request."""

    def __init__(self) -> None:
        self._next: list[Failure] = []
        self._all: Failure | None = None
        self._running = asyncio.Event()
        self._running.set()

    def fail_next(self, count: int, code: int = 503, retry_after: int | None = None) -> None:
        """Answer the next ``count`` API requests with ``code`` instead of serving them."""
        self._next.extend([Failure(code, retry_after)] * count)

    def fail_all(self, code: int | None, retry_after: int | None = None) -> None:
        """Answer every API request with ``code`` until ``fail_all(None)``."""
        self._all = Failure(code, retry_after) if code is not None else None

    @property
    def pending(self) -> int:
        return len(self._next)

    def failure(self) -> Failure | None:
        """The failure to answer the current request with, if any (consumes one ``fail_next``)."""
        if self._next:
            return self._next.pop(0)
        return self._all

    def hang(self) -> None:
        """Black hole: answer nothing and send nothing on open watches until ``unhang``."""
        self._running.clear()

    def unhang(self) -> None:
        self._running.set()

    @property
    def hanging(self) -> bool:
        return not self._running.is_set()

    async def wait_running(self) -> None:
        """Return at once unless hanging; else when ``unhang`` is called."""
        await self._running.wait()

    def clear(self) -> None:
        """No fault in force any more."""
        self._next.clear()
        self._all = None
        self.unhang()
