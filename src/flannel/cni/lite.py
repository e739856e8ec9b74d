"""JSON and frozen records for the CNI plugin, without the import cost of ``json`` and ``dataclasses``.

The plugin is a fresh Python process per pod and per verb. ``import json`` pulls in ``re`` (8 ms here) and
``import dataclasses`` pulls in ``inspect`` (10 ms), together more than the whole overhead budget of a CNI
call. CPython's C accelerator ``_json`` (what ``json`` uses underneath) needs neither, so this module drives
it directly and falls back to ``json`` where ``_json`` is missing (another Python implementation). Even
loading ``_json`` costs 0.3 ms, so plain documents (no escapes, the usual CNI config) are first read and
written in Python by :mod:`flannel.cni.plainjson`, which passes anything else on to ``_json``.

JSON follows what Go's ``encoding/json`` does with ``map[string]interface{}``, since upstream's plugin is
written in Go: NaN and Infinity are rejected, invalid UTF-8 becomes U+FFFD, numbers are float64 (so an
integral ``1.0`` is written back as ``1``), and when an object repeats a key the last one wins. ``dumps``
writes map keys sorted, as Go does, except in :class:`Struct` objects, which keep their order (a Go struct).

``dataclass`` is ``dataclasses.dataclass`` for the type checker and a small equivalent at run time: keyword
or positional construction, defaults, ``__eq__``, ``__hash__``, ``__repr__`` and (with ``frozen=True``)
immutability. Nothing else of ``dataclasses`` is used by the plugin.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from dataclasses import dataclass as dataclass
    from typing import Any

    _StructBase = dict[str, Any]
else:
    _StructBase = dict

_WS = " \t\n\r"


class JSONError(ValueError):
    """The text is not one JSON value; the message says where."""


class Struct(_StructBase):
    """A JSON object written in insertion order, like a Go struct (``dumps`` sorts the keys of plain dicts)."""


def _last_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated key moves to the end, so that iterating visits keys in the order of their last occurrence;
    # readers that fold key case (as Go does) then let the last one win, as Go does.
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.pop(key, None)
        out[key] = value
    return out


def _parse_float(text: str) -> float | int:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise JSONError(f"number {text} is out of range")
    # Go holds every JSON number in a float64 and writes an integral one without a fraction.
    return int(value) if value.is_integer() and abs(value) < 1e21 else value


def _reject_constant(name: str) -> Any:
    raise JSONError(f"invalid character {name[0]!r} looking for beginning of value")


class _Context:
    """The attributes the C scanner reads from a ``JSONDecoder``."""

    strict = True
    object_hook = None
    object_pairs_hook = staticmethod(_last_wins)
    parse_float = staticmethod(_parse_float)
    parse_int = int
    parse_constant = staticmethod(_reject_constant)
    memo: dict[str, str] = {}  # noqa: RUF012 - read by the C scanner, never by us


_scan: Callable[[str, int], tuple[Any, int]] | None = None
_encode: Callable[[Any], str] | None = None


def _scanner() -> Callable[[str, int], tuple[Any, int]]:
    global _scan
    if _scan is None:
        try:
            import _json as accelerator
        except ImportError:  # pragma: no cover - CPython always has it
            import json.scanner as accelerator  # type: ignore[no-redef]
        _scan = accelerator.make_scanner(_Context())  # type: ignore[arg-type]
    return _scan


def _scan_text(text: str, start: int) -> tuple[Any, int]:
    try:
        return _scanner()(text, start)
    except SystemError:
        # CPython 3.11's scanner reports a syntax error through json.decoder.JSONDecodeError, and only once
        # json.decoder is loaded (otherwise: SystemError). Load it, on this error path only, and scan again.
        import json.decoder  # noqa: F401

        return _scanner()(text, start)


def loads(data: bytes | str) -> Any:
    """Decode one JSON value; raise :class:`JSONError` with Go-like wording otherwise."""
    from flannel.cni.plainjson import scan

    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    start = len(text) - len(text.lstrip(_WS))
    try:
        value, end = scan(text, start, _last_wins, _parse_float) or _scan_text(text, start)
    except StopIteration as exc:
        at = int(exc.value)
        if at >= len(text):
            raise JSONError("unexpected end of JSON input") from None
        raise JSONError(f"invalid character {text[at]!r} looking for beginning of value (offset {at})") from None
    except RecursionError:
        raise JSONError("JSON nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError from the C scanner, or our own JSONError
        raise JSONError(str(exc)) from None
    rest = text[end:].lstrip(_WS)
    if rest:
        at = len(text) - len(rest)
        raise JSONError(f"invalid character {rest[0]!r} after top-level value (offset {at})")
    return value


def load_object(data: bytes | str) -> dict[str, Any]:
    """Decode a JSON object (the shape of every CNI document)."""
    value = loads(data)
    if not isinstance(value, dict):
        raise JSONError(f"expected a JSON object, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}.get(
        type(value), "object"
    )


_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def _encoder() -> Callable[[Any], str]:
    global _encode
    if _encode is None:
        try:
            from _json import encode_basestring
            from _json import make_encoder as c_make_encoder
        except ImportError:  # pragma: no cover - CPython always has it
            import json

            def _fallback(value: Any) -> str:
                return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

            _encode = _fallback
            return _encode

        def encode_string(s: str) -> str:
            out: str = encode_basestring(s)
            for raw, escaped in _GO_ESCAPES:  # Go escapes HTML-significant characters
                if raw in out:
                    out = out.replace(raw, escaped)
            return out

        def default(value: Any) -> Any:
            raise TypeError(f"{type(value).__name__} is not JSON serializable")

        iterencode = c_make_encoder(None, default, encode_string, None, ":", ",", False, False, False)

        def encode(value: Any) -> str:
            return "".join(iterencode(value, 0))

        _encode = encode
    return _encode


def fold_keys(obj: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """Map ``obj``'s keys onto ``fields`` as Go's decoder does: exact name first, else case-insensitively.

    When several keys land on one field the last one in the document wins. Unknown keys are dropped.
    """
    exact = set(fields)
    folded = {f.lower(): f for f in fields}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        field = key if key in exact else folded.get(key.lower().replace("\u017f", "s"))
        if field is not None:
            out[field] = value
    return out


def go_order(value: Any) -> Any:
    """A copy with every plain dict's keys sorted, as Go writes a map; :class:`Struct` keeps its order."""
    if isinstance(value, Struct):
        return Struct((k, go_order(v)) for k, v in value.items())
    if isinstance(value, dict):
        return {k: go_order(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [go_order(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Compact JSON with Go's key order and escaping (what ``json.Marshal`` writes)."""
    from flannel.cni.plainjson import encode

    ordered = go_order(value)
    text = encode(ordered, _GO_ESCAPES)
    return text if text is not None else _encoder()(ordered)


if not TYPE_CHECKING:

    class FrozenInstanceError(AttributeError):
        """Assignment to a field of a frozen record."""

    def dataclass(cls=None, /, *, frozen=False):
        """The subset of ``dataclasses.dataclass`` that the plugin uses (see the module docstring)."""

        def wrap(cls):
            return _make_record(cls, frozen)

        return wrap if cls is None else wrap(cls)

    def _make_record(cls, frozen):
        names = tuple(cls.__dict__.get("__annotations__", ()))  # noqa: RUF063 - inspect costs 5 ms
        defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
        qualname = cls.__qualname__

        def __init__(self, *args, **kwargs):
            if len(args) > len(names):
                raise TypeError(f"{qualname}() takes {len(names)} arguments but {len(args)} were given")
            values = dict(zip(names, args, strict=False))
            for key, val in kwargs.items():
                if key not in names or key in values:
                    raise TypeError(f"{qualname}() got an unexpected or repeated argument {key!r}")
                values[key] = val
            for name in names:
                if name in values:
                    object.__setattr__(self, name, values[name])
                elif name in defaults:
                    object.__setattr__(self, name, defaults[name])
                else:
                    raise TypeError(f"{qualname}() missing required argument {name!r}")

        def _values(self):
            return tuple(getattr(self, n) for n in names)

        def __eq__(self, other):
            if other.__class__ is not self.__class__:
                return NotImplemented
            return _values(self) == _values(other)

        def __repr__(self):
            return f"{qualname}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

        cls.__init__ = __init__
        cls.__eq__ = __eq__
        cls.__repr__ = __repr__
        cls.__match_args__ = names
        if frozen:

            def __setattr__(self, name, value):
                raise FrozenInstanceError(f"cannot assign to field {name!r}")

            def __delattr__(self, name):
                raise FrozenInstanceError(f"cannot delete field {name!r}")

            def __hash__(self):
                return hash(_values(self))

            cls.__setattr__ = __setattr__
            cls.__delattr__ = __delattr__
            cls.__hash__ = __hash__
        else:
            cls.__hash__ = None
        return cls
