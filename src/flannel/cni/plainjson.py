"""Plain JSON read and written in Python, so that a CNI call with ordinary documents never loads ``_json``.

Loading CPython's C accelerator costs 0.3 ms of every ADD, DEL and CHECK (a path search and a ``dlopen``;
docs/performance.md, session 6), more than decoding and encoding the call's few hundred bytes here. So
:mod:`flannel.cni.lite` tries this module first, and it takes only what it can do exactly as ``_json`` would:
strings without escapes or control characters, numbers in JSON's grammar, ``true``, ``false``, ``null``,
objects and arrays nested less than :data:`MAX_DEPTH` deep, and for writing str keys, finite numbers, lists,
tuples and dicts. Anything else, malformed input included, makes it answer None, and ``lite`` hands the
document to ``_json``, which gives the result or the error message it always gave.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_DEPTH = 64
"""Deeper documents go to ``_json``, whose recursion limit and error this module does not imitate."""
_WS = " \t\n\r"
_NUMBER_CHARS = frozenset("-+.0123456789eE")
_DIGITS = frozenset("0123456789")


class _NotPlain(Exception):
    """Raised inside this module when a document needs ``_json``; never leaves it."""


def scan(
    text: str, start: int, pairs_hook: Callable[[list[tuple[str, Any]]], Any], parse_float: Callable[[str], Any]
) -> tuple[Any, int] | None:
    """What ``_json``'s scanner returns for ``text`` at ``start`` (the value and the index after it), with
    ``pairs_hook`` building objects and ``parse_float`` numbers with a fraction or exponent; None when the
    document is not plain, or not valid (the scanner then says why)."""
    try:
        return _value(text, start, 0, pairs_hook, parse_float)
    except Exception:  # _NotPlain, an index past the end, or a hook's own error: _json decides
        return None


def _value(text: str, i: int, depth: int, pairs_hook: Any, parse_float: Any) -> tuple[Any, int]:
    char = text[i]
    if char == '"':
        return _string(text, i)
    if char == "{" or char == "[":
        if depth >= MAX_DEPTH:
            raise _NotPlain
        return _container(text, i, depth + 1, pairs_hook, parse_float)
    if char in _NUMBER_CHARS:
        return _number(text, i, parse_float)
    for word, value in (("true", True), ("false", False), ("null", None)):
        if text.startswith(word, i):
            return value, i + len(word)
    raise _NotPlain


def _string(text: str, i: int) -> tuple[str, int]:
    end = text.index('"', i + 1)
    value = text[i + 1 : end]
    if "\\" in value or (value and min(value) < " "):  # escapes, or a control character (an error)
        raise _NotPlain
    return value, end + 1


def _skip(text: str, i: int) -> int:
    while text[i] in _WS:
        i += 1
    return i


def _container(text: str, i: int, depth: int, pairs_hook: Any, parse_float: Any) -> tuple[Any, int]:
    is_object = text[i] == "{"
    close = "}" if is_object else "]"
    items: list[Any] = []
    i = _skip(text, i + 1)
    if text[i] == close:
        return (pairs_hook(items) if is_object else items), i + 1
    while True:
        if is_object:
            if text[i] != '"':
                raise _NotPlain
            key, i = _string(text, i)
            i = _skip(text, i)
            if text[i] != ":":
                raise _NotPlain
            value, i = _value(text, _skip(text, i + 1), depth, pairs_hook, parse_float)
            items.append((key, value))
        else:
            value, i = _value(text, i, depth, pairs_hook, parse_float)
            items.append(value)
        i = _skip(text, i)
        if text[i] == close:
            return (pairs_hook(items) if is_object else items), i + 1
        if text[i] != ",":
            raise _NotPlain
        i = _skip(text, i + 1)


def _number(text: str, i: int, parse_float: Any) -> tuple[Any, int]:
    """``-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][-+]?[0-9]+)?``, as the whole run of number characters."""
    end = i
    while end < len(text) and text[end] in _NUMBER_CHARS:
        end += 1
    token = text[i:end]
    k = 1 if token[0] == "-" else 0
    if token[k : k + 1] == "0":
        k += 1
    else:
        k = _digits(token, k)
    is_float = False
    if token[k : k + 1] == ".":
        k, is_float = _digits(token, k + 1), True
    if token[k : k + 1] in ("e", "E"):
        k = _digits(token, k + 2 if token[k + 1 : k + 2] in ("-", "+") else k + 1)
        is_float = True
    if k != len(token):
        raise _NotPlain
    return (parse_float(token) if is_float else int(token)), end


def _digits(token: str, k: int) -> int:
    """The index after one or more digits at ``k``."""
    if token[k : k + 1] not in _DIGITS:  # the empty string included
        raise _NotPlain
    while token[k : k + 1] and token[k] in _DIGITS:
        k += 1
    return k


def encode(value: Any, escapes: tuple[tuple[str, str], ...]) -> str | None:
    """What ``_json``'s compact encoder writes for ``value`` (``ensure_ascii`` off, NaN refused), with each
    ``(character, escape)`` of ``escapes`` replaced in strings; None when ``value`` is not plain."""
    try:
        return _encode(value, 0, escapes)
    except _NotPlain:
        return None


def _encode(value: Any, depth: int, escapes: tuple[tuple[str, str], ...]) -> str:
    # The order of _json's checks: constants, str, int, float, list or tuple, dict.
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _encode_string(value, escapes)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise _NotPlain
        return float.__repr__(value)
    if depth >= MAX_DEPTH:
        raise _NotPlain
    if isinstance(value, list | tuple):
        return "[" + ",".join([_encode(v, depth + 1, escapes) for v in value]) + "]"
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise _NotPlain
            parts.append(_encode_string(key, escapes) + ":" + _encode(item, depth + 1, escapes))
        return "{" + ",".join(parts) + "}"
    raise _NotPlain


def _encode_string(value: str, escapes: tuple[tuple[str, str], ...]) -> str:
    if '"' in value or "\\" in value or (value and min(value) < " "):
        raise _NotPlain
    out = '"' + value + '"'
    for raw, escaped in escapes:
        if raw in out:
            out = out.replace(raw, escaped)
    return out
