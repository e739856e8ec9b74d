"""Decoding JSON the way Go's ``encoding/json`` matches struct fields.

Go matches object keys to fields case-insensitively (an exact match preferred, otherwise the last
case-insensitive match wins), so a Go node accepts ``"network"`` for ``Network``. Every reader of
flannel's JSON documents (network config, lease values, backend sections) goes through here to stay
compatible.
"""

from __future__ import annotations

import json
from typing import Any


def load_object(data: str | bytes, what: str) -> dict[str, Any]:
    """Parse ``data`` as a JSON object; raise ``ValueError`` naming ``what`` otherwise."""
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what}: invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def fold(obj: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """Map ``obj``'s keys onto ``fields`` with Go's matching rules; unknown keys are dropped.

    Returns a dict keyed by the canonical field names, holding only the fields that appear.
    """
    lower = {f.lower(): f for f in fields}
    out: dict[str, Any] = {}
    exact: set[str] = set()
    for key, value in obj.items():
        if key in fields:
            out[key] = value
            exact.add(key)
            continue
        canon = lower.get(key.lower())
        if canon is not None and canon not in exact:
            out[canon] = value
    return out


def compact(value: Any) -> str:
    """Serialise as Go's ``json.Marshal`` does for flannel's values: compact, no HTML escaping needed."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
