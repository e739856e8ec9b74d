"""etcd away for 60 s (SIGTERM, then SIGKILL) under pod traffic; a host joins during the outage, one after.

flanneld must keep the data plane (0 pings lost), stay up, say "not ready" while the store is away, be
ready again once it is back, and program the hosts that joined.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.conftest import make_cluster
from tests.faults.harness import FaultCluster
from tests.faults.scenario import Scenario

pytestmark = [pytest.mark.e2e, pytest.mark.root]

fault_cluster = pytest.fixture(scope="module")(make_cluster())

OUTAGE = 60.0


def outage(c: FaultCluster, request: pytest.FixtureRequest, sig: signal.Signals) -> Scenario:
    member = c.members[0]
    with Scenario(c, request, f"etcd stopped {OUTAGE:.0f} s ({sig.name}), joins during and after") as sc:
        c.stop_member(member, sig)
        time.sleep(OUTAGE / 2)
        c.join(4)  # its flanneld starts while etcd is down
        time.sleep(OUTAGE / 2)
        c.start_member(member)
        c.wait_store()
        sc.recovered()
        c.join(5)
    return sc


def test_etcd_sigterm_outage_keeps_traffic_and_recovers(fresh: FaultCluster, request: pytest.FixtureRequest) -> None:
    outage(fresh, request, signal.SIGTERM).figures.check(lossless=True)


def test_etcd_sigkill_outage_keeps_traffic_and_recovers(fresh: FaultCluster, request: pytest.FixtureRequest) -> None:
    outage(fresh, request, signal.SIGKILL).figures.check(lossless=True)
