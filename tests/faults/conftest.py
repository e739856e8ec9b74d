"""Fixtures of the fault suite: a shared cluster per module (reset before each scenario), the figures file."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.conftest import _missing_tools, _skip_reason, root_namespace_unchanged  # noqa: F401
from tests.faults.harness import FaultCluster
from tests.faults.scenario import figures_path


@pytest.fixture(scope="session", autouse=True)
def figures_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``$FLANNEL_FAULT_FIGURES``, by default ``fault-figures.jsonl`` in the run's base temporary directory."""
    if not os.environ.get("FLANNEL_FAULT_FIGURES"):
        os.environ["FLANNEL_FAULT_FIGURES"] = str(tmp_path_factory.getbasetemp() / "fault-figures.jsonl")
    yield
    if figures_path().exists():
        print(f"\nfault figures: {figures_path()} (tests/faults/report.py makes the table)")


class Shared:
    """One cluster shared by a module's scenarios. ``fresh`` resets it to its base state; a cluster that a failed
    scenario left unable to get back (e.g. flanneld stuck on a rewritten etcd history) is replaced by a new one,
    and the reason goes into the next scenario's figures, so one failure does not fail the scenarios after it."""

    def __init__(self, members: int) -> None:
        self.members = members
        self.cluster: FaultCluster | None = None

    def fresh(self) -> FaultCluster:
        rebuilt = ""
        if self.cluster is not None:
            try:
                self.cluster.reset()
                self.cluster.rebuilt_because = ""
                return self.cluster
            except Exception as exc:  # the reason is recorded below, and the cluster replaced
                rebuilt = f"cluster rebuilt: reset failed: {exc}"[:400]
                self.cluster.close()
                self.cluster = None
        self.cluster = FaultCluster(members=self.members)
        self.cluster.rebuilt_because = rebuilt
        self.cluster.start()
        return self.cluster

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None


def make_cluster(members: int = 1) -> Callable[[], Iterator[Shared]]:
    """A module-scoped fixture function: the module's ``Shared`` cluster, torn down after the module."""

    def fixture() -> Iterator[Shared]:
        reason = _skip_reason()
        if reason:
            pytest.skip(reason)
        missing = _missing_tools() + ([] if shutil.which("iptables") else ["iptables"])
        if missing:
            pytest.fail(f"missing tools: {', '.join(missing)} (make test installs them)")
        shared = Shared(members)
        try:
            yield shared
        finally:
            shared.close()

    return fixture


@pytest.fixture
def fresh(request: pytest.FixtureRequest) -> FaultCluster:
    """The module's cluster (fixture ``fault_cluster``), in its base state."""
    shared: Shared = request.getfixturevalue("fault_cluster")
    return shared.fresh()
