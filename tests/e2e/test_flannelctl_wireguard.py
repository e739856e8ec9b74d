"""``flannelctl status`` and the map's drift on 2 wireguard hosts (``wireguard-go`` over UAPI, each host with
its own /run): a peer removed by hand with ``wg set`` and a peer no lease has are named (exit 1, and
``flannel_drift_entries``), until flanneld's own reconcile repairs both (exit 0).

h1's flanneld first runs with an hour's reconcile, so the hand-made drift stays while the test looks; it is then
restarted with a 1 s reconcile, adopts the device as it is, and repairs it: the test waits for that.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.cluster import ETCD_URL, REPO, Cluster, Host, eventually, subnet_of
from tests.e2e.wireguard_support import peers, pubkey, wg, wg_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.root]

FLANNELCTL = str(REPO / ".venv" / "bin" / "flannelctl")
PORT = 10259
STRANGER = "hIfkP6R5l5u6m3pmRVVn0V1xSz0kGMbfVZkqsbyJ0mk="
"""A public key no lease has."""
_SCRAPE = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


def status(host: Host) -> tuple[int, dict[str, Any]]:
    """``flannelctl status -o json`` on the host (its mounts too: wireguard-go's socket is in its own /run)."""
    r = host.run(FLANNELCTL, "status", f"--etcd-endpoints={ETCD_URL}", f"--subnet-file={host.subnet_file}",
                 "--healthz-ip=127.0.0.1", f"--healthz-port={PORT}", "--timeout=5", "-o", "json", check=False)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)


def drift_metric(host: Host) -> float | None:
    text = host.run(sys.executable, "-c", _SCRAPE, f"http://127.0.0.1:{PORT}/metrics").stdout
    line = next((x for x in text.splitlines() if x.startswith("flannel_drift_entries ")), None)
    return float(line.split()[1]) if line else None


@pytest.fixture(scope="module")
def c() -> Iterator[Cluster]:
    yield from wg_cluster('{"Type":"wireguard"}', ipv6=False, hosts=0)


def start(c: Cluster, host: Host, reconcile: str) -> None:
    c.start_flanneld(host, "--healthz-ip=127.0.0.1", f"--healthz-port={PORT}", f"--reconcile-interval={reconcile}",
                     "--probe-interval=1")
    c.wait_ready(host)


def test_a_removed_peer_and_a_stranger_are_named_until_flanneld_repairs_them(c: Cluster) -> None:
    h1, h2 = c.add_host(1), c.add_host(2)
    for h in (h1, h2):
        h.run("sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")  # no address event kicking the reconcile
    start(c, h1, "3600")
    start(c, h2, "2")
    key2 = pubkey(h2)
    assert eventually(lambda: peers(h1) == {key2}, timeout=20)
    assert eventually(lambda: status(h1)[0] == 0, timeout=20), status(h1)
    code, doc = status(h1)
    assert doc["drift"]["checked"] and doc["drift"]["backend_type"] == "wireguard"

    wg(h1, "set", "flannel-wg", "peer", key2, "remove")
    wg(h1, "set", "flannel-wg", "peer", STRANGER, "allowed-ips", "10.99.0.0/24")
    code, doc = status(h1)
    whats = sorted(e["what"] for e in doc["drift"]["entries"])
    assert code == 1 and whats == [f"stale wireguard peer {STRANGER} on flannel-wg: no lease has this key",
                                   f"wireguard peer {key2} for {subnet_of(h2)} missing on flannel-wg"], doc
    fixes = {e["fix"] for e in doc["drift"]["entries"]}
    assert fixes == {f"wg set flannel-wg peer {STRANGER} remove",
                     f"wg set flannel-wg peer {key2} endpoint {h2.ip}:51820 allowed-ips {subnet_of(h2)}"}
    assert {(f["code"], f["subject"]) for f in doc["findings"] if f["severity"] == "error"} == {
        ("drift", w) for w in whats}
    assert eventually(lambda: drift_metric(h1) == 2, timeout=15), drift_metric(h1)

    c.stop_flanneld(h1)
    start(c, h1, "1")  # adopts the device with its drift, and repairs it at its first reconcile
    assert eventually(lambda: status(h1)[0] == 0, timeout=20), status(h1)
    assert peers(h1) == {key2}
    assert eventually(lambda: drift_metric(h1) == 0, timeout=15), drift_metric(h1)
