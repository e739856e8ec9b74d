"""Fixtures for the multi-host end-to-end tests: one cluster of namespaces per module."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "end-to-end tests need root (network namespaces)"
    return None


def _missing_tools() -> list[str]:
    return [tool for tool in ("etcd", "etcdctl", "ip", "bridge", "ping") if shutil.which(tool) is None]


def _cluster(**kwargs: str) -> Iterator[Cluster]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    missing = _missing_tools()
    if missing:
        pytest.fail(f"missing tools: {', '.join(missing)} (make test installs them)")
    c = Cluster(**kwargs)
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from _cluster()


@pytest.fixture(scope="module")
def dual_stack_cluster() -> Iterator[Cluster]:
    """Like ``cluster``, with an IPv6 underlay and ``EnableIPv6`` / ``IPv6Network`` in the config."""
    yield from _cluster(ipv6_network="fd00:10:244::/56")


def _root_state() -> tuple[str, str, str]:
    import subprocess

    def out(*cmd: str) -> str:
        return subprocess.run(list(cmd), capture_output=True, text=True, check=False).stdout

    links = "\n".join(line.split("@")[0].split(":")[1].strip() for line in out("ip", "-o", "link", "show").splitlines())
    return links, out("ip", "-4", "route", "show", "table", "all"), out("ip", "-6", "route", "show", "table", "all")


@pytest.fixture(scope="module", autouse=True)
def root_namespace_unchanged() -> Iterator[None]:
    """The root namespace's links and routes are the same after the module as before it."""
    before = _root_state()
    yield
    assert _root_state() == before, "an end-to-end test changed the root network namespace"
