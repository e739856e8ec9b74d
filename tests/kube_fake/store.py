"""The fake API server's state: nodes and pods, one resource-version counter, a bounded event history.

This is where the fake is strict in the ways flanneld depends on: optimistic concurrency (a stale
``metadata.resourceVersion`` is a 409), the node status subresource (it changes metadata and status, never
spec; the main resource never changes status; a pod CIDR, once set, never changes: only a deleted and
re-created node gets another), consistent paginated lists (every page of one list comes
from the same snapshot), and watches that replay history from a version, answering "too old resource
version" (410 Expired) once that history has been compacted away. Stored objects are never mutated, only
replaced, so snapshots and queued watch events can share them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.kube_fake.objects import ApiError, JsonObject, bad_request, not_found, now_rfc3339
from tests.kube_fake.patch import merge_patch, strategic_merge_patch

FIRST_RESOURCE_VERSION = 1000
MAX_SNAPSHOTS = 16
PATCHERS: dict[str, Callable[[Any, Any], Any]] = {
    "application/merge-patch+json": merge_patch,
    "application/strategic-merge-patch+json": strategic_merge_patch,
}


@dataclass
class Event:
    """One watch event: the object as it was at ``rv``."""

    rv: int
    type: str
    obj: JsonObject


@dataclass(eq=False)
class Watcher:
    """One open watch; ``None`` in the queue ends it."""

    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)


class TooOldResourceVersion(Exception):
    """A watch asked for history that is gone: the server answers with an ERROR event (410 Expired)."""


class Store:
    """Nodes and pods with Kubernetes' versioning rules."""

    def __init__(self, history_limit: int = 10000) -> None:
        self.rv = FIRST_RESOURCE_VERSION
        self.compacted_rv = FIRST_RESOURCE_VERSION
        """Events up to this version may be gone; a watch from an older version gets 410."""
        self.history_limit = history_limit
        self.nodes: dict[str, JsonObject] = {}
        self.pods: dict[tuple[str, str], JsonObject] = {}
        self.history: deque[Event] = deque()
        self.watchers: set[Watcher] = set()
        self._snapshots: OrderedDict[int, dict[str, JsonObject]] = OrderedDict()

    # -- nodes -------------------------------------------------------------------------------------------------

    def get_node(self, name: str) -> JsonObject:
        try:
            return self.nodes[name]
        except KeyError:
            raise not_found("nodes", name) from None

    def create_node(self, body: Any) -> JsonObject:
        obj = self._new_object(body, "Node")
        name = obj["metadata"]["name"]
        if name in self.nodes:
            raise ApiError(409, "AlreadyExists", f'nodes "{name}" already exists', {"name": name, "kind": "nodes"})
        self.nodes[name] = obj
        self._emit("ADDED", obj)
        return obj

    def patch_node(self, name: str, patch: Any, content_type: str, subresource: str = "", *,
                   force_pod_cidrs: bool = False) -> JsonObject:
        """Apply a merge or strategic merge patch to the node or (``subresource="status"``) its status.
        ``force_pod_cidrs`` (test hooks only) lets the patch change pod CIDRs that are already set."""
        old = self.get_node(name)
        if not isinstance(patch, dict):
            raise bad_request(f"json: cannot unmarshal {type(patch).__name__} into Go value of type "
                              "map[string]interface {}")
        return self._update_node(old, PATCHERS[content_type](old, patch), subresource, force_pod_cidrs)

    def replace_node(self, name: str, body: Any, subresource: str = "") -> JsonObject:
        """PUT: the whole object (``metadata.resourceVersion`` in it, when given, must be current)."""
        old = self.get_node(name)
        if not isinstance(body, dict):
            raise bad_request("the body of the request is not a JSON object")
        return self._update_node(old, body, subresource)

    def delete_node(self, name: str) -> JsonObject:
        old = self.nodes.pop(name, None)
        if old is None:
            raise not_found("nodes", name)
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self._next_rv())
        self._emit("DELETED", gone)
        return gone

    def list_nodes(self, limit: int, continue_token: str, resource_version: str | None) -> JsonObject:
        """A NodeList page, like an etcd-backed list (``resourceVersion=0`` is served whole, as from the cache)."""
        start = ""
        if continue_token:
            if resource_version:
                raise bad_request("specifying resource version is not allowed when using continue")
            at, start = _decode_continue(continue_token)
            snapshot = self._snapshots.get(at) if at != self.rv else self.nodes
            if snapshot is None or at < self.compacted_rv:
                raise ApiError(410, "Expired", "The provided continue parameter is too old to display a consistent "
                               "list result. You can start a new list without the continue parameter.")
        else:
            at, snapshot = self.rv, self.nodes
            if resource_version == "0":
                limit = 0
            elif resource_version and _parse_rv(resource_version) > self.rv:
                raise ApiError(504, "Timeout", f"Too large resource version: {resource_version}, current: {self.rv}",
                               {"causes": [{"reason": "ResourceVersionTooLarge"}], "retryAfterSeconds": 1})
        names = sorted(n for n in snapshot if n > start)
        page = names[:limit] if limit > 0 else names
        meta: JsonObject = {"resourceVersion": str(at)}
        if len(page) < len(names):
            if snapshot is self.nodes:
                self._keep_snapshot(at, dict(self.nodes))
            meta["continue"] = _encode_continue(at, page[-1])
            meta["remainingItemCount"] = len(names) - len(page)
        items = [{k: v for k, v in snapshot[n].items() if k not in ("kind", "apiVersion")} for n in page]
        return {"kind": "NodeList", "apiVersion": "v1", "metadata": meta, "items": items}

    # -- watches -----------------------------------------------------------------------------------------------

    def watch(self, resource_version: str | None) -> tuple[list[Event], Watcher]:
        """The events to replay and a watcher for what follows. No version (or "0"): every node as ADDED."""
        if not resource_version or resource_version == "0":
            backlog = [Event(self.rv, "ADDED", self.nodes[n]) for n in sorted(self.nodes)]
        else:
            since = _parse_rv(resource_version)
            if since < self.compacted_rv:
                raise TooOldResourceVersion(f"too old resource version: {since} ({self.compacted_rv + 1})")
            backlog = [e for e in self.history if e.rv > since]
        watcher = Watcher()
        self.watchers.add(watcher)
        return backlog, watcher

    def stop_watch(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def compact(self, upto: int | None = None) -> int:
        """Forget the events up to ``upto`` (default: all); returns the new compaction version."""
        upto = self.rv if upto is None else min(upto, self.rv)
        while self.history and self.history[0].rv <= upto:
            self.history.popleft()
        self.compacted_rv = max(self.compacted_rv, upto)
        for at in [at for at in self._snapshots if at < self.compacted_rv]:
            del self._snapshots[at]
        return self.compacted_rv

    # -- pods --------------------------------------------------------------------------------------------------

    def create_pod(self, namespace: str, body: Any) -> JsonObject:
        obj = self._new_object(body, "Pod")
        obj["metadata"]["namespace"] = namespace
        key = (namespace, obj["metadata"]["name"])
        if key in self.pods:
            raise ApiError(409, "AlreadyExists", f'pods "{key[1]}" already exists', {"name": key[1], "kind": "pods"})
        self.pods[key] = obj
        return obj

    def get_pod(self, namespace: str, name: str) -> JsonObject:
        try:
            return self.pods[(namespace, name)]
        except KeyError:
            raise not_found("pods", name) from None

    def delete_pod(self, namespace: str, name: str) -> JsonObject:
        obj = self.get_pod(namespace, name)
        del self.pods[(namespace, name)]
        self._next_rv()
        return obj

    # -- internals ---------------------------------------------------------------------------------------------

    def _new_object(self, body: Any, kind: str) -> JsonObject:
        if not isinstance(body, dict):
            raise bad_request("the body of the request is not a JSON object")
        if body.get("kind", kind) != kind or body.get("apiVersion", "v1") != "v1":
            raise bad_request(f"the object is a {body.get('apiVersion')}/{body.get('kind')}, not a v1/{kind}")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            raise ApiError(422, "Invalid", f'{kind} "" is invalid: metadata.name: Required value: name or '
                           "generateName is required")
        obj["kind"], obj["apiVersion"] = kind, "v1"
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), resourceVersion=str(self._next_rv()))
        return obj

    def _update_node(self, old: JsonObject, body: Any, subresource: str, force_pod_cidrs: bool = False) -> JsonObject:
        """Store ``body`` in place of ``old`` with the API server's update rules; a no-op is not a write."""
        new: JsonObject = copy.deepcopy(body)
        name = old["metadata"]["name"]
        kept = "spec" if subresource == "status" else "status"  # what this endpoint may not change
        if kept in old:
            new[kept] = old[kept]
        else:
            new.pop(kept, None)
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if meta.get("name") != name:
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                              f"({name})")
        if meta.get("uid", old["metadata"]["uid"]) != old["metadata"]["uid"]:
            raise ApiError(422, "Invalid", f'Node "{name}" is invalid: metadata.uid: Invalid value: '
                           f'"{meta["uid"]}": field is immutable')
        expected = meta.get("resourceVersion")
        if expected and expected != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on nodes "{name}": the object has been '
                           "modified; please apply your changes to the latest version and try again",
                           {"name": name, "kind": "nodes"})
        old_cidrs = (old.get("spec") or {}).get("podCIDRs") or []
        spec = new.get("spec")
        new_cidrs = (spec.get("podCIDRs") or []) if isinstance(spec, dict) else []
        if old_cidrs and new_cidrs != old_cidrs and not force_pod_cidrs:  # ValidateNodeUpdate's rule and text
            raise ApiError(422, "Invalid", f'Node "{name}" is invalid: spec.podCIDRs: Forbidden: node updates may '
                           'not change podCIDR except from "" to valid',
                           {"name": name, "kind": "Node", "causes": [{"reason": "FieldValueForbidden", "message":
                            'Forbidden: node updates may not change podCIDR except from "" to valid',
                            "field": "spec.podCIDRs"}]})
        for key in ("uid", "creationTimestamp", "resourceVersion"):
            meta[key] = old["metadata"][key]
        new["kind"], new["apiVersion"] = "Node", "v1"
        if new == old:
            return old
        meta["resourceVersion"] = str(self._next_rv())
        self.nodes[name] = new
        self._emit("MODIFIED", new)
        return new

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _emit(self, kind: str, obj: JsonObject) -> None:
        event = Event(int(obj["metadata"]["resourceVersion"]), kind, obj)
        while len(self.history) >= self.history_limit:
            self.compacted_rv = max(self.compacted_rv, self.history.popleft().rv)
        self.history.append(event)
        for watcher in self.watchers:
            watcher.queue.put_nowait(event)

    def _keep_snapshot(self, at: int, nodes: dict[str, JsonObject]) -> None:
        self._snapshots[at] = nodes
        while len(self._snapshots) > MAX_SNAPSHOTS:
            self._snapshots.popitem(last=False)


def _parse_rv(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"invalid resource version: {text!r}") from None
    if value < 0:
        raise bad_request(f"invalid resource version: {text!r}")
    return value


def _encode_continue(rv: int, last: str) -> str:
    token = {"v": "meta.k8s.io/v1", "rv": rv, "start": last + "\x00"}
    return base64.urlsafe_b64encode(json.dumps(token).encode()).decode().rstrip("=")


def _decode_continue(text: str) -> tuple[int, str]:
    try:
        token = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return int(token["rv"]), str(token["start"]).rstrip("\x00")
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise bad_request(f"continue key is not valid: {exc}") from None
