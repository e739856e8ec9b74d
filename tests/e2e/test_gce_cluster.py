"""Two simulated Compute Engine VMs running flanneld with the gce backend against the strict Compute API fake.

Each host has its metadata server at 169.254.169.254 on its own ``lo`` (``Metadata-Flavor: Google`` required),
which also hands out the service account's access token: google-auth finds it as on a real VM
(``GCE_METADATA_HOST`` names the address, since ``metadata.google.internal`` does not resolve here). The test
reads the routes back through the SDK, checks the lease bytes in etcd, copies the routes into the "VPC
router" (next hop instance → its address) and pings across hosts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.cloud_hosts import CloudCluster, cloud_cluster, in_netns, needs
from tests.e2e.cluster import eventually, subnet_of

needs("googleapiclient.discovery", "gce")

from google.oauth2.credentials import Credentials  # noqa: E402
from googleapiclient import discovery  # noqa: E402
from googleapiclient.errors import HttpError  # noqa: E402

from tests.cloud_fakes.gce import GCECompute, metadata_paths  # noqa: E402
from tests.cloud_fakes.metadata import Metadata  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.root]

PROJECT, ZONE, NET = "flannel-e2e", "us-central1-a", "default"
METADATA_IP = "169.254.169.254"
READER_TOKEN = "ya29.test-reader"


@pytest.fixture(scope="module")
def cloud() -> Iterator[tuple[CloudCluster, GCECompute]]:
    fake = GCECompute(PROJECT, {READER_TOKEN})
    fake.networks.add(NET)
    with cloud_cluster({"Type": "gce", "RouteCheckInterval": 1}, fake) as cc:
        env = {"GCE_METADATA_HOST": METADATA_IP, "FLANNEL_GCE_API_ENDPOINT": f"{cc.api.url}/compute/v1/",
               "HOME": str(cc.c.tmp)}  # no gcloud credentials file of the machine's user is found first
        for n in (1, 2):
            token = f"ya29.node-{n}"
            fake.tokens.add(token)
            meta = Metadata(metadata_paths(PROJECT, ZONE, f"node-{n}", NET, token), {"Metadata-Flavor": "Google"})
            host = cc.add_host(n, METADATA_IP, meta)
            fake.instances[f"node-{n}"] = (ZONE, host.ip)
            cc.start(host, env)
        for host in cc.c.hosts.values():
            cc.c.wait_ready(host)
            cc.c.add_pod(host)
        yield cc, fake


def routes_through_sdk(cc: CloudCluster) -> dict[str, tuple[str, str, int]]:
    """name → (destRange, nextHopInstance, priority) of each host's route, read with routes.get from inside the
    router namespace; a route that does not exist (right now) is left out."""

    def read() -> dict[str, tuple[str, str, int]]:
        compute = discovery.build("compute", "v1", credentials=Credentials(READER_TOKEN), static_discovery=True,
                                  client_options={"api_endpoint": f"{cc.api.url}/compute/v1/"})
        try:
            out = {}
            for h in cc.c.hosts.values():
                name = "flannel-" + subnet_of(h).replace(".", "-").replace("/", "-")
                try:
                    r = compute.routes().get(project=PROJECT, route=name).execute()
                except HttpError as exc:  # between a replacement's delete and its insert
                    if exc.resp.status != 404:
                        raise
                    continue
                out[name] = (r["destRange"], r["nextHopInstance"], r["priority"])
            return out
        finally:
            compute.close()

    return in_netns(cc.ul, read)


def test_each_vm_routes_its_subnet_to_itself_and_pods_ping_across(cloud: tuple[CloudCluster, GCECompute]) -> None:
    cc, fake = cloud
    routes = routes_through_sdk(cc)
    for n, h in cc.c.hosts.items():
        name = "flannel-" + subnet_of(h).replace(".", "-").replace("/", "-")
        assert routes[name] == (subnet_of(h), fake.link("zones", ZONE, "instances", f"node-{n}"), 1000)
        assert cc.lease_value(subnet_of(h)) == f'{{"PublicIP":"{h.ip}","PublicIPv6":null}}'
    cc.sync_router({dst: fake.instance_ip(hop) for dst, hop, _ in routes.values()})
    assert eventually(lambda: all(cc.c.matrix().values()), timeout=20), cc.c.matrix()


def test_a_route_taken_by_another_instance_is_given_back(cloud: tuple[CloudCluster, GCECompute]) -> None:
    cc, fake = cloud
    h1 = cc.c.hosts[1]
    name = "flannel-" + subnet_of(h1).replace(".", "-").replace("/", "-")
    with fake._lock:
        fake.routes[name]["nextHopInstance"] = fake.link("zones", ZONE, "instances", "node-2")
    assert eventually(lambda: routes_through_sdk(cc).get(name, ("", "", 0))[1].endswith("/instances/node-1"))
    log = h1.log_file.read_text()
    assert "points at nextHopInstance" in log and "/instances/node-2, not at this instance" in log
