"""Decoding JSON the way Go's ``encoding/json`` matches struct fields.

Go matches object keys to fields case-insensitively (a key picks a field by exact name first, then by
case folding, and when several keys land on one field the last one wins), so a Go node accepts
``"network"`` for ``Network``. Every reader of flannel's JSON documents (network config, lease values,
backend sections) goes through here to stay compatible.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 200
"""Deepest nesting of arrays and objects accepted. Go stops at 10000 ("exceeded max depth"); Python's
decoder and encoder recurse per level and would raise ``RecursionError`` near 1000 (less when called from
deep in a stack), so documents are cut off well below that. No flannel document nests more than 3 levels."""
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def _last_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated key moves to the end, so that iterating the dict visits keys in the order of their
    # last occurrence: ``fold`` then lets the last one win, as Go does. Without repeats that is the plain
    # dict, built in C: this runs for every object of every lease value (tens of thousands at start-up).
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    out = {}
    for key, value in pairs:
        out.pop(key, None)
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _finite_float(text: str) -> float:
    # Python reads 1e400 as inf, which no JSON encoder can write back; Go refuses it as out of range.
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"number {text} is out of range")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_last_wins, parse_constant=_reject_constant,
                            parse_float=_finite_float)
"""One decoder for every call: ``json.loads`` with hooks builds a new one each time."""


def loads(data: str | bytes) -> Any:
    """``json.loads`` restricted to what Go accepts (no NaN/Infinity, no number beyond float64) and to
    ``MAX_DEPTH`` levels of nesting.

    Raises ``ValueError`` (or ``UnicodeDecodeError`` for bytes that are not UTF-8/16/32), never ``RecursionError``.
    """
    text = data.decode(json.detect_encoding(data), "surrogatepass") if isinstance(data, bytes) else data
    if text.count("[") + text.count("{") > MAX_DEPTH:  # cheap test first: only then scan for the real depth
        _check_depth(text)
    if text.startswith("\ufeff"):  # as json.loads refuses it
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        return _DECODER.decode(text)
    except RecursionError:  # only when called from deep in a stack already
        raise ValueError("exceeded max depth") from None


def _check_depth(text: str) -> None:
    depth = 0
    for m in _STRING_OR_BRACKET.finditer(text):
        bracket = text[m.start()]  # a string match starts with '"'
        if bracket in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise ValueError(f"exceeded max depth: arrays and objects nest deeper than {MAX_DEPTH} levels")
        elif bracket in ("]", "}"):
            depth -= 1


def load_object(data: str | bytes, what: str) -> dict[str, Any]:
    """Parse ``data`` as a JSON object; raise ``ValueError`` naming ``what`` otherwise."""
    try:
        value = loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what}: invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def fold(obj: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """Map ``obj``'s keys onto ``fields`` with Go's matching rules; unknown keys are dropped.

    Each key picks its field by exact name, else case-insensitively; every key that lands on a field
    overwrites it, so the last one in the document wins (``{"Network":..,"network":..}`` keeps the second).
    Returns a dict keyed by the canonical field names, holding only the fields that appear.
    """
    exact = set(fields)
    if exact.issuperset(obj):  # every key names a field exactly (keys are distinct): nothing to fold
        return dict(obj)
    folded = {_fold_name(f): f for f in fields}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        canon = key if key in exact else folded.get(_fold_name(key))
        if canon is not None:
            out.pop(canon, None)
            out[canon] = value
    return out


def _fold_name(name: str) -> str:
    # Go folds with Unicode simple folding: besides ASCII case, U+017F (long s) matches "s" and U+212A
    # (Kelvin sign) matches "k"; ``str.lower`` already maps the Kelvin sign.
    return name.lower().replace("\u017f", "s")


_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                              "\u2028": "\\u2028", "\u2029": "\\u2029"})
"""Go's ``json.Marshal`` escapes these even inside raw messages; none of them can occur outside a string."""


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""One encoder for every call: ``json.dumps`` with options builds a new one each time."""


def compact(value: Any) -> str:
    """Serialise as Go's ``json.Marshal`` does: compact, UTF-8 kept as is, HTML characters escaped."""
    return _COMPACT(value).translate(_GO_ESCAPES)
