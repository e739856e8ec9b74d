"""Fixtures that make real etcd servers (and remove them) for the etcd integration tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from flannel.subnet.etcd_gateway import EtcdGatewayStore
from flannel.subnet.etcd_store import EtcdStore, EtcdStoreOptions
from tests.etcd_server import EtcdServer, start_etcd


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdServer]:
    """One plain-HTTP etcd shared by the session; tests keep apart by using their own ``prefix``."""
    server = start_etcd()
    yield server
    server.stop()


@pytest.fixture
def etcd_tls() -> Iterator[EtcdServer]:
    """An etcd that requires TLS client certificates."""
    server = start_etcd(tls=True)
    yield server
    server.stop()


@pytest.fixture
def etcd_auth() -> Iterator[EtcdServer]:
    """An etcd with authentication on (user ``root``, password ``pw``)."""
    server = start_etcd()
    server.enable_auth("root", "pw")
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A fresh etcd prefix, so tests sharing the session server do not see one another's keys."""
    return f"/test-{uuid.uuid4().hex[:12]}/network"


STORE_CLASSES: dict[str, type[EtcdStore] | type[EtcdGatewayStore]] = {"grpc": EtcdStore, "gateway": EtcdGatewayStore}


@pytest.fixture(params=sorted(STORE_CLASSES))
def store_cls(request: pytest.FixtureRequest) -> type[EtcdStore] | type[EtcdGatewayStore]:
    """Each etcd client in turn: gRPC (the default) and the JSON gateway (experimental, issue #16)."""
    return STORE_CLASSES[request.param]


@pytest.fixture
async def store(etcd: EtcdServer, store_cls: type[EtcdStore]) -> AsyncIterator[EtcdStore]:
    """A store of each client connected to the session server."""
    s = await store_cls.open(EtcdStoreOptions(endpoints=(etcd.endpoint,), request_timeout=5.0))
    yield s
    await s.close()
