"""``FakeKubeApi``: a small, strict Kubernetes API server for nodes and pods, over HTTP or HTTPS.

It answers what flanneld asks (node get/list/watch, node status patches, pod get) the way kube-apiserver
does, including the refusals: a patch without a patch content type is 415, an unknown path 404, bad JSON
400, a stale resourceVersion 409, and every error is a ``Status`` object. Test hooks (here as methods, and
over HTTP under ``/_fake/`` for a fake running in another process or namespace, see ``hooks``) change nodes,
drop the open watches, compact the history, put on outages (``faults``: error answers with ``Retry-After``,
a black hole, down and back up), and count requests by verb and resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

from tests.kube_fake import hooks, wire
from tests.kube_fake.faults import Faults
from tests.kube_fake.objects import ApiError, JsonObject, bad_request, make_node, make_pod, success
from tests.kube_fake.store import PATCHERS, Store, TooOldResourceVersion, Watcher

_ROUTES = [
    (re.compile(r"^/api/v1/nodes$"), "nodes"),
    (re.compile(r"^/api/v1/nodes/(?P<name>[^/]+)$"), "node"),
    (re.compile(r"^/api/v1/nodes/(?P<name>[^/]+)/status$"), "node_status"),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$"), "pods"),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)$"), "pod"),
]
_UNSUPPORTED_PATCHES = ("application/json-patch+json", "application/apply-patch+yaml")


class FakeKubeApi:
    """The fake server; use ``async with FakeKubeApi(...) as api`` (or ``start``/``stop``), then ``api.url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, tls_dir: str | Path | None = None,
                 token: str | None = None, client_ca: bool = False, history_limit: int = 10000,
                 bookmark_interval: float = 60.0) -> None:
        self.host = host
        self.port = port
        self.tls_dir = Path(tls_dir) if tls_dir is not None else None
        self.tokens: set[str] = {token} if token else set()
        """Bearer tokens accepted; empty (and no client CA) means no authentication."""
        self.client_ca = client_ca
        """Also accept clients presenting a certificate signed by ``tls_dir/ca.crt``."""
        self.bookmark_interval = bookmark_interval
        self.store = Store(history_limit)
        self.requests: Counter[str] = Counter()
        """Requests served, by ``"<verb> <resource>"`` (verbs as in audit logs: get, list, watch, patch …)."""
        self.connections_accepted = 0
        """TCP connections accepted so far (shows whether clients keep connections alive)."""
        self.internal_errors: list[str] = []
        """Exceptions raised by the fake's own code while serving (tests assert that there are none)."""
        self.faults = Faults()
        """Outages in force (error answers, black hole); ``go_down``/``come_back`` stop and restart listening."""
        self._up_again: asyncio.TimerHandle | None = None
        self._server: asyncio.Server | None = None
        self._watches: dict[Watcher, asyncio.StreamWriter] = {}
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_dir else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self._ssl_context(),
                                                  limit=wire.MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every connection (the process stays usable for another fake)."""
        if self._up_again is not None:
            self._up_again.cancel()
            self._up_again = None
        self.faults.unhang()  # let held requests end
        if self._server is None:
            return
        self._server.close()
        self.drop_watches()
        for writer in list(self._connections.values()):
            writer.transport.abort()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        self._server = None

    async def __aenter__(self) -> FakeKubeApi:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- test hooks ---------------------------------------------------------------------------------------------

    def create_node(self, node: JsonObject | str, **kwargs: Any) -> JsonObject:
        """Create a node object, or a realistic one by name (``make_node`` keyword arguments apply)."""
        if isinstance(node, str):
            kwargs.setdefault("index", len(self.store.nodes))
            node = make_node(node, **kwargs)
        return self.store.create_node(node)

    def add_nodes(self, count: int, prefix: str = "node-") -> None:
        start = len(self.store.nodes)
        for i in range(start, start + count):
            self.store.create_node(make_node(f"{prefix}{i:05d}", index=i))

    def delete_node(self, name: str) -> JsonObject:
        return self.store.delete_node(name)

    def set_pod_cidrs(self, name: str, cidrs: list[str]) -> JsonObject:
        """What the node IPAM controller does: set ``spec.podCIDR`` and ``spec.podCIDRs``. Unlike an API
        request, this hook may also change CIDRs already set (the API server forbids that: 422)."""
        patch = {"spec": {"podCIDR": cidrs[0] if cidrs else None, "podCIDRs": cidrs or None}}
        return self.store.patch_node(name, patch, "application/merge-patch+json", force_pod_cidrs=True)

    def create_pod(self, namespace: str, name: str, node_name: str) -> JsonObject:
        return self.store.create_pod(namespace, make_pod(namespace, name, node_name))

    def drop_watches(self) -> int:
        """Cut every open watch connection without ending the chunked stream (a lost connection)."""
        for watcher, writer in list(self._watches.items()):
            writer.transport.abort()
            watcher.queue.put_nowait(None)
        return len(self._watches)

    def compact(self, upto: int | None = None) -> int:
        """Forget watch history up to ``upto`` (default: everything so far)."""
        return self.store.compact(upto)

    def fail_next(self, count: int, code: int = 503, retry_after: int | None = None) -> None:
        """Answer the next ``count`` API requests with ``code`` (500, 503, 504 or 429) instead of serving them."""
        self.faults.fail_next(count, code, retry_after)

    def fail_all(self, code: int | None, retry_after: int | None = None) -> None:
        """Answer every API request with ``code`` (``Retry-After: retry_after``) until ``fail_all(None)``."""
        self.faults.fail_all(code, retry_after)

    def hang(self) -> None:
        """Black hole until ``unhang``: connections are accepted, nothing is answered, watches go silent."""
        self.faults.hang()

    def unhang(self) -> None:
        self.faults.unhang()

    async def go_down(self, for_seconds: float | None = None) -> None:
        """Stop listening and cut every connection (connection refused); back after ``for_seconds`` if given."""
        await self.stop()
        if for_seconds is not None:
            self._up_again = asyncio.get_running_loop().call_later(
                for_seconds, lambda: asyncio.ensure_future(self.come_back()))

    async def come_back(self) -> None:
        """Listen again on the same port, as a restarted kube-apiserver: its watch cache starts now, so a watch
        from an earlier version is answered 410 (the history is compacted)."""
        self._up_again = None
        if self._server is None:
            self.compact()
            await self.start()

    @property
    def listening(self) -> bool:
        return self._server is not None

    def request_count(self, verb: str | None = None, resource: str | None = None) -> int:
        return sum(n for key, n in self.requests.items()
                   if (verb is None or key.split()[0] == verb) and (resource is None or key.split()[1] == resource))

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    # -- serving ------------------------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_dir is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.tls_dir / "server.crt", self.tls_dir / "server.key")
        ctx.set_alpn_protocols(["http/1.1"])
        if self.client_ca:
            ctx.load_verify_locations(self.tls_dir / "ca.crt")
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        self.connections_accepted += 1
        try:
            while True:
                try:
                    request = await wire.read_request(reader)
                except wire.BadRequestLine as exc:
                    wire.write_text(writer, 400, f"400 Bad Request: {exc}")
                    await writer.drain()
                    break
                if request is None or not await self._respond(request, reader, writer):
                    break
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away
        finally:
            del self._connections[task]
            writer.transport.abort()

    async def _respond(self, req: wire.Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must be closed afterwards."""
        if req.path.startswith("/_fake/"):
            code, body = await hooks.handle(self, req)
            wire.write_json(writer, code, body, req.keep_alive)
            await writer.drain()
            return req.keep_alive
        await self.faults.wait_running()  # a black hole answers nothing
        try:
            route, match = self._route(req.path)
            verb, resource = _audit_verb(req, route)
            self.requests[f"{verb} {resource}"] += 1
            self._authenticate(req, writer)
            if (failure := self.faults.failure()) is not None:
                wire.write_json(writer, failure.code, failure.error().body, req.keep_alive, failure.headers())
                await writer.drain()
                return req.keep_alive
            if verb == "watch":
                if resource != "nodes":
                    raise ApiError(405, "MethodNotAllowed", f"the fake cannot watch {resource}")
                await self._watch(req, reader, writer)
                return False
            code, body = self._dispatch(req, route, match)
        except ApiError as err:
            code, body = err.code, err.body
        except (OSError, asyncio.IncompleteReadError):
            raise  # the client went away (during a watch, say): not a bug of the fake
        except Exception as exc:  # a bug in the fake: answer as kube-apiserver would, and keep it for the test
            self.internal_errors.append(f"{req.method} {req.target}: {exc!r}")
            code, body = 500, ApiError(500, "InternalError", f"fake: {exc!r}").body
        wire.write_json(writer, code, body, req.keep_alive)
        await writer.drain()
        return req.keep_alive

    def _route(self, path: str) -> tuple[str, dict[str, str]]:
        if path in ("/version", "/healthz", "/readyz", "/livez"):
            return path, {}
        for pattern, name in _ROUTES:
            if m := pattern.match(path):
                return name, m.groupdict()
        raise ApiError(404, "NotFound", "the server could not find the requested resource", {})

    def _authenticate(self, req: wire.Request, writer: asyncio.StreamWriter) -> None:
        if not self.tokens and not self.client_ca:
            return
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        if scheme == "Bearer" and token in self.tokens:
            return
        if self.client_ca and writer.get_extra_info("peercert"):
            return
        raise ApiError(401, "Unauthorized", "Unauthorized")

    def _dispatch(self, req: wire.Request, route: str, m: dict[str, str]) -> tuple[int, Any]:
        store, method = self.store, req.method
        if route == "/version":
            return 200, {"major": "1", "minor": "30", "gitVersion": "v1.30.2-fake", "platform": "linux/amd64"}
        if route.startswith("/"):
            return 200, {"status": "ok"}
        if route == "nodes" and method == "GET":
            limit = wire.int_param(req.query, "limit", 0)
            return 200, store.list_nodes(limit, req.query.get("continue", ""), req.query.get("resourceVersion"))
        if route == "nodes" and method == "POST":
            return 201, store.create_node(_json_body(req))
        if route in ("node", "node_status"):
            sub = "status" if route == "node_status" else ""
            if method == "GET":
                return 200, store.get_node(m["name"])
            if method == "PATCH":
                return 200, store.patch_node(m["name"], _json_body(req), _patch_type(req), sub)
            if method == "PUT":
                return 200, store.replace_node(m["name"], _json_body(req), sub)
            if method == "DELETE" and not sub:
                store.delete_node(m["name"])
                return 200, success(m["name"], "nodes")
        if route == "pods" and method == "POST":
            return 201, store.create_pod(m["ns"], _json_body(req))
        if route == "pod" and method == "GET":
            return 200, store.get_pod(m["ns"], m["name"])
        if route == "pod" and method == "DELETE":
            store.delete_pod(m["ns"], m["name"])
            return 200, success(m["name"], "pods")
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    async def _watch(self, req: wire.Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Stream events as kube-apiserver does: 200, chunked, one JSON event per chunk, until timeoutSeconds."""
        timeout = wire.int_param(req.query, "timeoutSeconds", 1800)
        bookmarks = req.query.get("allowWatchBookmarks") == "true"
        headers = [*wire.common_headers(), ("Transfer-Encoding", "chunked"), ("Connection", "close")]
        try:
            backlog, watcher = self.store.watch(req.query.get("resourceVersion"))
        except TooOldResourceVersion as exc:  # kube-apiserver answers 200, then one ERROR event
            writer.write(wire.head_bytes(200, headers))
            _write_event(writer, "ERROR", {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                           "message": str(exc), "reason": "Expired", "code": 410})
            wire.end_chunks(writer)
            await writer.drain()
            return
        writer.write(wire.head_bytes(200, headers))
        self._watches[watcher] = writer
        eof = asyncio.create_task(_put_none_at_eof(reader, watcher))
        loop = asyncio.get_running_loop()
        try:
            for event in backlog:
                _write_event(writer, event.type, event.obj)
            await writer.drain()
            deadline = loop.time() + timeout
            next_bookmark = loop.time() + self.bookmark_interval
            while (now := loop.time()) < deadline:
                try:
                    wait = min(deadline, next_bookmark) - now if bookmarks else deadline - now
                    item = await asyncio.wait_for(watcher.queue.get(), max(wait, 0))
                except TimeoutError:
                    await self.faults.wait_running()
                    if bookmarks and loop.time() >= next_bookmark:
                        _write_event(writer, "BOOKMARK", {"kind": "Node", "apiVersion": "v1", "metadata": {
                            "resourceVersion": str(self.store.rv), "creationTimestamp": None}})
                        next_bookmark = loop.time() + self.bookmark_interval
                        await writer.drain()
                    continue
                if item is None:  # dropped by the hook, or the client went away
                    return
                await self.faults.wait_running()
                _write_event(writer, item.type, item.obj)
                await writer.drain()
            wire.end_chunks(writer)
            await writer.drain()
        finally:
            self.store.stop_watch(watcher)
            self._watches.pop(watcher, None)
            eof.cancel()


def _audit_verb(req: wire.Request, route: str) -> tuple[str, str]:
    resource = {"nodes": "nodes", "node": "nodes", "node_status": "nodes/status", "pods": "pods",
                "pod": "pods"}.get(route, route)
    if req.method == "GET":
        if route in ("nodes", "pods"):
            return ("watch" if req.query.get("watch") in ("true", "1") else "list"), resource
        return "get", resource
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    return verbs.get(req.method, req.method.lower()), resource


def _json_body(req: wire.Request) -> Any:
    try:
        return json.loads(req.body)
    except ValueError as exc:
        raise bad_request(f"error decoding the request body as JSON: {exc}") from None


def _patch_type(req: wire.Request) -> str:
    content_type = req.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in PATCHERS:
        return content_type
    note = " (not implemented by the fake)" if content_type in _UNSUPPORTED_PATCHES else ""
    raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media "
                   f"types include: application/json-patch+json, application/merge-patch+json, "
                   f"application/apply-patch+yaml, application/strategic-merge-patch+json{note}")


def _write_event(writer: asyncio.StreamWriter, kind: str, obj: JsonObject) -> None:
    wire.write_chunk(writer, json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n")


async def _put_none_at_eof(reader: asyncio.StreamReader, watcher: Watcher) -> None:
    """End the watch when the client closes its side (it sends nothing else on a watch connection)."""
    with contextlib.suppress(OSError):
        while await reader.read(4096):
            pass
    watcher.queue.put_nowait(None)
