"""Two simulated ECS instances running flanneld with the ali-vpc backend against the strict VPC API fake.

Each host has the ECS metadata service at its real address, 100.100.100.200, on its own ``lo`` (no override
needed). The test reads the entries back through the SDK, checks the lease bytes in etcd, copies the table
into the "VPC router" (next hop instance → its address) and pings across hosts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.cloud_hosts import CloudCluster, cloud_cluster, in_netns, needs
from tests.e2e.cluster import eventually, subnet_of

needs("aliyunsdkvpc", "ali")

from aliyunsdkcore.client import AcsClient  # noqa: E402
from aliyunsdkvpc.request.v20160428.DescribeRouteEntryListRequest import DescribeRouteEntryListRequest  # noqa: E402

from tests.cloud_fakes.aliyun import AliyunVPC, Entry, metadata_paths  # noqa: E402
from tests.cloud_fakes.metadata import Metadata  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.root]

KEY_ID, KEY_SECRET = "LTAIe2eflannel", "e2e-ali-secret"
METADATA_IP = "100.100.100.200"
REGION, TABLE = "cn-shanghai", "vtb-e2e1"


@pytest.fixture(scope="module")
def cloud() -> Iterator[tuple[CloudCluster, AliyunVPC]]:
    fake = AliyunVPC(REGION, {KEY_ID: KEY_SECRET})
    fake.add_vpc("vpc-e2e1", "vrt-e2e1", TABLE)
    backend = {"Type": "ali-vpc", "AccessKeyID": KEY_ID, "AccessKeySecret": KEY_SECRET, "RouteCheckInterval": 1}
    with cloud_cluster(backend, fake) as cc:
        for n in (1, 2):
            host = cc.add_host(n, METADATA_IP, Metadata(metadata_paths(REGION, f"i-e2e0{n}", "vpc-e2e1")))
            fake.instances[f"i-e2e0{n}"] = host.ip
            cc.start(host, {"FLANNEL_ALIYUN_VPC_ENDPOINT": cc.api.url})
        for host in cc.c.hosts.values():
            cc.c.wait_ready(host)
            cc.c.add_pod(host)
        yield cc, fake


def entries_through_sdk(cc: CloudCluster) -> dict[str, tuple[str, str]]:
    """Destination → (next hop instance, status) of the custom entries, read with the SDK inside the router."""

    def read() -> dict[str, tuple[str, str]]:
        client = AcsClient(KEY_ID, KEY_SECRET, REGION, port=cc.api.port, auto_retry=False)
        request = DescribeRouteEntryListRequest()
        request.set_endpoint(cc.api.address)
        request.set_protocol_type("http")
        request.set_accept_format("json")
        request.set_RouteTableId(TABLE)
        request.set_MaxResult(100)
        answer = json.loads(client.do_action_with_exception(request))
        return {e["DestinationCidrBlock"]: (e["NextHops"]["NextHop"][0]["NextHopId"], e["Status"])
                for e in answer["RouteEntrys"]["RouteEntry"]}

    return in_netns(cc.ul, read)


def test_each_instance_routes_its_subnet_to_itself_and_pods_ping_across(cloud: tuple[CloudCluster, AliyunVPC]) -> None:
    cc, fake = cloud
    want = {subnet_of(h): (f"i-e2e0{n}", "Available") for n, h in cc.c.hosts.items()}
    assert eventually(lambda: entries_through_sdk(cc) == want), entries_through_sdk(cc)
    for h in cc.c.hosts.values():
        assert cc.lease_value(subnet_of(h)) == f'{{"PublicIP":"{h.ip}","PublicIPv6":null}}'
    cc.sync_router({dst: fake.instances[hop] for dst, (hop, _) in want.items()})
    assert eventually(lambda: all(cc.c.matrix().values()), timeout=20), cc.c.matrix()


def test_an_entry_left_by_a_former_owner_is_replaced(cloud: tuple[CloudCluster, AliyunVPC]) -> None:
    cc, fake = cloud
    h2 = cc.c.hosts[2]
    # The former owner is an instance that is gone (a node running flanneld would itself remove an entry that
    # points at it for a subnet that is not its own, and the replacement here would not be seen).
    fake.instances["i-e2e09"] = "198.18.0.99"
    with fake._lock:
        table = fake.tables[TABLE]
        table[:] = [e for e in table if e.cidr != subnet_of(h2)] + [Entry("rte-former", subnet_of(h2), "i-e2e09")]
    assert eventually(lambda: entries_through_sdk(cc).get(subnet_of(h2)) == ("i-e2e02", "Available"))
    assert eventually(lambda: "points at i-e2e09, not at this instance (i-e2e02)" in h2.log_file.read_text())
