"""Faults of one host under pod traffic: its flanneld killed or frozen, its underlay link flapped or replaced.

The data plane lives in the kernel, so a flanneld that is killed, restarted or frozen must lose no ping; a
host whose own underlay goes away loses the pings through it for that time (recorded), but the pairs that
do not cross it must lose none.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.cluster import in_ns, subnet_of
from tests.faults.conftest import make_cluster
from tests.faults.harness import FaultCluster
from tests.faults.scenario import Scenario

pytestmark = [pytest.mark.e2e, pytest.mark.root]

fault_cluster = pytest.fixture(scope="module")(make_cluster())

FROZEN = 70.0
"""Seconds flanneld is SIGSTOPped: longer than the 60 s renewal period the test flags give the lease."""
UNDISTURBED = ("h1->h3", "h3->h1")
"""Ping pairs that do not cross h2, the host whose underlay is broken."""


def ifindex(c: FaultCluster, n: int) -> int:
    return int(in_ns(c.hosts[n].ns, "cat", "/sys/class/net/eth0/ifindex").stdout)


def test_flanneld_sigkill_and_restart_under_traffic(fresh: FaultCluster, request: pytest.FixtureRequest) -> None:
    c = fresh
    h2 = c.hosts[2]
    before = subnet_of(h2)
    with Scenario(c, request, "flanneld SIGKILL and restart") as sc:
        c.stop_flanneld(h2, signal.SIGKILL)
        time.sleep(1.0)
        c.start_flanneld(h2)
        sc.recovered()
        c.wait_ready(h2, timeout=30)
        sc.fig.extra["same subnet after restart"] = subnet_of(h2) == before
    sc.figures.check(lossless=True, require={"subnet changed": sc.fig.extra["same subnet after restart"]})


def test_flanneld_sigstop_70s_then_sigcont(fresh: FaultCluster, request: pytest.FixtureRequest) -> None:
    """While h2's flanneld is frozen, h4 joins: after SIGCONT h2 must catch up (stale watch, overdue renewal)."""
    c = fresh
    h2 = c.hosts[2]
    assert h2.proc is not None
    with Scenario(c, request, f"flanneld SIGSTOP {FROZEN:.0f} s, host joins meanwhile") as sc:
        h2.proc.send_signal(signal.SIGSTOP)
        time.sleep(FROZEN / 2)
        c.join(4)
        time.sleep(FROZEN / 2)
        h2.proc.send_signal(signal.SIGCONT)
        sc.recovered()
    sc.figures.check(lossless=True)


def test_underlay_link_flap(fresh: FaultCluster, request: pytest.FixtureRequest) -> None:
    c = fresh
    h2 = c.hosts[2]
    with Scenario(c, request, "underlay link of h2 down 3 s, up") as sc:
        in_ns(h2.ns, "ip", "link", "set", "eth0", "down")
        time.sleep(3.0)
        in_ns(h2.ns, "ip", "link", "set", "eth0", "up")
        in_ns(h2.ns, "ip", "route", "replace", "default", "via", "198.18.0.1")  # the kernel dropped it at "down"
        sc.recovered()
    sc.figures.check(lossless=False, lossless_pairs=UNDISTURBED)


def test_external_interface_recreated_with_new_ifindex(fresh: FaultCluster, request: pytest.FixtureRequest) -> None:
    c = fresh
    h2 = c.hosts[2]
    old = ifindex(c, 2)
    with Scenario(c, request, "external interface of h2 deleted, re-created (new ifindex, same address)") as sc:
        in_ns(h2.ns, "ip", "link", "del", "eth0")  # the veth pair goes, and the kernel deletes flannel.1 with it
        time.sleep(2.0)
        c._plug(h2.ns, "eth0", f"{h2.ip}/24")
        in_ns(h2.ns, "ip", "route", "replace", "default", "via", "198.18.0.1")
        sc.recovered()
        sc.fig.extra["ifindex"] = f"{old} -> {ifindex(c, 2)}"
    sc.figures.check(lossless=False, lossless_pairs=UNDISTURBED)
