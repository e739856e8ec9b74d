"""Running a cloud route backend in the test process against its fake: a fixed lease, a context, a run task.

The backend's blocking SDK calls go over the loopback to a fake on 127.0.0.1 (no address is added anywhere;
the end-to-end tests use the real metadata addresses inside namespaces). Each test gets fresh readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from flannel.backend.base import BackendContext, ExternalInterface
from flannel.backend.registry import create_backend
from flannel.config import parse_network_config
from flannel.lease import Lease
from tests.backend_harness import FakeSubnetManager

SUBNET = "10.244.3.0/24"
OPENED: list[Any] = []
"""Networks registered by ``register``, for ``close_all``."""


def context(ext_addr: str, subnet: str = SUBNET) -> tuple[BackendContext, FakeSubnetManager]:
    addr = IPv4Address(ext_addr)
    ext = ExternalInterface(name="eth0", index=2, mtu=1500, iface_addr=addr, iface_v6_addr=None, ext_addr=addr,
                            ext_v6_addr=None)
    sm = FakeSubnetManager(Lease(subnet=IPv4Network(subnet)))
    return BackendContext(subnet_manager=sm, ext_iface=ext), sm


async def register(backend_section: dict[str, Any], ext_addr: str,
                   subnet: str = SUBNET) -> tuple[Any, FakeSubnetManager]:
    """Construct the backend the section names and register its network; returns (network, subnet manager)."""
    config = parse_network_config(json.dumps({"Network": "10.244.0.0/16", "Backend": backend_section}))
    ctx, sm = context(ext_addr, subnet)
    backend = create_backend(ctx, config)
    network = await backend.register_network(config)
    OPENED.append(network)
    return network, sm


def close_all() -> None:
    """Close the SDK clients of every network ``register`` made (their pooled sockets would otherwise be left
    to the garbage collector, which warns)."""
    while OPENED:
        close = getattr(OPENED.pop().driver, "close", None)
        if close is not None:
            close()


@contextlib.asynccontextmanager
async def running(network: Any) -> AsyncIterator[asyncio.Task[None]]:
    """The network's ``run`` as a task for the body; cancelled afterwards."""

    async def no_events() -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield None

    task = asyncio.create_task(network.run(no_events()))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(check: Any, timeout: float = 10.0) -> bool:
    """Poll ``check()`` (run in a thread: it may call an SDK) until true or ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await asyncio.to_thread(check):
            return True
        await asyncio.sleep(0.05)
    return bool(await asyncio.to_thread(check))
