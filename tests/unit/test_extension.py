"""The extension backend's command contract, with real ``/bin/sh`` commands writing what they see to files."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from flannel.backend.base import BackendContext, ExternalInterface
from flannel.backend.extension import (
    CommandError,
    ExtensionBackend,
    ExtensionConfig,
    ExtensionNetwork,
    parse_extension_config,
    run_command,
)
from flannel.backend.registry import create_backend
from flannel.config import parse_network_config
from flannel.errors import ConfigError
from flannel.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.subnet.manager import WatchResult
from tests.waiting import wait_until

EXT = ExternalInterface(name="eth0", index=2, mtu=1400, iface_addr=IPv4Address("198.18.0.1"),
                        iface_v6_addr=IPv6Address("2001:db8::1"), ext_addr=IPv4Address("203.0.113.1"),
                        ext_v6_addr=IPv6Address("2001:db8::99"))
DUAL = ',"EnableIPv6":true,"IPv6Network":"fd00:10::/48"'


class FakeSM:
    def __init__(self) -> None:
        self.attrs: list[LeaseAttrs] = []

    async def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        self.attrs.append(attrs)
        return Lease(subnet=IPv4Network("10.244.7.0/24"), ipv6_subnet=IPv6Network("fd00:10:0:7::/64"), attrs=attrs)


def config(backend: dict[str, object], extra: str = DUAL) -> object:
    return parse_network_config(f'{{"Network":"10.244.0.0/16"{extra},"Backend":{json.dumps(backend)}}}')


def dump(tmp: Path, name: str) -> str:
    """A command writing its variables to ``name.env`` and its stdin to ``name.in``."""
    return (f'env | grep -E "^(NETWORK|SUBNET|IPV6SUBNET|PUBLIC_IP|PUBLIC_IPV6)=" | sort > {tmp}/{name}.env; '
            f"cat > {tmp}/{name}.in")


def env_of(tmp: Path, name: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (tmp / f"{name}.env").read_text().splitlines())


def peer(i: int, public: str = "198.18.0.9", data: str | None = '"peer-data"', v6: bool = True,
         backend_type: str = "extension") -> Lease:
    return Lease(subnet=IPv4Network(f"10.244.{i}.0/24"),
                 ipv6_subnet=IPv6Network(f"fd00:10:0:{i}::/64") if v6 else None,
                 attrs=LeaseAttrs(public_ip=IPv4Address(public), backend_type=backend_type, backend_data=data,
                                  public_ipv6=IPv6Address(f"2001:db8::{i}") if v6 else None))


def test_config_reads_the_four_commands_and_rejects_non_strings(caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_extension_config({"Type": "extension", "subnetaddcommand": "echo a", "ShutdownCommand": "x",
                                  "Bogus": 1})
    assert cfg == ExtensionConfig(subnet_add="echo a")
    assert "Backend.ShutdownCommand is not implemented" in caplog.text
    assert "ignoring unknown key Backend.Bogus" in caplog.text
    with pytest.raises(ConfigError, match=r"Backend\.PreStartupCommand must be a string"):
        parse_extension_config({"PreStartupCommand": ["echo"]})


async def test_commands_run_through_the_shell_with_pipes_variables_and_stdin(tmp_path: Path) -> None:
    out = await run_command("X", 'read line; echo "$line-$FOO" | tr a-z A-Z', {"FOO": "bar"}, stdin="abc")
    assert out == "ABC-BAR"


async def test_a_failing_command_reports_its_status_and_stderr() -> None:
    with pytest.raises(CommandError, match=r"'echo oops >&2; exit 3' exited with status 3: oops"):
        await run_command("SubnetAddCommand", "echo oops >&2; exit 3", {})


async def test_a_command_running_too_long_is_killed(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match=r"timed out after 1\.5s"):
        await run_command("X", f"sleep 30 & echo $! > {tmp_path}/pid; wait", {}, timeout=1.5)
    pid = (tmp_path / "pid").read_text().strip()
    assert pid, "the command did not get as far as starting its child"

    def gone() -> bool:
        stat = Path(f"/proc/{pid}/stat")
        return not stat.exists() or stat.read_text().split()[2] == "Z"

    # The whole process group got SIGKILL; the kernel needs a moment to reap it.
    await wait_until(gone, f"the command's child {pid} gone")


async def test_startup_commands_publish_backend_data_and_see_the_documented_variables(tmp_path: Path) -> None:
    sm = FakeSM()
    cfg = config({"Type": "extension", "PreStartupCommand": "echo '<my \"data\">' | tr a-z A-Z",
                  "PostStartupCommand": dump(tmp_path, "post")})
    backend = create_backend(BackendContext(subnet_manager=sm, ext_iface=EXT), cfg)  # type: ignore[arg-type]
    assert isinstance(backend, ExtensionBackend)
    network = await backend.register_network(cfg)  # type: ignore[arg-type]
    attrs = sm.attrs[0]
    assert (attrs.backend_type, attrs.public_ip, attrs.public_ipv6) == (
        "extension", EXT.iface_addr, EXT.iface_v6_addr)  # the interface addresses (as upstream)
    assert json.loads(attrs.backend_data or "") == '<MY "DATA">'
    # Go's json.Marshal escapes <, > and & even inside the raw BackendData: the stored bytes match a Go node's.
    assert attrs.to_json().endswith('"BackendType":"extension","BackendData":"\\u003cMY \\"DATA\\"\\u003e"}')
    assert env_of(tmp_path, "post") == {"NETWORK": "10.244.0.0/16", "SUBNET": "10.244.7.0/24",
                                        "IPV6SUBNET": "fd00:10:0:7::/64", "PUBLIC_IP": "198.18.0.1",
                                        "PUBLIC_IPV6": "2001:db8::1"}
    assert (tmp_path / "post.in").read_text() == "\n"
    assert network.mtu == 1400


async def test_without_a_pre_startup_command_there_is_no_backend_data() -> None:
    sm = FakeSM()
    cfg = config({"Type": "extension"}, extra="")
    await ExtensionBackend(BackendContext(subnet_manager=sm, ext_iface=EXT), cfg).register_network(  # type: ignore[arg-type]
        cfg)  # type: ignore[arg-type]
    assert sm.attrs[0].backend_data is None and sm.attrs[0].public_ipv6 is None
    assert sm.attrs[0].to_json() == '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"extension"}'


async def test_a_failing_pre_startup_command_is_fatal() -> None:
    cfg = config({"Type": "extension", "PreStartupCommand": "false"})
    with pytest.raises(CommandError, match="PreStartupCommand 'false' exited with status 1"):
        await ExtensionBackend(BackendContext(subnet_manager=FakeSM(), ext_iface=EXT), cfg).register_network(  # type: ignore[arg-type]
            cfg)  # type: ignore[arg-type]


def network(tmp_path: Path, add: str | None = None, remove: str | None = None) -> ExtensionNetwork:
    cfg = ExtensionConfig(subnet_add=add if add is not None else dump(tmp_path, "add"),
                          subnet_remove=remove if remove is not None else dump(tmp_path, "remove"))
    own = Lease(subnet=IPv4Network("10.244.7.0/24"))
    return ExtensionNetwork(own, 1400, cfg, timeout=5)


async def test_subnet_add_and_remove_get_the_lease_variables_and_backend_data_on_stdin(tmp_path: Path) -> None:
    net = network(tmp_path)
    await net.handle_events([LeaseEvent(EventType.ADDED, peer(3))])
    want = {"SUBNET": "10.244.3.0/24", "PUBLIC_IP": "198.18.0.9", "IPV6SUBNET": "fd00:10:0:3::/64",
            "PUBLIC_IPV6": "2001:db8::3"}
    assert env_of(tmp_path, "add") == want
    assert (tmp_path / "add.in").read_text() == "peer-data\n"
    await net.handle_events([LeaseEvent(EventType.REMOVED, peer(3))])
    assert env_of(tmp_path, "remove") == want and (tmp_path / "remove.in").read_text() == "peer-data\n"


async def test_an_unchanged_readd_runs_nothing_and_a_changed_lease_is_removed_then_added(tmp_path: Path) -> None:
    log_file = tmp_path / "calls"
    net = network(tmp_path, add=f'echo "add $SUBNET $PUBLIC_IP" >> {log_file}',
                  remove=f'echo "del $SUBNET $PUBLIC_IP" >> {log_file}')
    await net.handle_events([LeaseEvent(EventType.ADDED, peer(3, v6=False))])
    await net.handle_events([LeaseEvent(EventType.ADDED, dataclasses.replace(peer(3, v6=False), revision=9))])
    await net.handle_events([LeaseEvent(EventType.ADDED, peer(3, public="198.18.0.10", v6=False))])
    assert log_file.read_text().splitlines() == [
        "add 10.244.3.0/24 198.18.0.9", "del 10.244.3.0/24 198.18.0.9", "add 10.244.3.0/24 198.18.0.10"]


async def test_failures_are_logged_with_status_and_stderr_and_never_stop_the_network(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    marker = tmp_path / "ok"
    net = network(tmp_path, add=f'if [ "$SUBNET" = 10.244.3.0/24 ]; then echo no route >&2; exit 2; fi; '
                                f"touch {marker}")
    await net.handle_events([LeaseEvent(EventType.ADDED, peer(3)), LeaseEvent(EventType.ADDED, peer(4))])
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "SubnetAddCommand for lease 10.244.3.0-24&fd00:10:0:3::-64 failed" in errors[0]
    assert "exited with status 2: no route" in errors[0]
    assert "attempt 2 of 3" in caplog.text  # retried before giving up
    assert marker.exists() and "10.244.3.0-24&fd00:10:0:3::-64" not in net.applied


async def test_foreign_and_malformed_leases_are_skipped_with_a_message(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    net = network(tmp_path)
    await net.handle_events([LeaseEvent(EventType.ADDED, peer(3, backend_type="host-gw")),
                             LeaseEvent(EventType.ADDED, peer(4, data='{"not":"a string"}'))])
    assert not (tmp_path / "add.env").exists()
    assert "ignoring non-extension lease 10.244.3.0-24" in caplog.text
    assert "skipping SubnetAddCommand for lease 10.244.4.0-24" in caplog.text


# -- SubnetAddResyncInterval: SubnetAddCommand re-run for every remote lease ---------------------------------


def test_resync_is_off_by_default_and_read_as_seconds() -> None:
    assert parse_extension_config({"Type": "extension"}).resync_interval == 0
    assert parse_extension_config({"SubnetAddCommand": "true", "SubnetAddResyncInterval": 30}).resync_interval == 30


def test_a_resync_interval_without_an_add_command_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    parse_extension_config({"SubnetAddResyncInterval": 30})
    assert "Backend.SubnetAddResyncInterval is set but there is no SubnetAddCommand" in caplog.text


def calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_resync_reruns_the_add_command_for_every_current_remote_lease_only(tmp_path: Path) -> None:
    log_file = tmp_path / "calls"
    net = network(tmp_path, add=f'echo "add $SUBNET" >> {log_file}', remove="true")
    await net.handle_events([LeaseEvent(EventType.ADDED, peer(3, v6=False)),
                             LeaseEvent(EventType.ADDED, peer(4, v6=False)),
                             LeaseEvent(EventType.ADDED, peer(5, v6=False))])
    await net.handle_events([LeaseEvent(EventType.REMOVED, peer(5, v6=False))])
    assert await net.resync() == 0
    assert calls(log_file) == ["add 10.244.3.0/24", "add 10.244.4.0/24", "add 10.244.5.0/24",
                               "add 10.244.3.0/24", "add 10.244.4.0/24"]


async def test_resync_retries_a_failed_add_and_then_counts_it_as_applied(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    ready = tmp_path / "ready"
    net = network(tmp_path, add=f"test -e {ready}", remove="true")
    await net.handle_events([LeaseEvent(EventType.ADDED, peer(3, v6=False))])
    assert net.applied == {} and list(net.failed) == ["10.244.3.0-24"]
    assert await net.resync() == 1
    assert "resync: SubnetAddCommand for lease 10.244.3.0-24 failed" in caplog.text
    ready.touch()
    assert await net.resync() == 0
    assert list(net.applied) == ["10.244.3.0-24"] and net.failed == {}
    assert "succeeded after an earlier failure" in caplog.text


async def test_a_failing_resync_is_a_warning_and_the_lease_stays_applied(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "broken"
    net = network(tmp_path, add=f"if [ -e {broken} ]; then echo RTNETLINK answers: nope >&2; exit 2; fi",
                  remove="true")
    await net.handle_events([LeaseEvent(EventType.ADDED, peer(3, v6=False))])
    broken.touch()
    assert await net.resync() == 1
    found = [r for r in caplog.records if "resync" in r.getMessage()]
    assert [r.levelno for r in found] == [logging.WARNING]
    assert "exited with status 2: RTNETLINK answers: nope" in found[0].getMessage()
    assert list(net.applied) == ["10.244.3.0-24"]


async def test_an_undecodable_lease_is_not_retried_by_resync(tmp_path: Path) -> None:
    net = network(tmp_path)
    await net.handle_events([LeaseEvent(EventType.ADDED, peer(4, data='{"not":"a string"}'))])
    assert net.applied == {} and net.failed == {}
    assert await net.resync() == 0


async def test_run_resyncs_at_the_interval_and_returns_when_the_watch_ends(tmp_path: Path) -> None:
    log_file = tmp_path / "calls"
    cfg = ExtensionConfig(subnet_add=f'echo "add $SUBNET" >> {log_file}', resync_interval=1)
    net = ExtensionNetwork(Lease(subnet=IPv4Network("10.244.7.0/24")), 1400, cfg, timeout=5)

    async def watch() -> AsyncIterator[WatchResult]:
        yield WatchResult(snapshot=(peer(3, v6=False),))
        await wait_until(lambda: len(calls(log_file)) >= 3, "the resync to run twice", timeout=30)

    await asyncio.wait_for(net.run(watch()), 60)
    assert calls(log_file)[:3] == ["add 10.244.3.0/24"] * 3
