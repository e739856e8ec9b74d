"""The ipsec backend on a host that already runs its own charon (a VPN of its own).

Upstream starts a second charon there, which exits ("charon already running"), and then talks to the host's
charon over the shared VICI socket without saying so. flanneld uses the host's charon on purpose: it logs so,
loads its connections and keys into it, leaves it running when it stops, and starts its own charon when the
host's exits. Host 1 runs such a charon (started by the test before flanneld, in its own mount namespace, so
with its own ``/run/charon.pid`` and ``/run/charon.vici``); host 2 is an ordinary flannel host.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, Host, eventually
from tests.e2e.conftest import _skip_reason
from tests.e2e.test_ipsec import charon_pids, conn_name, conns, has_tunnel_policies, ike_established, shared_ids
from tests.ipsec_support import PSK, write_strongswan_conf

pytestmark = [pytest.mark.e2e, pytest.mark.root]

CHARON = next((p for p in ("/usr/lib/ipsec/charon", "/usr/lib/strongswan/charon", "/usr/libexec/strongswan/charon")
               if os.path.exists(p)), shutil.which("charon"))


class HostCharon:
    """The host's own charon, started by hand in host 1 (as a host's strongSwan service would run it)."""

    def __init__(self, host: Host, conf: str) -> None:
        assert host.holder is not None and CHARON is not None
        self.log = open(host.workdir / "host-charon.log", "wb")  # noqa: SIM115 (closed in stop)
        # nsenter execs charon: the Popen's pid is charon's
        self.proc = host.holder.popen(["env", f"STRONGSWAN_CONF={conf}", CHARON], stdout=self.log,
                                      stderr=subprocess.STDOUT)
        run = host.holder.run_dir
        assert eventually(lambda: (run / "charon.vici").exists() and (run / "charon.pid").exists(), timeout=15)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, HostCharon]]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    if CHARON is None:
        pytest.fail("charon is missing (make deps installs strongswan-charon)")
    c = Cluster(backend=json.dumps({"Type": "ipsec", "PSK": PSK}), private_mounts=True)
    theirs: HostCharon | None = None
    try:
        c.start()
        conf = write_strongswan_conf(c.tmp)
        h1, h2 = c.add_host(1), c.add_host(2)
        theirs = HostCharon(h1, str(conf))
        for host in (h1, h2):
            c.start_flanneld(host, "--reconcile-interval=1", env={"STRONGSWAN_CONF": str(conf)})
        for host in (h1, h2):
            c.wait_ready(host)
        yield c, theirs
    finally:
        if theirs is not None:
            theirs.stop()
        c.close()


def keyed(local: Host, remote: Host) -> bool:
    with contextlib.suppress(OSError):
        return conn_name(local, remote) in conns(local) and shared_ids(local) == sorted(
            [f"flannel-{local.ip}", f"flannel-{remote.ip}"])
    return False


def test_flanneld_uses_the_hosts_charon_and_says_so(cluster: tuple[Cluster, HostCharon]) -> None:
    c, theirs = cluster
    h1, h2 = c.hosts[1], c.hosts[2]
    assert eventually(lambda: keyed(h1, h2), timeout=20), h1.log_file.read_text()[-2000:]
    assert f"charon (pid {theirs.proc.pid}) already runs on this host and flanneld did not start it: using it " \
           "over unix:///var/run/charon.vici" in h1.log_file.read_text()
    assert charon_pids(h1) == [theirs.proc.pid], "flanneld started no second charon"
    assert "already running" not in h1.log_file.read_text()
    assert eventually(lambda: has_tunnel_policies(h1, h2))
    assert eventually(lambda: ike_established(h1, h2.ip), timeout=20), h1.log_file.read_text()[-2000:]


def test_stopping_flanneld_leaves_the_hosts_charon_running(cluster: tuple[Cluster, HostCharon]) -> None:
    c, theirs = cluster
    h1, h2 = c.hosts[1], c.hosts[2]
    assert c.stop_flanneld(h1) == 0
    assert theirs.proc.poll() is None and charon_pids(h1) == [theirs.proc.pid]
    assert f"leaving the host's charon (pid {theirs.proc.pid}) running" in h1.log_file.read_text()
    c.start_flanneld(h1, "--reconcile-interval=1", env={"STRONGSWAN_CONF": str(c.tmp / "strongswan.conf")})
    c.wait_ready(h1)
    assert eventually(lambda: h1.log_file.read_text().count(f"charon (pid {theirs.proc.pid}) already runs") == 2)
    assert eventually(lambda: keyed(h1, h2), timeout=20)


def test_when_the_hosts_charon_exits_flanneld_starts_its_own(cluster: tuple[Cluster, HostCharon]) -> None:
    c, theirs = cluster
    h1, h2 = c.hosts[1], c.hosts[2]
    old = theirs.proc.pid
    theirs.stop()

    def own_charon() -> bool:
        pids = charon_pids(h1)
        if len(pids) != 1 or h1.proc is None:
            return False
        with open(f"/proc/{pids[0]}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1]) == h1.proc.pid  # its parent is flanneld

    assert eventually(own_charon, timeout=20), (charon_pids(h1), h1.log_file.read_text()[-2000:])
    assert f"the host's charon (pid {old}) exited; flanneld starts its own" in h1.log_file.read_text()
    assert eventually(lambda: keyed(h1, h2), timeout=20), h1.log_file.read_text()[-2000:]
    assert eventually(lambda: ike_established(h1, h2.ip), timeout=20)
    assert c.stop_flanneld(h1) == 0
    assert not charon_pids(h1), "flanneld stops the charon it started"
