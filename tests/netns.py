"""Network namespaces for tests that need a real kernel: helpers and pytest fixtures.

Everything a test creates lives in a namespace named ``fpy<6 hex>-<n>``; the 6 hex digits are unique per
test run and are registered with the run's PID in /run/fpy-netns, so ``cleanup_stale`` can remove what a
crashed run left behind without touching the namespaces of a run that is still going (other engineers run
tests on this machine at the same time). Nothing is ever added to the root namespace.

Test modules use the fixtures by importing them (``from tests.netns import netns_fixture  # noqa: F401``);
the fixture is then requested as ``netns`` (or ``netns_factory``).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

PREFIX_FAMILY = "fpy"
OWNER_DIR = "/run/fpy-netns"
NETNS_DIR = "/var/run/netns"
UNDERLAY_DEV = "eth0"
UNDERLAY_IP = "198.18.0.1"
UNDERLAY_CIDR = f"{UNDERLAY_IP}/24"

_NAME_RE = re.compile(r"^([a-z]+[0-9a-f]{6})-")


def have_root() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (the ip command)"
    return None


def make_prefix(family: str = PREFIX_FAMILY) -> str:
    """A fresh ``fpy<6 hex>-`` prefix, registered as owned by this process."""
    prefix = f"{family}{secrets.token_hex(3)}-"
    os.makedirs(OWNER_DIR, exist_ok=True)
    with open(os.path.join(OWNER_DIR, prefix[:-1]), "w") as f:
        f.write(str(os.getpid()))
    return prefix


def _owner_alive(owner: str) -> bool:
    try:
        with open(os.path.join(OWNER_DIR, owner)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_netns(startswith: str = "") -> list[str]:
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(startswith))


def delete_netns(name: str) -> None:
    """Remove a namespace, killing any process still in it first (by PID, as ``ip netns pids`` lists)."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False)
    for pid in pids.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def cleanup_stale(prefix_family: str = PREFIX_FAMILY) -> list[str]:
    """Delete ``prefix_family*`` namespaces whose owning run is gone; returns their names."""
    removed = []
    for name in list_netns(prefix_family):
        m = _NAME_RE.match(name)
        if m and _owner_alive(m.group(1)):
            continue
        delete_netns(name)
        removed.append(name)
    with contextlib.suppress(FileNotFoundError):
        for owner in os.listdir(OWNER_DIR):
            if owner.startswith(prefix_family) and not _owner_alive(owner):
                os.unlink(os.path.join(OWNER_DIR, owner))
    return removed


def cleanup_prefix(prefix: str) -> None:
    """Delete every namespace of one run, and its ownership record."""
    for name in list_netns(prefix):
        delete_netns(name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(OWNER_DIR, prefix[:-1]))


class NetNS:
    """A named network namespace; a context manager that deletes it (and stops its processes) on exit."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._procs: list[subprocess.Popen[str]] = []
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, text=True)
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            delete_netns(name)
            raise

    def run(
        self, cmd: Sequence[str], check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (``ip netns exec NAME ...``), capturing text output."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd], check=check, capture_output=True, text=True, input=input
        )

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n NAME ARGS...`` (cheaper than ``ip netns exec``)."""
        return subprocess.run(["ip", "-n", self.name, *args], check=check, capture_output=True, text=True)

    def ip_json(self, *args: str) -> Any:
        """``ip -j ARGS`` in the namespace, decoded; an empty list when ``ip`` prints nothing."""
        out = subprocess.run(["ip", "-n", self.name, "-j", *args], check=True, capture_output=True, text=True)
        return json.loads(out.stdout) if out.stdout.strip() else []

    def bridge_json(self, *args: str) -> Any:
        out = self.run(["bridge", "-j", *args])
        return json.loads(out.stdout) if out.stdout.strip() else []

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start a process inside the namespace; it is stopped by PID when the namespace is deleted."""
        proc: subprocess.Popen[str] = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *cmd], text=True, **kwargs
        )
        self._procs.append(proc)
        return proc

    def add_underlay(self, dev: str = UNDERLAY_DEV, cidr: str = UNDERLAY_CIDR) -> None:
        """An up device carrying a 198.18/15 address: what a VXLAN device needs beneath it.

        A veth whose peer (``DEV-peer``) stays in the same namespace: this kernel has no dummy driver.
        """
        self.ip("link", "add", dev, "type", "veth", "peer", "name", f"{dev}-peer")
        self.ip("addr", "add", cidr, "dev", dev)
        self.ip("link", "set", f"{dev}-peer", "up")
        self.ip("link", "set", dev, "up")

    def ifindex(self, dev: str) -> int:
        return int(self.ip_json("link", "show", "dev", dev)[0]["ifindex"])

    def delete(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()
        delete_netns(self.name)

    def __enter__(self) -> NetNS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()


def veth_pair(a: NetNS, a_dev: str, b: NetNS, b_dev: str) -> None:
    """Connect two namespaces with a veth pair (created inside ``a``, one end moved to ``b``), both up."""
    a.ip("link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b.name)
    a.ip("link", "set", a_dev, "up")
    b.ip("link", "set", b_dev, "up")


_run_prefix: str | None = None
_counter = itertools.count()


def run_prefix() -> str:
    """This process's prefix, made on first use (stale namespaces of dead runs are removed then)."""
    global _run_prefix
    if _run_prefix is None:
        cleanup_stale()
        _run_prefix = make_prefix()
        atexit.register(cleanup_prefix, _run_prefix)
    return _run_prefix


def new_netns(underlay: bool = True) -> NetNS:
    """A fresh namespace of this run: ``lo`` up and, unless told otherwise, ``eth0`` with 198.18.0.1/24."""
    ns = NetNS(f"{run_prefix()}{next(_counter)}")
    if underlay:
        try:
            ns.add_underlay()
        except BaseException:
            ns.delete()
            raise
    return ns


@pytest.fixture(name="netns")
def netns_fixture() -> Iterator[NetNS]:
    """A fresh namespace with ``lo`` up and a veth underlay ``eth0`` (198.18.0.1/24), deleted afterwards."""
    reason = have_root()
    if reason:
        pytest.skip(reason)
    with new_netns() as ns:
        yield ns


@pytest.fixture(name="netns_factory")
def netns_factory_fixture() -> Iterator[Callable[..., NetNS]]:
    """Make as many namespaces as a test needs (``netns_factory(underlay=False)``); all deleted afterwards."""
    reason = have_root()
    if reason:
        pytest.skip(reason)
    made: list[NetNS] = []

    def factory(underlay: bool = True) -> NetNS:
        ns = new_netns(underlay)
        made.append(ns)
        return ns

    try:
        yield factory
    finally:
        for ns in made:
            ns.delete()
