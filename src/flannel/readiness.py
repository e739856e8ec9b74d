"""Why flanneld is, or is not, ready: the one source of truth behind ``/readyz`` and ``flannel_ready``.

Upstream flips ``/readyz`` to 200 once ``subnet.env`` is written and never back. Here readiness also goes
back to 503 while something the node depends on is away (the datastore, the API server), so an operator
and a probe can tell a node that merely keeps its old kernel state from one that follows the cluster. The
kernel state is never touched because of a condition set here: it only reports.

Each subsystem names its condition (``DATASTORE``, ``LEASE``, ``KERNEL`` below), sets it with the reason when it
loses something and clears it when it recovers. Process-wide, like ``metrics``, because each subsystem
would otherwise need a handle threaded through every constructor.
"""

from __future__ import annotations

import logging
import time

from flannel import metrics
from flannel.secret import redact_urls

log = logging.getLogger(__name__)

DATASTORE = "datastore"
"""Condition: etcd or the Kubernetes API server cannot be reached (or refuses us)."""
LEASE = "lease"
"""Condition: the node's own lease record is missing (kube mode: its Node object)."""
KERNEL = "kernel"
"""Condition: the reconcile keeps failing, so the kernel may not match the leases."""
CLOUD_ROUTE = "cloud-route"
"""Condition (cloud route backends): this node's route in the cloud's table is missing or wrong and cannot be
made right now (the API fails, or the table is full)."""

NOT_STARTED = "flanneld is not ready yet"
"""Upstream's ``/readyz`` body before ``subnet.env`` is written."""


class Readiness:
    """Started (subnet.env written) and no open problem: ready."""

    def __init__(self) -> None:
        self._started = False
        self._problems: dict[str, tuple[str, float]] = {}
        self._publish()  # every known condition's series exists (at 0) from the start

    @property
    def ready(self) -> bool:
        return self._started and not self._problems

    def mark_started(self) -> None:
        """subnet.env is written: from now on only open problems make the node unready."""
        self._started = True
        self._publish()

    def problem(self, condition: str, reason: str) -> None:
        """``condition`` is failing because of ``reason``; logged once per change of reason.

        ``/readyz`` is unauthenticated, so a URL's ``user:password@`` in the reason (an error text quoting an
        endpoint) is redacted here, whoever sets the condition.
        """
        reason = redact_urls(reason)
        previous = self._problems.get(condition)
        if previous is not None and previous[0] == reason:
            return
        since = previous[1] if previous is not None else time.monotonic()
        self._problems[condition] = (reason, since)
        if previous is None:
            log.warning("not ready: %s: %s", condition, reason)
        self._publish()

    def resolved(self, condition: str) -> None:
        """``condition`` works again."""
        previous = self._problems.pop(condition, None)
        if previous is not None:
            log.info("%s recovered after %.1fs", condition, time.monotonic() - previous[1])
            self._publish()

    def explain(self) -> str:
        """The ``/readyz`` body: upstream's texts when ready or not started, else each open problem."""
        if not self._started:
            return NOT_STARTED
        if not self._problems:
            return "flanneld is ready"
        now = time.monotonic()
        problems = sorted(self._problems.items())
        parts = [f"{name}: {reason} (for {now - since:.0f}s)" for name, (reason, since) in problems]
        return "flanneld is not ready: " + "; ".join(parts)

    def reset(self) -> None:
        """Back to the state of a fresh process (tests)."""
        self._started = False
        self._problems.clear()
        self._publish()

    def _publish(self) -> None:
        metrics.READY.set(1 if self.ready else 0)
        for condition in (DATASTORE, LEASE, KERNEL, *self._problems):
            metrics.READINESS_PROBLEM.labels(condition).set(1 if condition in self._problems else 0)


READINESS = Readiness()
