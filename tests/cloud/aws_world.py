"""An AWS "world" for the aws-vpc tests, on top of ``tests/e2e/cluster.py``'s underlay.

* moto's EC2 server (``tests/cloud/aws_moto.py``) in namespace ``<p>aws`` on the underlay at 198.18.0.3:5000;
* a VPC 198.18.0.0/16 with subnet A 198.18.0.0/25 (own route table, associated) and subnet B
  198.18.0.128/25 (no table of its own: the VPC's main table applies), seeded through boto3;
* per host, an instance whose ENI holds the host's underlay address, and instance metadata served by the test
  at 169.254.169.254 on the host's loopback (``tests/cloud/aws_metadata.py``);
* IAM, enforced by moto once seeding is done: flanneld gets the keys of a user whose policy is exactly the one
  docs/backends.md lists (``NODE_POLICY``), the test an administrator's;
* the "VPC router": ``sync_router()`` copies the VPC's routes into the kernel of the underlay switch ``<p>ul``
  (``<cidr> via <ENI's address>``), where every host's default route points, so that pods on different hosts
  reach each other exactly when the VPC's route tables say they should.

The test's own boto3 calls run in one worker thread that has entered ``<p>ul`` (setns), so the test process
reaches moto without any address or route in the root namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.cloud.aws_metadata import IMDS_IP, Instance, MetadataStandIn
from tests.e2e.cluster import ETCD_URL, FLANNELD, REPO, Cluster, Host, in_ns

MOTO_IP = "198.18.0.3"
MOTO_URL = f"http://{MOTO_IP}:5000"
REGION = "eu-west-1"
NODE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Resource": "*", "Action": [
        "ec2:DescribeInstances", "ec2:ModifyNetworkInterfaceAttribute", "ec2:DescribeRouteTables",
        "ec2:CreateRoute", "ec2:DeleteRoute", "ec2:ReplaceRoute"]}],
}
"""The least-privilege policy of docs/backends.md: every call the backend makes, nothing more."""


def _enter_netns(netns: str) -> None:
    fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
    finally:
        os.close(fd)


class AWSWorld:
    """moto, the VPC, instances, metadata and the router for one ``Cluster`` (already started)."""

    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.ul = f"{cluster.prefix}ul"
        self.metadata = MetadataStandIn()
        self.moto: subprocess.Popen[bytes] | None = None
        self.moto_log = cluster.tmp / "moto.log"
        self._pool = ThreadPoolExecutor(max_workers=1, initializer=_enter_netns, initargs=(self.ul,))
        self.instances: dict[int, dict[str, str]] = {}
        self.node_keys: dict[str, str] = {}
        self._admin: Any = None
        self._admin_keys = ("", "")
        self.router_routes: set[str] = set()

    # -- moto and seeding -----------------------------------------------------------------------------------

    def launch(self) -> None:
        """Start moto in its own namespace, listening on every address there; callable before the cluster's
        ``start()``, so that moto's slow start-up (importing its models) overlaps etcd's and the hosts'."""
        ns = self.c._add_ns(f"{self.c.prefix}aws")
        with open(self.moto_log, "wb") as log:
            self.moto = subprocess.Popen(
                ["ip", "netns", "exec", ns, str(REPO / ".venv" / "bin" / "python"), "-m", "tests.cloud.aws_moto",
                 "0.0.0.0", "5000"], cwd=REPO, stdout=log, stderr=log)

    def start(self) -> None:
        """Once the cluster is started: moto on the underlay at 198.18.0.3, ready and seeded."""
        if self.moto is None:
            self.launch()
        self.c._plug(f"{self.c.prefix}aws", "eth0", f"{MOTO_IP}/24")
        in_ns(self.ul, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        assert self.moto is not None
        deadline = time.monotonic() + 90
        while not self.run(self._moto_up):
            if time.monotonic() > deadline or self.moto.poll() is not None:
                raise RuntimeError(f"moto did not start: {self.moto_log.read_text()[-2000:]}")
            time.sleep(0.2)
        self.run(self._seed)

    def run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` in the worker thread that lives in the underlay switch's namespace."""
        return self._pool.submit(fn, *args).result(timeout=120)

    @staticmethod
    def _moto_up() -> bool:
        try:
            with urllib.request.urlopen(f"{MOTO_URL}/_faults", timeout=1):
                return True
        except OSError:
            return False

    def _client(self, service: str, key: str = "testing", secret: str = "testing") -> Any:
        import boto3

        return boto3.client(service, endpoint_url=MOTO_URL, region_name=REGION, aws_access_key_id=key,
                            aws_secret_access_key=secret)

    def _seed(self) -> None:
        ec2 = self._client("ec2")
        self.vpc = ec2.create_vpc(CidrBlock="198.18.0.0/16")["Vpc"]["VpcId"]
        self.subnet_a = ec2.create_subnet(VpcId=self.vpc, CidrBlock="198.18.0.0/25")["Subnet"]["SubnetId"]
        self.subnet_b = ec2.create_subnet(VpcId=self.vpc, CidrBlock="198.18.0.128/25")["Subnet"]["SubnetId"]
        self.table_a = ec2.create_route_table(VpcId=self.vpc)["RouteTable"]["RouteTableId"]
        ec2.associate_route_table(RouteTableId=self.table_a, SubnetId=self.subnet_a)
        tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [self.vpc]}])["RouteTables"]
        self.main_table = next(t["RouteTableId"] for t in tables
                               if any(a.get("Main") for a in t.get("Associations", [])))
        self.image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        iam = self._client("iam")
        iam.create_user(UserName="node")
        iam.put_user_policy(UserName="node", PolicyName="flannel", PolicyDocument=json.dumps(NODE_POLICY))
        key = iam.create_access_key(UserName="node")["AccessKey"]
        self.node_keys = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        admin = iam.create_access_key(UserName="admin")["AccessKey"]
        req = urllib.request.Request(f"{MOTO_URL}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=10):
            pass  # from here on moto checks every signature and IAM policy
        self._admin_keys = (admin["AccessKeyId"], admin["SecretAccessKey"])
        self._admin = self._client("ec2", *self._admin_keys)

    def ec2(self, operation: str, **params: Any) -> Any:
        """An EC2 call as the administrator (from the worker thread)."""
        return self.run(lambda: getattr(self._admin, operation)(**params))

    def admin(self, service: str, operation: str, **params: Any) -> Any:
        """A call to another of moto's services (IAM, STS) as the administrator."""
        return self.run(lambda: getattr(self._client(service, *self._admin_keys), operation)(**params))

    def role_credentials(self) -> dict[str, str]:
        """Temporary credentials of a role with ``NODE_POLICY``, as IMDS serves an instance role's."""
        # On AWS the principal is the service ec2.amazonaws.com; the test assumes the role itself (as the
        # administrator of moto's default account) to obtain the credentials IMDS then hands out.
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                         "Principal": {"AWS": "arn:aws:iam::123456789012:user/admin"}}]}
        arn = self.admin("iam", "create_role", RoleName="flannel-node",
                         AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        self.admin("iam", "put_role_policy", RoleName="flannel-node", PolicyName="flannel",
                   PolicyDocument=json.dumps(NODE_POLICY))
        creds = self.admin("sts", "assume_role", RoleArn=arn, RoleSessionName="i-node")["Credentials"]
        return {"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": creds["AccessKeyId"],
                "SecretAccessKey": creds["SecretAccessKey"], "Token": creds["SessionToken"],
                "Expiration": creds["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    # -- hosts ----------------------------------------------------------------------------------------------

    def add_instance(self, host: Host, mode: str = "v2") -> dict[str, str]:
        """An instance for ``host`` (ENI = its underlay address) and its metadata service."""
        subnet = self.subnet_a if ipaddress.IPv4Address(host.ip) < ipaddress.IPv4Address("198.18.0.128") \
            else self.subnet_b
        inst = self.ec2("run_instances", ImageId=self.image, MinCount=1, MaxCount=1, SubnetId=subnet,
                        PrivateIpAddress=host.ip)["Instances"][0]
        info = {"instance": inst["InstanceId"], "eni": inst["NetworkInterfaces"][0]["NetworkInterfaceId"],
                "ip": host.ip}
        self.instances[host.n] = info
        in_ns(host.ns, "ip", "addr", "add", f"{IMDS_IP}/32", "dev", "lo")
        self.metadata.serve(host.ns, Instance(info["instance"], REGION, mode=mode))
        return info

    def env(self, **extra: str) -> dict[str, str]:
        """flanneld's environment: the node user's keys, moto as the EC2 endpoint, no config files."""
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "AWS_ENDPOINT_URL_EC2": MOTO_URL, "AWS_CONFIG_FILE": "/nonexistent/config",
               "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials", **self.node_keys}
        env.update(extra)
        return {k: v for k, v in env.items() if v}

    def start_flanneld(self, host: Host, *args: str, env: dict[str, str] | None = None) -> None:
        """flanneld on ``host`` with the credentials in its environment (never on a command line)."""
        host.started = time.time()
        with open(host.log_file, "ab") as log:
            host.proc = subprocess.Popen(
                [*host.prefix(), FLANNELD, f"--etcd-endpoints={ETCD_URL}",
                 f"--subnet-file={host.subnet_file}", *args],
                env=self.env() if env is None else env, stdout=log, stderr=log)

    def wait_exit(self, host: Host, timeout: float = 60) -> tuple[int, str]:
        """The exit status and log of a flanneld expected to stop by itself."""
        assert host.proc is not None
        try:
            code = host.proc.wait(timeout)
        finally:
            if host.proc.poll() is None:
                host.proc.kill()
                host.proc.wait(5)
        host.proc = None
        return code, host.log_file.read_text()

    # -- the VPC router and faults -----------------------------------------------------------------------------

    def routes(self, table: str) -> list[dict[str, Any]]:
        answer = self.ec2("describe_route_tables", RouteTableIds=[table])
        return list(answer["RouteTables"][0]["Routes"])

    def sync_router(self) -> set[str]:
        """Copy every ENI route of the VPC's tables into ``<p>ul``'s kernel; returns the routes installed."""
        enis = {i["NetworkInterfaces"][0]["NetworkInterfaceId"]: i["PrivateIpAddress"]
                for r in self.ec2("describe_instances")["Reservations"] for i in r["Instances"]}
        wanted = set()
        for table in self.ec2("describe_route_tables")["RouteTables"]:
            for route in table["Routes"]:
                ip = enis.get(route.get("NetworkInterfaceId", ""))
                if ip and route.get("State") == "active":
                    wanted.add(f"{route['DestinationCidrBlock']} via {ip}")
        for stale in self.router_routes - wanted:
            in_ns(self.ul, "ip", "route", "del", *stale.split(), check=False)
        for route in wanted:
            in_ns(self.ul, "ip", "route", "replace", *route.split())
        self.router_routes = wanted
        return wanted

    def inject(self, action: str, code: str, status: int = 503, count: int = 1, body: str | None = None) -> None:
        """The next ``count`` ``action`` requests fail with ``code`` (tests/cloud/aws_moto.py's ``/_faults``)."""
        body = json.dumps({"action": action, "code": code, "status": status, "count": count, "body": body}).encode()

        def post() -> None:
            with urllib.request.urlopen(urllib.request.Request(f"{MOTO_URL}/_faults", data=body), timeout=10):
                pass

        self.run(post)

    def faults(self, method: str = "GET") -> dict[str, Any]:
        """The fault layer's state (``pending``, ``served``); ``DELETE`` drops what is pending."""
        def call() -> dict[str, Any]:
            req = urllib.request.Request(f"{MOTO_URL}/_faults", method=method)
            with urllib.request.urlopen(req, timeout=10) as answer:
                return dict(json.loads(answer.read()))

        return dict(self.run(call))

    def close(self) -> None:
        self.metadata.close()
        if self.moto is not None and self.moto.poll() is None:
            self.moto.terminate()
            try:
                self.moto.wait(10)
            except subprocess.TimeoutExpired:
                self.moto.kill()
                self.moto.wait(5)
        with contextlib.suppress(Exception):
            self._pool.shutdown(wait=True)


def log_of(host: Host) -> str:
    return Path(host.log_file).read_text() if Path(host.log_file).exists() else ""
