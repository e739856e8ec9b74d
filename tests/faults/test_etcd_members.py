"""A 3-member etcd cluster under flanneld (every member an endpoint): the leader killed, a follower killed,
one member partitioned away. A quorum stays throughout, so flanneld must not even notice for long: no exit,
no lost ping, and the changes made during the fault (a host joins) reach every host.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.conftest import make_cluster
from tests.faults.harness import FaultCluster, Member
from tests.faults.scenario import Scenario

pytestmark = [pytest.mark.e2e, pytest.mark.root]

fault_cluster = pytest.fixture(scope="module")(make_cluster(members=3))

DOWN = 15.0
"""Seconds a member stays killed or partitioned."""


def member_fault(c: FaultCluster, request: pytest.FixtureRequest, name: str, member: Member, partition: bool) -> None:
    with Scenario(c, request, name) as sc:
        role = "leader" if c.leader() is member else "follower"
        sc.fig.extra["member"] = f"{member.name} ({role}{', first endpoint' if member.n == 1 else ''})"
        if partition:
            c.partition(member)
        else:
            c.stop_member(member, signal.SIGKILL)
        time.sleep(1.0)
        c.join(4)  # must become ready through the members that are left
        time.sleep(DOWN - 1.0)
        if partition:
            c.heal(member)
        else:
            c.start_member(member)
        c.wait_store()
        sc.recovered()
    sc.figures.check(lossless=True)


def test_leader_killed(fresh: FaultCluster, request: pytest.FixtureRequest) -> None:
    """The leader is the first endpoint, the member flanneld's connections are on."""
    c = fresh
    c.move_leader(c.members[0])
    member_fault(c, request, f"3-member etcd: leader SIGKILLed {DOWN:.0f} s", c.members[0], partition=False)


def test_follower_killed(fresh: FaultCluster, request: pytest.FixtureRequest) -> None:
    """A follower, the first endpoint, is killed."""
    c = fresh
    c.move_leader(c.members[1])
    member_fault(c, request, f"3-member etcd: follower SIGKILLed {DOWN:.0f} s", c.members[0], partition=False)


def test_member_partitioned(fresh: FaultCluster, request: pytest.FixtureRequest) -> None:
    """The first endpoint (where flanneld's connections are) is cut off by iptables DROP: a silent black hole."""
    c = fresh
    member_fault(c, request, f"3-member etcd: first endpoint partitioned {DOWN:.0f} s", c.members[0],
                 partition=True)
