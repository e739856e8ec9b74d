"""The aws-vpc backend: each node routes its own subnet to its ENI in the VPC's route tables.

Upstream had it until v0.20.0. Its behaviour is kept: instance id and region from instance metadata, the ENI
holding the external interface's address, source/destination check switched off on it, ``RouteTableID``
(absent: the table associated with the ENI's subnet, else the VPC's main table; a string; or a list),
blackhole routes inside the network deleted at start, the own subnet routed to the ENI in every table. The
lease carries ``PublicIP`` only (no ``BackendType``) and ``FLANNEL_MTU`` is the interface's MTU: nothing is
encapsulated, the VPC moves the packets.

Beyond upstream: a route that is already right is left alone (upstream deleted and re-created it on every
start); one that points elsewhere is replaced in place with ``ReplaceRoute`` and the instance/ENI it pointed
to is logged; the table's route quota is counted (a warning from 90 %, a clear error instead of a failing
create when full); and the own route is checked every ``RouteCheckInterval`` seconds and repaired when it was
deleted, changed, or is no longer ``active``. A check that fails, or that finds the table full, opens the
readiness condition ``cloud-route`` (``/readyz`` answers 503 saying why) until a check succeeds; EC2 being
away never stops the daemon once it has started, and nothing else is touched meanwhile.

The cloud work is done before the lease is acquired, so a node that cannot use EC2 (no credentials, no
metadata, no such table) fails without taking a subnet (upstream acquired the lease first).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from flannel.backend.awsvpc_api import EC2, AWSError, read_identity
from flannel.backend.awsvpc_config import AWSVPCConfig, parse_awsvpc_config
from flannel.backend.awsvpc_routes import OwnRoute, TablePlan, plan_table
from flannel.backend.base import BackendContext, LeasedNetwork
from flannel.backoff import RepeatLimiter, repeats
from flannel.config import NetworkConfig
from flannel.errors import ConfigError, FlannelError
from flannel.lease import Lease, LeaseAttrs
from flannel.readiness import CLOUD_ROUTE, READINESS
from flannel.subnet.manager import WatchResult

log = logging.getLogger(__name__)

UNREADY_AFTER = 2
"""Failed checks in a row that open ``CLOUD_ROUTE`` (one alone may be a hiccup the next round repairs)."""
CHECK_ATTEMPTS = 3
"""Attempts of one call in a periodic check; the next check retries anyway."""


class TableFullError(FlannelError):
    """The route table has no room for the own route."""


class AWSVPCBackend:
    """Finds the node in EC2, then registers the lease and programs its route."""

    def __init__(self, ctx: BackendContext, config: NetworkConfig) -> None:
        self.cfg = parse_awsvpc_config(config.backend)
        if config.enable_ipv6:
            raise ConfigError("the aws-vpc backend supports IPv4 only; set EnableIPv6 to false", "EnableIPv6")
        if not config.enable_ipv4 or config.network is None:
            raise ConfigError("the aws-vpc backend needs an IPv4 Network", "Network")
        if ctx.ext_iface.iface_addr is None or ctx.ext_iface.ext_addr is None:
            raise FlannelError(f"the aws-vpc backend needs an IPv4 address on {ctx.ext_iface.name}")
        self.ctx = ctx

    async def register_network(self, config: NetworkConfig) -> AWSVPCNetwork:
        ext = self.ctx.ext_iface
        assert ext.iface_addr is not None and ext.ext_addr is not None and config.network is not None
        identity = await read_identity()
        log.info("EC2 instance %s in region %s (instance metadata at %s, %s)", identity.instance_id,
                 identity.region, identity.endpoint, identity.metadata_version)
        ec2 = await EC2.open(identity.region)
        log.info("EC2 API at %s, credentials from boto3's %r source", ec2.endpoint, ec2.credential_method)
        eni = await find_eni(ec2, identity.instance_id, ext.iface_addr)
        await disable_source_dest_check(ec2, eni)
        if self.cfg.route_tables:
            tables = self.cfg.route_tables
            await check_tables_exist(ec2, tables)
        else:
            tables = (await detect_route_table(ec2, eni),)
        lease = await self.ctx.subnet_manager.acquire_lease(LeaseAttrs(public_ip=ext.ext_addr))
        network = AWSVPCNetwork(lease, ext.mtu, ec2, str(eni["NetworkInterfaceId"]), tables, config.network,
                                self.cfg)
        await network.program(at_start=True)
        return network


async def find_eni(ec2: EC2, instance_id: str, address: IPv4Address) -> dict[str, Any]:
    """The instance's network interface that holds ``address`` among its private addresses."""
    answer = await ec2.call("describe_instances", InstanceIds=[instance_id])
    instances = [i for r in answer.get("Reservations") or [] for i in r.get("Instances") or []]
    if not instances:
        raise AWSError(f"EC2 instance {instance_id} (from instance metadata) not found at {ec2.endpoint}")
    for eni in instances[0].get("NetworkInterfaces") or []:
        if any(a.get("PrivateIpAddress") == str(address) for a in eni.get("PrivateIpAddresses") or []):
            log.info("found %s that has %s IP address", eni.get("NetworkInterfaceId"), address)
            return dict(eni)
    raise AWSError(f"unable to find ENI that matches the {address} IP address: instance {instance_id} has none")


async def disable_source_dest_check(ec2: EC2, eni: dict[str, Any]) -> None:
    """Switch the ENI's source/destination check off (pods' addresses are not the ENI's); only when on.

    A failure is a warning, as upstream: the operator may have switched it off already by other means.
    """
    eni_id = eni["NetworkInterfaceId"]
    if eni.get("SourceDestCheck") is False:
        log.info("SourceDestCheck is already off on %s", eni_id)
        return
    try:
        await ec2.call("modify_network_interface_attribute", NetworkInterfaceId=eni_id,
                       SourceDestCheck={"Value": False})
        log.info("SourceDestCheck switched off on %s", eni_id)
    except AWSError as exc:
        log.warning("failed to disable SourceDestCheck on %s: %s", eni_id, exc)


async def detect_route_table(ec2: EC2, eni: dict[str, Any]) -> str:
    """The table associated with the ENI's subnet, else the VPC's main table (a subnet with no explicit
    association uses the main one)."""
    subnet_id, vpc_id = eni.get("SubnetId"), eni.get("VpcId")
    answer = await ec2.call("describe_route_tables",
                            Filters=[{"Name": "association.subnet-id", "Values": [subnet_id]}])
    for table in answer.get("RouteTables") or []:
        if any(a.get("SubnetId") == subnet_id for a in table.get("Associations") or []):
            log.info("found route table %s (associated with subnet %s)", table["RouteTableId"], subnet_id)
            return str(table["RouteTableId"])
    answer = await ec2.call("describe_route_tables", Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    for table in answer.get("RouteTables") or []:
        if table.get("VpcId") == vpc_id and any(a.get("Main") for a in table.get("Associations") or []):
            log.info("found route table %s (main table of %s)", table["RouteTableId"], vpc_id)
            return str(table["RouteTableId"])
    raise AWSError(f"main route table not found for {vpc_id} (subnet {subnet_id} has no table of its own)")


async def check_tables_exist(ec2: EC2, tables: tuple[str, ...]) -> None:
    """Every configured table can be read; else an error naming the one that cannot (before any lease)."""
    for table_id in tables:
        try:
            answer = await ec2.call("describe_route_tables", RouteTableIds=[table_id])
        except AWSError as exc:
            if exc.code not in ("InvalidRouteTableID.NotFound", "InvalidRouteTableId.Malformed"):
                raise
            answer = {}
        if not any(t.get("RouteTableId") == table_id for t in answer.get("RouteTables") or []):
            raise AWSError(f"route table {table_id} (Backend.RouteTableID) does not exist at {ec2.endpoint}")


class AWSVPCNetwork(LeasedNetwork):
    """The lease, the MTU, and the own route in each table, checked every ``RouteCheckInterval`` seconds."""

    def __init__(self, lease: Lease, mtu: int, ec2: EC2, eni_id: str, tables: tuple[str, ...],
                 network: IPv4Network, cfg: AWSVPCConfig) -> None:
        super().__init__(lease, mtu)
        self.ec2 = ec2
        self.eni_id = eni_id
        self.tables = tables
        self.network = network
        self.cfg = cfg
        self._failures = 0
        self._quiet = RepeatLimiter(300.0)

    @property
    def subnet(self) -> IPv4Network:
        assert self.lease.subnet is not None
        return self.lease.subnet

    async def program(self, at_start: bool = False) -> None:
        """Bring every table in line: at start also delete blackholes, and let any failure stop the start."""
        attempts = None if at_start else CHECK_ATTEMPTS
        for table_id in self.tables:
            plan = await self._plan(table_id, attempts)
            if at_start:
                for dst in plan.blackholes:
                    await self._delete_blackhole(table_id, dst)
            self._report_quota(plan)
            await self._fix_own(plan, attempts)

    async def _call(self, operation: str, attempts: int | None, **params: Any) -> dict[str, Any]:
        if attempts is None:
            return await self.ec2.call(operation, **params)
        return await self.ec2.call(operation, attempts=attempts, **params)

    async def _plan(self, table_id: str, attempts: int | None) -> TablePlan:
        answer = await self._call("describe_route_tables", attempts, RouteTableIds=[table_id])
        tables = [t for t in answer.get("RouteTables") or [] if t.get("RouteTableId") == table_id]
        if not tables:
            raise AWSError(f"route table {table_id} is gone from {self.ec2.endpoint}")
        return plan_table(tables[0], self.subnet, self.eni_id, self.network, self.cfg.route_limit)

    async def _delete_blackhole(self, table_id: str, dst: str) -> None:
        log.info("removing blackhole route %s from %s", dst, table_id)
        try:
            await self.ec2.call("delete_route", RouteTableId=table_id, DestinationCidrBlock=dst)
        except AWSError as exc:
            if exc.code != "InvalidRoute.NotFound":  # another node's start got there first
                log.error("error cleaning up blackhole route %s in %s: %s", dst, table_id, exc)

    def _report_quota(self, plan: TablePlan) -> None:
        if plan.full:
            raise TableFullError(
                f"route table {plan.table_id} is full: {plan.counted - 1} of {plan.limit} routes are used, no room "
                f"for {self.subnet} (raise the quota 'Routes per route table' and Backend.RouteLimit, or use "
                f"another table)")
        if plan.near_full:
            held = self._quiet.check(f"quota {plan.table_id}")
            if held is not None:
                log.warning("route table %s holds %d of its %d routes: it is nearly full (every node needs one)%s",
                            plan.table_id, plan.counted, plan.limit, repeats(held))

    async def _fix_own(self, plan: TablePlan, attempts: int | None) -> None:
        table_id, dst = plan.table_id, str(self.subnet)
        if plan.own is OwnRoute.OK:
            log.debug("route %s -> %s in %s is in place", dst, self.eni_id, table_id)
            return
        params = {"RouteTableId": table_id, "DestinationCidrBlock": dst, "NetworkInterfaceId": self.eni_id}
        if plan.own is OwnRoute.WRONG:
            log.warning("route %s in %s pointed to %s; replacing it with %s", dst, table_id, plan.found,
                        self.eni_id)
            try:
                await self._call("replace_route", attempts, **params)
                log.info("route replaced in %s: %s -> %s", table_id, dst, self.eni_id)
                return
            except AWSError as exc:
                if exc.code not in ("InvalidRoute.NotFound", "InvalidParameterValue"):
                    raise
                # gone between the describe and the replace: create it instead
        try:
            await self._call("create_route", attempts, **params)
        except AWSError as exc:
            if exc.code == "RouteLimitExceeded":
                raise TableFullError(f"route table {table_id} is full (EC2 refused {dst}: {exc})") from None
            if exc.code != "RouteAlreadyExists":
                raise
            # another writer added it between the describe and the create: make it ours
            await self._call("replace_route", attempts, **params)
        log.info("route added to %s: %s -> %s", table_id, dst, self.eni_id)

    async def check_once(self) -> None:
        """One periodic check; failures are logged (rate-limited) and, twice in a row, make the node unready."""
        try:
            await self.program()
        except FlannelError as exc:
            self._failures += 1
            held = self._quiet.check(str(exc))
            if held is not None:
                log.error("checking route %s -> %s failed, next check in %ds: %s%s", self.subnet, self.eni_id,
                          self.cfg.check_interval, exc, repeats(held))
            if self._failures >= UNREADY_AFTER or isinstance(exc, TableFullError):
                READINESS.problem(CLOUD_ROUTE, str(exc))
            return
        if self._failures:
            log.info("route %s -> %s checked again after %d failed checks", self.subnet, self.eni_id,
                     self._failures)
        self._failures = 0
        READINESS.resolved(CLOUD_ROUTE)

    async def run(self, results: AsyncIterator[WatchResult]) -> None:
        # Other nodes program their own routes: the lease watch is never consumed (upstream's SimpleNetwork).
        while True:
            await asyncio.sleep(self.cfg.check_interval)
            await self.check_once()
