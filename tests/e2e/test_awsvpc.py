"""aws-vpc end to end: three hosts in namespaces, moto's EC2 server, metadata served by the test.

The hosts' routes live in the VPC's route table (moto), not in their kernels; the test's "VPC router" copies
that table into the underlay switch's kernel, so pods ping across hosts only if the table is right. moto
enforces IAM: flanneld runs with a user whose policy is exactly docs/backends.md's list. The tests share one
cluster and run in order; each leaves it working.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from tests.cloud.aws_world import AWSWorld, log_of
from tests.e2e.cluster import Cluster, Host, eventually, subnet_of
from tests.e2e.conftest import _skip_reason

pytestmark = [pytest.mark.e2e, pytest.mark.root]
pytest.importorskip("boto3", reason="the aws extra is not installed (pip install -e '.[dev,aws]')")
pytest.importorskip("moto", reason="moto[server] (a dev dependency) is not installed (pip install -e '.[dev,aws]')")

BACKEND = '{"Type":"aws-vpc","RouteCheckInterval":1}'
PORT = 10256
HEALTHZ = f"--healthz-port={PORT}"


@pytest.fixture(scope="module")
def world() -> Iterator[AWSWorld]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    c = Cluster(backend=BACKEND, private_mounts=True)
    w = AWSWorld(c)
    try:
        w.launch()  # moto's start-up overlaps etcd's
        c.start()
        w.start()
        for n in (1, 2, 3):
            host = c.add_host(n)
            w.add_instance(host, mode="v1" if n == 3 else "v2")
            w.start_flanneld(host, HEALTHZ)
        for host in c.hosts.values():
            c.wait_ready(host, timeout=60)
        yield w
    finally:
        w.close()
        c.close()


def own_route(w: AWSWorld, n: int) -> dict[str, str] | None:
    sub = subnet_of(w.c.hosts[n])
    return next((r for r in w.routes(w.table_a) if r.get("DestinationCidrBlock") == sub), None)


def test_each_host_routes_its_subnet_to_its_eni_in_the_subnets_table(world: AWSWorld) -> None:
    w = world
    for n in (1, 2, 3):
        route = own_route(w, n)
        assert route is not None and route["NetworkInterfaceId"] == w.instances[n]["eni"], route
        assert route["State"] == "active"
    assert not any(r.get("NetworkInterfaceId") for r in w.routes(w.main_table)), "the main table is not used"
    enis = w.ec2("describe_network_interfaces",
                 NetworkInterfaceIds=[w.instances[n]["eni"] for n in (1, 2, 3)])["NetworkInterfaces"]
    assert [e["SourceDestCheck"] for e in enis] == [False, False, False]


def test_lease_is_public_ip_only_and_mtu_is_the_interfaces(world: AWSWorld) -> None:
    c = world.c
    for host in c.hosts.values():
        assert c.leases()[subnet_of(host).replace("/", "-")] == json.dumps(
            {"PublicIP": host.ip, "PublicIPv6": None}, separators=(",", ":"))
        assert host.env()["FLANNEL_MTU"] == "1500"


def test_metadata_is_read_with_a_token_and_without_one_where_the_service_has_no_token_api(world: AWSWorld) -> None:
    c, w = world.c, world
    for n, version in ((1, "IMDSv2"), (3, "IMDSv1")):
        assert f"({version})" in log_of(c.hosts[n]) or f", {version})" in log_of(c.hosts[n])
    v2 = w.metadata.instances[c.hosts[1].ns].requests
    assert ("PUT", "/latest/api/token", False) in v2
    assert all(valid for method, _, valid in v2 if method == "GET")
    v1 = w.metadata.instances[c.hosts[3].ns].requests
    assert any(method == "GET" and not valid for method, _, valid in v1)


def test_pods_ping_across_hosts_once_the_vpc_router_has_the_tables_routes(world: AWSWorld) -> None:
    c, w = world.c, world
    for host in c.hosts.values():
        c.add_pod(host)
    installed = w.sync_router()
    assert {f"{subnet_of(c.hosts[n])} via {c.hosts[n].ip}" for n in (1, 2, 3)} <= installed
    assert eventually(lambda: all(c.matrix().values()), timeout=20), c.matrix()


def test_a_restart_removes_blackholes_in_the_network_and_leaves_a_route_that_is_right_alone(
        world: AWSWorld) -> None:
    c, w = world.c, world
    eni = w.ec2("create_network_interface", SubnetId=w.subnet_a)["NetworkInterface"]["NetworkInterfaceId"]
    for dst in ("10.244.250.0/24", "10.99.0.0/24"):
        w.ec2("create_route", RouteTableId=w.table_a, DestinationCidrBlock=dst, NetworkInterfaceId=eni)
    w.ec2("delete_network_interface", NetworkInterfaceId=eni)
    states = {r["DestinationCidrBlock"]: r["State"] for r in w.routes(w.table_a)}
    assert states["10.244.250.0/24"] == states["10.99.0.0/24"] == "blackhole"
    h1 = c.hosts[1]
    for action in ("CreateRoute", "ReplaceRoute"):
        w.inject(action, "TestCanary", status=400)  # consumed only if the action is called
    try:
        c.stop_flanneld(h1)
        w.start_flanneld(h1, HEALTHZ)
        c.wait_ready(h1, timeout=60)
        pending = w.faults()["pending"]
        assert pending == {"CreateRoute": 1, "ReplaceRoute": 1}, f"own route rewritten: {pending}"
    finally:
        w.faults("DELETE")
    after = {r["DestinationCidrBlock"] for r in w.routes(w.table_a)}
    assert "10.244.250.0/24" not in after and "10.99.0.0/24" in after
    assert "removing blackhole route 10.244.250.0/24" in log_of(h1)
    w.ec2("delete_route", RouteTableId=w.table_a, DestinationCidrBlock="10.99.0.0/24")


def test_the_periodic_check_restores_a_deleted_route_and_replaces_one_pointing_elsewhere(world: AWSWorld) -> None:
    c, w = world.c, world
    sub = subnet_of(c.hosts[2])
    w.ec2("delete_route", RouteTableId=w.table_a, DestinationCidrBlock=sub)
    assert eventually(lambda: (own_route(w, 2) or {}).get("NetworkInterfaceId") == w.instances[2]["eni"],
                      timeout=20), own_route(w, 2)
    w.ec2("replace_route", RouteTableId=w.table_a, DestinationCidrBlock=sub,
          NetworkInterfaceId=w.instances[3]["eni"])
    assert eventually(lambda: (own_route(w, 2) or {}).get("NetworkInterfaceId") == w.instances[2]["eni"],
                      timeout=20), own_route(w, 2)
    log = log_of(c.hosts[2])
    assert f"pointed to instance {w.instances[3]['instance']}" in log or f"ENI {w.instances[3]['eni']}" in log, \
        log[-2000:]
    w.sync_router()
    assert eventually(lambda: all(c.matrix().values()), timeout=20), c.matrix()


def test_throttling_and_server_errors_are_retried_with_backoff(world: AWSWorld) -> None:
    c, w = world.c, world
    h1 = c.hosts[1]
    c.stop_flanneld(h1)
    # DescribeInstances is called at start only, so the other hosts' periodic checks cannot take these faults.
    w.inject("DescribeInstances", "RequestLimitExceeded", status=503, count=1)
    w.inject("DescribeInstances", "InternalError", status=500, count=1)
    w.start_flanneld(h1, HEALTHZ)
    c.wait_ready(h1, timeout=60)
    log = log_of(h1).rsplit("EC2 instance", 1)[-1]
    assert "DescribeInstances at http://198.18.0.3:5000: RequestLimitExceeded" in log
    assert "DescribeInstances at http://198.18.0.3:5000: InternalError" in log
    assert "attempt 2 of 6, retrying" in log
    assert w.faults()["pending"].get("DescribeInstances", 0) == 0


READYZ = """
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"""


def readyz(host: Host, port: int) -> tuple[int, str]:
    r = host.run(sys.executable, "-c", READYZ, f"http://127.0.0.1:{port}/readyz", check=False)
    code, _, body = r.stdout.partition(" ")
    return (int(code), body) if code.isdigit() else (0, r.stderr)


def test_an_ec2_outage_makes_the_node_unready_and_touches_nothing_until_it_ends(world: AWSWorld) -> None:
    c, w = world.c, world
    h2 = c.hosts[2]
    assert eventually(lambda: readyz(h2, PORT)[0] == 200, timeout=20), readyz(h2, PORT)
    route = own_route(w, 2)
    w.inject("DescribeRouteTables", "InternalError", status=500, count=1000)
    try:
        assert eventually(lambda: "cloud-route" in readyz(h2, PORT)[1], timeout=30), readyz(h2, PORT)
        assert readyz(h2, PORT)[0] == 503
        assert h2.proc is not None and h2.proc.poll() is None, "an outage never stops the daemon"
    finally:
        w.faults("DELETE")
    assert own_route(w, 2) == route
    assert eventually(lambda: readyz(h2, PORT)[0] == 200, timeout=30), readyz(h2, PORT)


# -- bad input: a spare host whose flanneld runs under its own etcd prefix, one config per test -------------------

@pytest.fixture(scope="module")
def spare(world: AWSWorld) -> Host:
    host = world.c.add_host(4)
    world.add_instance(host)
    return host


def start_with(w: AWSWorld, host: Host, name: str, backend: object, env: dict[str, str] | None = None,
               args: tuple[str, ...] = ()) -> str:
    """flanneld on ``host`` with ``backend`` under the etcd prefix ``/<name>/network``; returns the prefix."""
    prefix = f"/{name}/network"
    w.c.etcdctl("put", f"{prefix}/config", json.dumps({"Network": "10.244.0.0/16", "Backend": backend}))
    host.log_file.write_text("")
    w.start_flanneld(host, f"--etcd-prefix={prefix}", *args, env=env)
    return prefix


def fails_with(w: AWSWorld, host: Host, text: str) -> str:
    code, log = w.wait_exit(host)
    assert code == 1 and text in log, log[-3000:]
    assert "Traceback" not in log
    return log


def leases_under(w: AWSWorld, prefix: str) -> str:
    return w.c.etcdctl("get", "--prefix", "--keys-only", f"{prefix}/subnets").stdout.strip()


@pytest.mark.parametrize(("value", "message"), [
    (42, "Unexpected RouteTableID type. Must be string or array of strings."),
    (["rtb-0123456789abcdef0", 7], "Unexpected type in RouteTableID slice. Must be strings."),
])
def test_a_route_table_id_of_a_wrong_type_is_refused_with_upstreams_message(
        world: AWSWorld, spare: Host, value: object, message: str) -> None:
    w = world
    start_with(w, spare, "badtype", {"Type": "aws-vpc", "RouteTableID": value})
    try:
        assert eventually(lambda: message in log_of(spare), timeout=30), log_of(spare)[-2000:]
        assert "Backend.RouteTableID" in log_of(spare) or message in log_of(spare)
    finally:
        w.c.stop_flanneld(spare)


def test_a_route_table_that_does_not_exist_stops_the_start_without_taking_a_subnet(
        world: AWSWorld, spare: Host) -> None:
    prefix = start_with(world, spare, "notable", {"Type": "aws-vpc", "RouteTableID": "rtb-0123456789abcdef0"})
    fails_with(world, spare, "route table rtb-0123456789abcdef0 (Backend.RouteTableID) does not exist")
    assert leases_under(world, prefix) == ""


def test_missing_credentials_are_a_clear_error_naming_where_boto3_looked(world: AWSWorld, spare: Host) -> None:
    env = world.env(AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
    start_with(world, spare, "nocreds", {"Type": "aws-vpc"}, env=env)
    fails_with(world, spare, "no AWS credentials found; looked for environment variables")


def test_wrong_credentials_are_refused_naming_the_source_and_never_the_secret(world: AWSWorld, spare: Host) -> None:
    secret = "wRoNgSeCrEt0123456789abcdefghijklmnopqrs"
    env = world.env(AWS_SECRET_ACCESS_KEY=secret)
    start_with(world, spare, "badcreds", {"Type": "aws-vpc"}, env=env)
    log = fails_with(world, spare, "credentials from boto3's 'env' source")
    assert "AuthFailure" in log and secret not in log  # EC2's code for a signature it cannot validate


def test_unreachable_metadata_fails_after_bounded_retries_naming_the_endpoint(world: AWSWorld, spare: Host) -> None:
    env = world.env(AWS_EC2_METADATA_SERVICE_ENDPOINT="http://127.0.0.1:9/")
    start_with(world, spare, "nometa", {"Type": "aws-vpc"}, env=env)
    fails_with(world, spare, "instance metadata at http://127.0.0.1:9/ unreachable after 5 attempts")


def test_a_nearly_full_table_warns_and_a_full_one_is_a_clear_error(world: AWSWorld, spare: Host) -> None:
    w = world
    tables = {}
    for size in (45, 50):
        table = w.ec2("create_route_table", VpcId=w.vpc)["RouteTable"]["RouteTableId"]
        for i in range(size):
            w.ec2("create_route", RouteTableId=table, DestinationCidrBlock=f"172.31.{i}.0/24",
                  NetworkInterfaceId=w.instances[1]["eni"])
        tables[size] = table
    start_with(w, spare, "nearfull", {"Type": "aws-vpc", "RouteTableID": [w.table_a, tables[45]]})
    try:
        w.c.wait_ready(spare, timeout=60)
        assert f"route table {tables[45]} holds 46 of its 50 routes" in log_of(spare)
        sub = subnet_of(spare)
        for table in (w.table_a, tables[45]):
            assert any(r.get("DestinationCidrBlock") == sub and r.get("NetworkInterfaceId") == w.instances[4]["eni"]
                       for r in w.routes(table)), table
    finally:
        w.c.stop_flanneld(spare)
    start_with(w, spare, "full", {"Type": "aws-vpc", "RouteTableID": tables[50]})
    fails_with(w, spare, f"route table {tables[50]} is full: 50 of 50 routes are used")
    # A RouteLimit above the table's real quota: EC2's own refusal gives the same clear error.
    start_with(w, spare, "full2", {"Type": "aws-vpc", "RouteTableID": tables[50], "RouteLimit": 100})
    fails_with(w, spare, f"route table {tables[50]} is full (EC2 refused")


def test_an_instance_role_from_instance_metadata_is_a_credential_source(world: AWSWorld, spare: Host) -> None:
    w = world
    creds = w.role_credentials()
    w.metadata.instances[spare.ns].role = ("flannel-node", creds)
    start_with(w, spare, "role", {"Type": "aws-vpc"}, env=w.env(AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY=""),
               args=("-v=10",))
    try:
        w.c.wait_ready(spare, timeout=60)
        log = log_of(spare)
        assert "credentials from boto3's 'iam-role' source" in log
        assert creds["SecretAccessKey"] not in log and creds["Token"] not in log, "a credential reached the log"
        assert any(r.get("NetworkInterfaceId") == w.instances[4]["eni"] for r in w.routes(w.table_a))
    finally:
        w.c.stop_flanneld(spare)
        w.metadata.instances[spare.ns].role = None


@pytest.mark.parametrize(("body", "error"), [
    ("<DescribeInstancesResponse><reservationSet><item>", "DescribeInstances at http://198.18.0.3:5000: an "
                                                          "answer the SDK cannot parse"),
    ("<html>captive portal</html>", "(from instance metadata) not found at http://198.18.0.3:5000"),
])
def test_an_answer_that_is_not_what_the_sdk_expects_is_a_clear_error(
        world: AWSWorld, spare: Host, body: str, error: str) -> None:
    world.inject("DescribeInstances", "", status=200, body=body)
    start_with(world, spare, "garbage", {"Type": "aws-vpc"})
    fails_with(world, spare, error)


def test_a_subnet_without_a_table_of_its_own_uses_the_vpcs_main_table(world: AWSWorld) -> None:
    w = world
    host = w.c.add_host(120)  # 198.18.0.130: subnet B, which has no route table associated
    w.add_instance(host)
    start_with(w, host, "maintable", {"Type": "aws-vpc"})
    try:
        w.c.wait_ready(host, timeout=60)
        assert any(r.get("NetworkInterfaceId") == w.instances[120]["eni"] for r in w.routes(w.main_table))
        assert f"(main table of {w.vpc})" in log_of(host)
    finally:
        w.c.stop_flanneld(host)
