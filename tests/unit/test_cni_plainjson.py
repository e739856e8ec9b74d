"""The plugin's Python JSON path (``plainjson``) against ``_json``, which it stands in for: on every document it
takes, it must give exactly what ``_json`` gives (values, their types, key order, the end index, the text
written), and it must pass on every document it cannot do exactly (malformed ones included), so that errors
keep ``_json``'s wording. Checked on hand-picked edge cases and on seeded random documents and mutations."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from flannel.cni import lite, plainjson


def typed(value: Any) -> Any:
    """``value`` with every type made visible (``1 == 1.0 == True`` in Python) and every key order."""
    if isinstance(value, dict):
        return ("dict", type(value).__name__, [(k, typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    return (type(value).__name__, value)


def by_json(text: str, start: int) -> Any:
    """What the ``_json`` path returns (or raises, by exception type) for ``text`` at ``start``."""
    try:
        value, end = lite._scan_text(text, start)
    except (StopIteration, ValueError, RecursionError) as exc:
        return ("error", type(exc).__name__)
    return (typed(value), end)


def check_scan(text: str) -> bool:
    """Whether the Python path took ``text``; when it did, the result must be ``_json``'s (both start after
    the leading whitespace, as ``lite.loads`` calls them)."""
    start = len(text) - len(text.lstrip(" \t\n\r"))
    fast = plainjson.scan(text, start, lite._last_wins, lite._parse_float)
    if fast is None:
        return False
    assert (typed(fast[0]), fast[1]) == by_json(text, start), text
    return True


def check_encode(value: Any) -> bool:
    fast = plainjson.encode(value, lite._GO_ESCAPES)
    if fast is None:
        return False
    assert fast == lite._encoder()(value), value
    return True


TAKEN = [
    '{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}',
    ' {"a" : [1, 2.5, -0, 0.0, 1e3, 1E-2, -12.5e+3, true, false, null, "x", {}, []] } ',
    '[1,2]  trailing',
    '{"a":1,"A":2,"a":3}',
    '"é\u2028<&>"',
    "123456789012345678901234567890",
    "1e21",
    '{"nested":' * 10 + "1" + "}" * 10,
    '{"a":1}}',  # a whole value, then what loads() refuses: scanned alike, refused alike
    "0x10",
]
PASSED_ON = [
    "", " ", "{", "[", '{"a" 1}', '{"a":1,}', "[1,]", "[1 2]", "NaN", "[Infinity]", "-Infinity", "1e999",
    '"\\n"', '"a\\"b"', '"\x01"', "01", "-", "1.", ".5", "1e", "1.5e+", "+1", "tru", "nul", '{"a":1', "[" * 100,
    '"unterminated', "[1,2",
]


@pytest.mark.parametrize("text", TAKEN)
def test_plain_documents_are_read_as_json_reads_them(text: str) -> None:
    assert check_scan(text)


@pytest.mark.parametrize("text", PASSED_ON)
def test_escapes_and_malformed_documents_are_left_to_json(text: str) -> None:
    assert not check_scan(text)


def test_written_like_json_or_left_to_it() -> None:
    value = {"z": 1, "a": lite.Struct(dst="d", gw="g", mtu=1), "s": "<a&b>\u2028é", "f": [1.5, -0.0, True, None]}
    assert check_encode(lite.go_order(value))
    for other in ({"q": 'say "hi"'}, {"b": "back\\slash"}, {"n": "new\nline"}, {"x": float("nan")}, {1: "int key"},
                  {"s": {1, 2}}, {"deep": [[[[]]]] * 1}):
        check_encode(other)  # asserts when taken
    assert plainjson.encode({"q": 'say "hi"'}, lite._GO_ESCAPES) is None
    assert plainjson.encode({"x": float("inf")}, lite._GO_ESCAPES) is None


ALPHABET = ['"', "\\", "{", "}", "[", "]", ":", ",", " ", "\n", "\t", "-", "+", ".", "e", "E", "0", "1", "9", "a",
            "t", "n", "f", "é", "\u2028", "\x01", "\x7f", "<", "&"]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 7, 2**70, -(2**64)])
    if kind == 2:
        return rng.choice([0.5, -2.25, 1e21, 1e-7, 3.0, -0.0, 123456.789])
    if kind in (3, 4, 5):
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(6)))
    if kind in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {"".join(rng.choice(ALPHABET) for _ in range(rng.randrange(4))): random_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def test_seeded_random_documents_and_mutations_agree_with_json() -> None:
    rng = random.Random(13)
    taken = passed = 0
    for _ in range(3000):
        value = random_value(rng)
        text = json.dumps(value, ensure_ascii=rng.random() < 0.3, indent=rng.choice([None, 1]))
        for candidate in (text, mutate(rng, text), mutate(rng, mutate(rng, text))):
            if check_scan(candidate):
                taken += 1
            else:
                passed += 1
        check_encode(value)
        check_encode(lite.go_order(value))
    assert taken > 1000 and passed > 1000, (taken, passed)  # both ways were exercised


def mutate(rng: random.Random, text: str) -> str:
    at = rng.randrange(len(text) + 1)
    action = rng.randrange(3)
    if action == 0:
        return text[:at] + rng.choice(ALPHABET) + text[at:]
    if action == 1:
        return text[:at] + text[at + 1 :]
    return text[:at] + text[at:][::-1] if rng.random() < 0.1 else text[:at]
