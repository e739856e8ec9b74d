"""etcd's history rewritten under flanneld: a restore from an older snapshot, compaction and defrag during
the watch, and a watch the server cancels because its revision was compacted away.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.cluster import ETCDCTL, eventually, in_ns
from tests.faults.conftest import make_cluster
from tests.faults.harness import HEALTHZ_PORT, FaultCluster
from tests.faults.observe import kernel_mismatches
from tests.faults.scenario import Scenario

pytestmark = [pytest.mark.e2e, pytest.mark.root]

fault_cluster = pytest.fixture(scope="module")(make_cluster())

FAKE = '{"PublicIP":"198.18.0.%d","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}'
"""A lease of a host that does not exist: flanneld programs it like any other."""


def put_fake(c: FaultCluster, third: int, last: int) -> None:
    c.etcdctl("put", f"/coreos.com/network/subnets/10.244.{third}.0-24", FAKE % (last, f"02:00:00:00:00:{last:02x}"))


def compacted_watches(c: FaultCluster, n: int) -> int:
    """flanneld's count of lease watches etcd ended because their revision was compacted."""
    host = c.hosts[n]
    text = in_ns(host.ns, "curl", "-s", f"http://{host.ip}:{HEALTHZ_PORT}/metrics").stdout
    for line in text.splitlines():
        if line.startswith('flannel_datastore_watch_errors_total{reason="compacted"}'):
            return int(float(line.split()[-1]))
    return 0


def test_etcd_restored_from_older_snapshot_republishes_and_reprograms(
        fresh: FaultCluster, request: pytest.FixtureRequest) -> None:
    c = fresh
    member = c.members[0]
    snap = c.tmp / f"snap-{time.monotonic_ns()}.db"
    c.etcdctl("snapshot", "save", str(snap))  # holds the leases of h1, h2, h3
    h4 = c.join(4)  # its lease is newer than the snapshot: gone after the restore
    c.wait_ready(h4, timeout=30)
    c.add_pod(h4)
    h3 = c.hosts[3]
    c.stop_flanneld(h3)  # h3 leaves; its lease is back after the restore
    c.delete_lease(h3)
    running = [c.hosts[1], c.hosts[2], h4]
    assert eventually(lambda: not kernel_mismatches(c, running), timeout=20), kernel_mismatches(c, running)
    with Scenario(c, request, "etcd restored from an older snapshot", ping_hosts=running) as sc:
        c.stop_member(member)
        restored = c.tmp / f"etcd1-restored-{time.monotonic_ns()}"
        in_ns(f"{c.prefix}ul", ETCDCTL, "snapshot", "restore", str(snap), "--name", member.name,
              "--data-dir", str(restored), "--initial-cluster", f"{member.name}={member.peer_url}",
              "--initial-advertise-peer-urls", member.peer_url, "--initial-cluster-token", c.prefix)
        c.start_member(member, data=restored)
        c.wait_store()
        sc.recovered()
        key4 = c.lease_key(h4).rsplit("/", 1)[-1]
        sc.fig.extra["h4 lease re-published"] = eventually(lambda: key4 in c.leases(), timeout=30)
        sc.fig.extra["h3 lease back"] = c.lease_key(h3).rsplit("/", 1)[-1] in c.leases()
    sc.figures.check(lossless=True, require={"h4 did not re-publish its lease": sc.fig.extra["h4 lease re-published"]})


def test_compaction_and_defrag_during_the_watch(fresh: FaultCluster, request: pytest.FixtureRequest) -> None:
    c = fresh
    with Scenario(c, request, "compaction --physical + defrag during the watch") as sc:
        put_fake(c, 201, 201)
        c.etcdctl("compaction", "--physical", str(c.revision()))
        c.etcdctl("defrag")
        sc.recovered()
        put_fake(c, 202, 202)  # changes after the compaction must still reach every flanneld
        c.etcdctl("del", "/coreos.com/network/subnets/10.244.201.0-24")
    sc.figures.check(lossless=True)


def test_watch_cancelled_by_server_after_compaction_relists(
        fresh: FaultCluster, request: pytest.FixtureRequest) -> None:
    """h3's flanneld is stopped while 30 MiB of watch events pile up, so etcd gives its watcher up as slow;
    the history is then compacted past it, and etcd cancels the watch (compact_revision) on SIGCONT.

    h3 runs the gRPC client here: the server-side cancel is etcd's own gRPC watcher being given up. Through
    the JSON gateway (the default client) that watcher is the gateway's, whose stream and socket buffers
    absorbed the flood in two of three full `make test` runs, so the fault was not made. The gateway client's
    compaction handling has its own scenario above and its own integration tests."""
    c = fresh
    h3 = c.hosts[3]
    c.stop_flanneld(h3)
    c.start_flanneld(h3, env={"FLANNEL_ETCD_CLIENT": "grpc"})
    c.wait_ready(h3, timeout=30)  # subnet.env written by this flanneld, not the one before
    assert eventually(lambda: c.all_ready([h3]), timeout=30), h3.log_file.read_text()[-2000:]
    assert h3.proc is not None
    before = compacted_watches(c, 3)
    ul = f"{c.prefix}ul"
    with Scenario(c, request, "watch cancelled by the server (compacted while flanneld SIGSTOPped)") as sc:
        h3.proc.send_signal(signal.SIGSTOP)
        put_fake(c, 203, 203)  # a real change h3 must not miss
        flood = (f"for i in $(seq 1 30); do head -c 1000000 /dev/zero | tr '\\0' x | "
                 f"{ETCDCTL} --endpoints={c.endpoints} put /coreos.com/network/subnets/flood-big-$i >/dev/null; done; "
                 f"for i in $(seq 1 200); do {ETCDCTL} --endpoints={c.endpoints} "
                 f"put /coreos.com/network/subnets/flood-$i x >/dev/null; done")
        in_ns(ul, "sh", "-c", flood, timeout=120)
        c.etcdctl("del", "--prefix", "/coreos.com/network/subnets/flood")
        c.etcdctl("compaction", "--physical", str(c.revision()))
        h3.proc.send_signal(signal.SIGCONT)
        sc.recovered()
        eventually(lambda: compacted_watches(c, 3) > before, timeout=20)
        sc.fig.extra["compacted watches on h3"] = compacted_watches(c, 3) - before
    made = sc.fig.extra["compacted watches on h3"] > 0
    sc.figures.check(lossless=True, require={"etcd did not cancel h3's watch: the fault was not made": made})
