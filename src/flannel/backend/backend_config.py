"""Reading a backend's own ``Backend`` section: one set of rules for every backend.

Each backend parses its own keys (so a typo is reported by the backend that owns the key), but the rules are
shared: keys match case-insensitively as Go's ``encoding/json`` does, an unknown key is a warning naming it,
and a value of the wrong type or out of range is a ``ConfigError`` naming ``Backend.<key>``. JSON ``null``
means "not set", as it does for Go's zero values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from flannel.errors import ConfigError
from flannel.gojson import fold

log = logging.getLogger(__name__)


def read_section(backend_name: str, backend: Mapping[str, Any], fields: Iterable[str],
                 ignored: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The section folded onto the canonical ``fields`` (``Type`` is always known).

    ``ignored`` maps keys this port accepts but does not act on (lower-case) to the reason logged for them.
    """
    names = ["Type", *[f for f in fields if f != "Type"]]
    known = {f.lower() for f in names}
    notes = {k.lower(): v for k, v in (ignored or {}).items()}
    for key in backend:
        if key.lower() in notes:
            log.warning("%s backend: Backend.%s %s; ignored", backend_name, key, notes[key.lower()])
        elif key.lower() not in known:
            log.warning("%s backend: ignoring unknown key Backend.%s", backend_name, key)
    return fold(dict(backend), names)


def int_key(raw: Mapping[str, Any], key: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
    """An integer value, checked against ``[lo, hi]``.

    Written as an integer literal, as Go's ``encoding/json`` demands for an ``int`` field: ``1500.0`` and
    ``1.5e3`` are refused there ("cannot unmarshal number 1500.0 into ... of type int"), so they are here, or a
    config accepted by a Python node would stop a Go node of the same cluster.
    """
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"Backend.{key} must be an integer, got {value!r}", f"Backend.{key}")
    number = value
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        bounds = f"between {lo} and {hi}" if lo is not None and hi is not None else (
            f"at least {lo}" if lo is not None else f"at most {hi}")
        raise ConfigError(f"Backend.{key} must be {bounds}, got {number}", f"Backend.{key}")
    return number


def bool_key(raw: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """A boolean value; Go would reject ``"true"`` as a string, and so do we."""
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"Backend.{key} must be true or false, got {value!r}", f"Backend.{key}")
    return value


def str_key(raw: Mapping[str, Any], key: str, default: str = "") -> str:
    """A string value."""
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ConfigError(f"Backend.{key} must be a string, got {value!r}", f"Backend.{key}")
    return value
