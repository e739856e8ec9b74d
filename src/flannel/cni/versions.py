"""CNI spec versions: the ones the plugin speaks, and picking one that a delegate speaks too.

The plugin accepts every spec version from 0.1.0 to 1.1.0 and must answer in the caller's version. The
delegates it runs may speak less: Debian 12's ``containernetworking-plugins`` stop at 1.0.0. When a delegate
refuses the caller's version, the plugin calls it again with the highest version both speak
(:func:`choose_version`) and converts the result back (:mod:`flannel.cni.results`, loaded only then).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
"""What the plugin accepts (the CNI library's ``version.All``)."""
CURRENT_VERSION = "1.1.0"
"""The version of the plugin's own VERSION answer."""



def effective_version(cni_version: str) -> str:
    """A config without ``cniVersion`` is a 0.1.0 config (the CNI library's rule)."""
    return cni_version or "0.1.0"


def parse_version(text: str) -> tuple[int, int, int]:
    """``"1.0.0"`` → ``(1, 0, 0)``, as the CNI library parses it (missing parts are 0; at most three)."""
    if not text:
        return (0, 1, 0)
    parts = text.split(".")
    if len(parts) > 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"invalid version {text!r}")
    numbers = [int(p) for p in parts] + [0, 0]
    return (numbers[0], numbers[1], numbers[2])


def at_least(version: str, minimum: str) -> bool:
    """True when ``version`` ≥ ``minimum``; an unparsable version is never enough."""
    try:
        return parse_version(version) >= parse_version(minimum)
    except ValueError:
        return False


def choose_version(requested: str, offered: Iterable[str], minimum: str = "0.1.0") -> str | None:
    """The version to call a delegate with: the highest one both speak that is not above ``requested``.

    Failing that, the lowest one above it (the result is then converted down). Versions below ``minimum``
    (0.4.0 for CHECK, 1.1.0 for STATUS and GC) do not count. None when there is no common version.
    """
    usable = [v for v in offered if v in SUPPORTED_VERSIONS and at_least(v, minimum)]
    not_above = [v for v in usable if at_least(requested, v)]
    if not_above:
        return max(not_above, key=parse_version)
    above = [v for v in usable if not at_least(requested, v)]
    return min(above, key=parse_version) if above else None


def go_quote(text: str) -> str:
    """Go's ``%q`` of a string, for messages that match the CNI library's."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def go_quote_list(items: Iterable[str]) -> str:
    """Go's ``%q`` of a ``[]string``: ``["0.1.0" "0.2.0"]``."""
    return "[" + " ".join(go_quote(i) for i in items) + "]"
