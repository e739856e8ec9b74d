"""The fake API server's test hooks over HTTP, ``POST /_fake/<name>?<params>``, for a fake in another process.

End-to-end tests run the fake as a process inside a network namespace; these hooks let them change nodes and
put on outages there. Hooks are not authenticated, not counted as API requests, and answered even while the
fake plays a black hole. An outage that stops the listener (``down``) takes ``seconds`` and ends by itself,
since nothing could be asked to end it while nothing listens.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from tests.kube_fake.objects import ApiError
from tests.kube_fake.wire import Request, int_param

if TYPE_CHECKING:
    from tests.kube_fake.server import FakeKubeApi

_BACKGROUND: set[asyncio.Task[None]] = set()


async def handle(api: FakeKubeApi, req: Request) -> tuple[int, Any]:
    """Run hook ``req`` on ``api``: the status code and the JSON answer."""
    q, name = req.query, req.path.removeprefix("/_fake/")
    try:
        return await _run(api, name, q, req)
    except KeyError as exc:
        return 400, {"error": f"missing parameter {exc}"}
    except ValueError as exc:
        return 400, {"error": f"bad body: {exc}"}
    except ApiError as err:
        return err.code, err.body


async def _run(api: FakeKubeApi, name: str, q: dict[str, str], req: Request) -> tuple[int, Any]:
    if name == "drop-watches":
        return 200, {"dropped": api.drop_watches()}
    if name == "compact":
        upto = int_param(q, "resourceVersion", 0) or None
        return 200, {"compactedResourceVersion": api.compact(upto)}
    if name == "fail":
        retry_after = int_param(q, "retryAfter", 0) or None
        api.fail_next(int_param(q, "count", 1), int_param(q, "code", 503), retry_after)
        return 200, {"pending": api.faults.pending}
    if name == "fail-all":
        code = int_param(q, "code", 0) or None  # code=0 (or none): stop failing
        api.fail_all(code, int_param(q, "retryAfter", 0) or None)
        return 200, {"failing": code}
    if name == "hang":
        api.hang()
        return 200, {"hanging": True}
    if name == "unhang":
        api.unhang()
        return 200, {"hanging": False}
    if name == "down":
        seconds = float(q["seconds"])
        # After this answer is written: going down cuts every connection, this one included.
        task = asyncio.ensure_future(api.go_down(seconds))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        return 200, {"downFor": seconds}
    if name == "requests":
        return 200, {"total": sum(api.requests.values()), "counts": dict(api.requests)}
    if name == "add-nodes":
        api.add_nodes(int_param(q, "count", 1), q.get("prefix", "node-"))
        return 200, {"nodes": len(api.store.nodes), "resourceVersion": str(api.store.rv)}
    if name == "create-node":
        kwargs: dict[str, Any] = {"pod_cidr": q["podCIDR"]} if "podCIDR" in q else {}
        return 200, api.create_node(q["node"], **kwargs)
    if name == "patch-node":  # the body is a JSON merge patch, as ``kubectl patch --type merge`` sends
        patch = json.loads(req.body or b"{}")
        return 200, api.store.patch_node(q["node"], patch, "application/merge-patch+json")
    if name == "delete-node":
        return 200, api.delete_node(q["node"])
    if name == "node":
        return 200, api.store.get_node(q["node"])
    if name == "pod-cidrs":
        return 200, api.set_pod_cidrs(q["node"], [c for c in q.get("cidrs", "").split(",") if c])
    if name == "state":
        return 200, {"resourceVersion": str(api.store.rv), "compacted": str(api.store.compacted_rv),
                     "nodes": len(api.store.nodes), "openWatches": api.open_watches,
                     "hanging": api.faults.hanging}
    return 404, {"error": f"unknown hook {name!r}"}
