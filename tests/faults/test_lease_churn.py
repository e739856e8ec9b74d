"""Lease churn soak: 50 rounds of a host leaving (flanneld stopped, lease deleted) while another joins
(flanneld started as a new host, no subnet.env), under pod traffic between the three long-lived hosts.

A long-lived flanneld must end with the kernel entries of the leases that are left, no more open fds than
at the start, and its RSS is recorded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.e2e.cluster import Host
from tests.faults.conftest import make_cluster
from tests.faults.harness import FaultCluster
from tests.faults.observe import kernel_entry_count
from tests.faults.scenario import Scenario

pytestmark = [pytest.mark.e2e, pytest.mark.root]

fault_cluster = pytest.fixture(scope="module")(make_cluster())

ROUNDS = 50
BOUND = 300.0
"""Seconds the rounds may take in all (each is one flanneld start: about a second on an idle machine)."""


def usage(host: Host) -> tuple[int, int]:
    """(VmRSS in KiB, open fds) of the host's flanneld."""
    assert host.proc is not None
    pid = host.proc.pid  # `ip netns exec` execs flanneld: the PID is flanneld's
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def leave(c: FaultCluster, host: Host) -> None:
    """The host leaves for good: its flanneld stopped, its lease deleted, its subnet.env gone."""
    c.stop_flanneld(host)
    if "FLANNEL_SUBNET" in host.env():
        c.etcdctl("del", c.lease_key(host))
        host.subnet_file.unlink()


def test_lease_churn_soak(fresh: FaultCluster, request: pytest.FixtureRequest) -> None:
    c = fresh
    h1 = c.hosts[1]
    rss0, fds0 = usage(h1)
    entries0 = kernel_entry_count(h1)
    a = c.join(4)
    c.wait_ready(a, timeout=30)
    b = c.join(5)
    c.wait_ready(b, timeout=30)
    leave(c, b)
    rounds = 0
    with Scenario(c, request, f"lease churn: {ROUNDS} rounds of leave + join") as sc:
        deadline = time.monotonic() + BOUND
        started = time.monotonic()
        while rounds < ROUNDS and time.monotonic() < deadline:
            joining, leaving = (b, a) if rounds % 2 == 0 else (a, b)
            c.start_flanneld(joining)
            leave(c, leaving)
            c.wait_ready(joining, timeout=30)
            rounds += 1
        sc.recovered()
        time.sleep(3.0)  # let h1 take in the last events
        rss1, fds1 = usage(h1)
        sc.fig.extra.update({
            "rounds": rounds, "seconds per round": round((time.monotonic() - started) / max(rounds, 1), 2),
            "h1 RSS KiB": f"{rss0} -> {rss1}", "h1 open fds": f"{fds0} -> {fds1}",
            "h1 flannel.1 entries": f"{entries0} -> {kernel_entry_count(h1)} (+3 for the host left joined)",
        })
    sc.figures.check(lossless=True, require={
        f"only {rounds} rounds in {BOUND:.0f}s": rounds == ROUNDS,
        f"h1's flanneld holds {fds1} fds after the churn, {fds0} before": fds1 <= fds0 + 2})
