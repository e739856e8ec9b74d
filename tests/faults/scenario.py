"""One fault scenario's run and figures: pings around the fault, readiness after it, kernel = leases at the end.

A test does::

    with Scenario(cluster, request, "etcd SIGTERM 60 s") as sc:
        ...make the fault...
        sc.recovered()            # the store (or whatever was broken) is back: readiness is timed from here
    sc.figures.check(lossless=True)  # records the figures, then asserts

``check`` appends the figures, with the result, as one JSON line to ``$FLANNEL_FAULT_FIGURES``
(``tests/faults/report.py`` makes the table of ``docs/reliability.md`` from them), then asserts what the
scenario must keep: no flanneld exit, every flanneld ready again within ``READY_BOUND`` seconds, kernel =
leases, and (``lossless``) no lost ping. Lost pings and times are recorded, never asserted as timed values.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import REPO, Host, eventually
from tests.faults.harness import FaultCluster
from tests.faults.observe import Pinger, PingResult, kernel_mismatches

READY_BOUND = 30.0
"""Seconds after recovery within which every flanneld must answer /readyz 200 (the goal is 5 s: recorded)."""
AGREE_BOUND = 30.0
"""Seconds after readiness within which the kernel must match the leases."""


def commit() -> str:
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "src"], check=False).returncode
    return rev.stdout.strip() + ("+dirty" if dirty else "")


@dataclass
class Figures:
    scenario: str
    nodeid: str
    command: str
    commit: str
    started: str
    duration_s: float = 0.0
    sent: int = 0
    lost: int = 0
    lost_by_pair: dict[str, str] = field(default_factory=dict)
    ready_again_s: float | None = None
    ready_again_by_host: dict[str, float | None] = field(default_factory=dict)
    unready_during_fault: dict[str, list[str]] = field(default_factory=dict)
    exits: list[dict[str, Any]] = field(default_factory=list)
    kernel_agrees: bool = False
    mismatches: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    result: str = ""

    def check(self, lossless: bool, lossless_pairs: tuple[str, ...] = (),
              require: dict[str, bool] | None = None) -> None:
        """Record the figures with their result, then assert the scenario's guarantees (module docstring);
        ``require`` adds the scenario's own: message → condition that must hold."""
        problems: dict[str, str] = {}
        if self.exits:
            problems["flanneld exit"] = f"flanneld exited: {json.dumps(self.exits, indent=1)}"
        if self.ready_again_s is None or self.ready_again_s > READY_BOUND:
            problems["not ready again"] = f"not ready again within {READY_BOUND:.0f}s: {self.ready_again_by_host}"
        if not self.kernel_agrees:
            problems["kernel != leases"] = f"kernel != leases: {self.mismatches}"
        if lossless and self.lost:
            problems["pings lost"] = f"{self.lost}/{self.sent} pings lost: {self.lost_by_pair}"
        for pair in lossless_pairs:
            lost = int(self.lost_by_pair.get(pair, "0/0").split("/")[0])
            if lost:
                problems[f"{pair} lost pings"] = f"{pair}: {self.lost_by_pair[pair]} lost (not crossing the fault)"
        for message, holds in (require or {}).items():
            if not holds:
                problems[message] = message
        self.result = "pass" if not problems else "FAIL: " + ", ".join(problems)
        record(self)
        assert not problems, f"{self.scenario}:\n" + "\n".join(problems.values())


def figures_path() -> Path:
    env = os.environ.get("FLANNEL_FAULT_FIGURES")
    if env:
        return Path(env)
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"flannel-fault-figures-{os.getpid()}.jsonl"


class Scenario:
    """Pings from ``__enter__`` to ``finish``; readiness timed from ``recovered``."""

    def __init__(self, cluster: FaultCluster, request: pytest.FixtureRequest, name: str,
                 ping_hosts: list[Host] | None = None, bound: int = 600) -> None:
        self.cluster = cluster
        self.name = name
        nodeid = request.node.nodeid
        self.fig = Figures(
            scenario=name, nodeid=nodeid, command=f".venv/bin/pytest tests/faults -k {request.node.name}",
            commit=commit(), started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
        self.pinger = Pinger(cluster, ping_hosts or cluster.base(), bound)
        self.t0 = 0.0
        self.t_fault = 0.0
        self.t_back: float | None = None
        self.finished = False
        if cluster.rebuilt_because:
            self.fig.extra["note"] = cluster.rebuilt_because

    def __enter__(self) -> Scenario:
        self.t0 = time.monotonic()
        self.pinger.start()
        time.sleep(1.0)  # a second of pings before the fault
        self.t_fault = time.monotonic()
        return self

    def recovered(self) -> None:
        """The broken thing is back now: readiness is timed from this moment."""
        self.t_back = time.monotonic()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.pinger.stop()
            return
        self.finish()

    def finish(self) -> Figures:
        if self.finished:
            return self.fig
        self.finished = True
        c, fig = self.cluster, self.fig
        t_back = self.t_back if self.t_back is not None else time.monotonic()
        running = [h for h in c.hosts.values() if h.proc is not None]
        eventually(lambda: c.all_ready(running), timeout=READY_BOUND + 2, every=0.1)
        time.sleep(1.0)  # catch a node that flips back to 503 right after
        agrees = eventually(lambda: not kernel_mismatches(c, running), timeout=AGREE_BOUND, every=0.5)
        fig.mismatches = [] if agrees else kernel_mismatches(c, running)
        fig.kernel_agrees = agrees
        time.sleep(1.0)  # pings go on through the reprogramming
        results: list[PingResult] = self.pinger.stop()
        fig.sent = sum(r.sent for r in results)
        fig.lost = sum(r.lost for r in results)
        fig.lost_by_pair = {r.pair: f"{r.lost}/{r.sent}" for r in results}
        for h in running:
            log = c.readyz(h)
            fig.ready_again_by_host[f"h{h.n}"] = _round(log.ready_again(t_back))
            unready = log.unready_between(self.t_fault, t_back)
            if unready:
                fig.unready_during_fault[f"h{h.n}"] = unready[:3]
        again = list(fig.ready_again_by_host.values())
        fig.ready_again_s = None if any(v is None for v in again) else max(again, default=0.0)  # type: ignore[type-var]
        fig.exits = c.exits()
        fig.duration_s = round(time.monotonic() - self.t0, 1)
        return fig

    @property
    def figures(self) -> Figures:
        return self.finish()


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def record(fig: Figures) -> None:
    path = figures_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(asdict(fig)) + "\n")
