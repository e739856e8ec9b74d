"""JSON merge patch (RFC 7386) and the part of strategic merge patch that node objects need.

Strategic merge differs from a merge patch only in lists: lists declared with a merge key in the Go types
merge item by item (``status.conditions`` and ``status.addresses`` by ``type``), lists declared
``patchStrategy:merge`` without a key merge as sets (``spec.podCIDRs``, ``metadata.finalizers``), every
other list is replaced. That difference is exactly what flanneld relies on when it patches the
NetworkUnavailable condition without wiping Ready, so the fake must get it right. The directives client-go
emits (``$patch``, ``$setElementOrder/…``, ``$retainKeys``) are understood; any other ``$`` key is refused.

Neither function changes its inputs: stored objects are shared between watch events and snapshots.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.kube_fake.objects import bad_request

_PRIMITIVE = ""
MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
    ("status", "volumesAttached"): "name",
    ("metadata", "ownerReferences"): "uid",
    ("spec", "podCIDRs"): _PRIMITIVE,
    ("metadata", "finalizers"): _PRIMITIVE,
}
"""Lists that merge, by path in the object, with their merge key (``""``: a set of primitives)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, ``null`` deletes, anything else (lists included) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Apply a strategic merge patch for a Node/Pod-shaped object; ``ApiError`` 400 on a malformed patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    if directive is not None:
        raise bad_request(f"unknown patch type: {directive!r} in {'.'.join(path) or 'the object'}")
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key == "$retainKeys" or key.startswith("$setElementOrder/"):
            continue  # only order and pruning hints; the merge result does not depend on them here
        if key.startswith("$"):
            raise bad_request(f"unsupported strategic merge patch directive {key!r}")
        sub = (*path, key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and sub in MERGE_KEYS:
            result[key] = _merge_list(result.get(key), value, MERGE_KEYS[sub], sub)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value, sub)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_list(current: Any, patch: list[Any], key: str, path: tuple[str, ...]) -> list[Any]:
    items = list(current) if isinstance(current, list) else []
    if key == _PRIMITIVE:
        for value in patch:
            if value not in items:
                items.append(value)
        return items
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise bad_request(f"map: {item!r} does not contain declared merge key: {key} ({'.'.join(path)})")
        at = next((i for i, old in enumerate(items) if isinstance(old, dict) and old.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if at is not None:
                del items[at]
        elif at is None:
            items.append(strategic_merge_patch({}, item, path))
        else:
            items[at] = strategic_merge_patch(items[at], item, path)
    return items
