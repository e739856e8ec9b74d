"""Two simulated CVMs running flanneld with the tencent-vpc backend against the strict VPC API fake.

Each host reads its own metadata (at Tencent's metadata address 169.254.0.23, on the host's ``lo``; the
backend is pointed there with ``FLANNEL_TENCENT_METADATA_URL``, since ``metadata.tencentyun.com`` does not
resolve here), and programs its route through the real SDK. The test reads the table back through the SDK,
checks the lease bytes in etcd, copies the table into the "VPC router" and pings across hosts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.cloud_hosts import CloudCluster, cloud_cluster, in_netns, needs
from tests.e2e.cluster import eventually, subnet_of

needs("tencentcloud.common.common_client", "tencent")

from tencentcloud.common import credential  # noqa: E402
from tencentcloud.common.common_client import CommonClient  # noqa: E402
from tencentcloud.common.profile.client_profile import ClientProfile  # noqa: E402
from tencentcloud.common.profile.http_profile import HttpProfile  # noqa: E402

from tests.cloud_fakes.metadata import Metadata  # noqa: E402
from tests.cloud_fakes.tencent import TencentVPC, metadata_paths  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.root]

KEY_ID, KEY_SECRET = "AKIDe2eflannel", "e2e-tencent-secret"
METADATA_IP = "169.254.0.23"
VPC = "vpc-e2e0001"


@pytest.fixture(scope="module")
def cloud() -> Iterator[tuple[CloudCluster, TencentVPC]]:
    fake = TencentVPC({KEY_ID: KEY_SECRET})
    fake.add_table(VPC, "rtb-e2e0001")
    with cloud_cluster({"Type": "tencent-vpc", "RouteCheckInterval": 1}, fake) as cc:
        env = {"ACCESS_KEY_ID": KEY_ID, "ACCESS_KEY_SECRET": KEY_SECRET,
               "FLANNEL_TENCENT_VPC_ENDPOINT": cc.api.url,
               "FLANNEL_TENCENT_METADATA_URL": f"http://{METADATA_IP}/latest/meta-data"}
        for n in (1, 2):
            meta = Metadata(metadata_paths("ap-guangzhou", f"52:54:00:00:00:0{n}", VPC))
            host = cc.add_host(n, METADATA_IP, meta)
            fake.cvm_ips.add(host.ip)
            cc.start(host, env)
        for host in cc.c.hosts.values():
            cc.c.wait_ready(host)
            cc.c.add_pod(host)
        yield cc, fake


def table_through_sdk(cc: CloudCluster) -> dict[str, tuple[str, str, bool]]:
    """The USER routes of the VPC's table, read with the SDK from inside the router namespace."""

    def describe() -> dict[str, tuple[str, str, bool]]:
        client = CommonClient("vpc", "2017-03-12", credential.Credential(KEY_ID, KEY_SECRET), "ap-guangzhou",
                              ClientProfile(httpProfile=HttpProfile(protocol="http",
                                                                    endpoint=cc.api.url.removeprefix("http://"))))
        answer = client.call_json("DescribeRouteTables", {"Filters": [{"Name": "vpc-id", "Values": [VPC]}]})
        table = answer["Response"]["RouteTableSet"][0]
        return {r["DestinationCidrBlock"]: (r["GatewayType"], r["GatewayId"], r["Enabled"]) for r in table["RouteSet"]
                if r["RouteType"] == "USER"}

    return in_netns(cc.ul, describe)


def test_each_host_routes_its_subnet_to_itself_and_pods_ping_across(cloud: tuple[CloudCluster, TencentVPC]) -> None:
    cc, _ = cloud
    hosts = cc.c.hosts.values()
    want = {subnet_of(h): ("NORMAL_CVM", h.ip, True) for h in hosts}
    assert eventually(lambda: table_through_sdk(cc) == want), table_through_sdk(cc)
    for h in hosts:
        assert cc.lease_value(subnet_of(h)) == f'{{"PublicIP":"{h.ip}","PublicIPv6":null}}'
        assert h.env()["FLANNEL_MTU"] == "1500"
    cc.sync_router({dst: gw for dst, (_, gw, _) in want.items()})
    assert eventually(lambda: all(cc.c.matrix().values()), timeout=20), cc.c.matrix()


def test_a_route_deleted_in_the_console_comes_back(cloud: tuple[CloudCluster, TencentVPC]) -> None:
    cc, fake = cloud
    h1 = cc.c.hosts[1]
    table = fake.tables["rtb-e2e0001"]
    table.routes = [r for r in table.routes if r.destination != subnet_of(h1)]
    assert eventually(lambda: table_through_sdk(cc).get(subnet_of(h1)) == ("NORMAL_CVM", h1.ip, True))
    assert eventually(lambda: "was missing or wrong, repaired" in h1.log_file.read_text())
