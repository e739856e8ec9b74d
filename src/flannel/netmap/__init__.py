"""The live network map: one self-contained page and its JSON, served by flanneld only when ``--map-port`` is set.

The page (``page.html``, package data read with ``importlib.resources``) carries its own script and style and
draws with inline SVG: nothing is fetched from anywhere but ``map.json`` beside it, so it works on a node without
internet access. It is served by a second instance of the bounded health server (``daemon/health.py``), bound
to ``--map-address`` (loopback by default: the map shows the cluster's addresses). Every request only reads:
``Observer.document()`` builds the JSON from the last probe round, drift check and lease watch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

HTML = "text/html; charset=utf-8"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


@cache
def page() -> bytes:
    """The map page, as shipped in the package."""
    return resources.files(__package__).joinpath("page.html").read_bytes()


def handler(document: Callable[[], dict[str, Any]]) -> Callable[[str], tuple[int, str, bytes]]:
    """The map server's answers: ``/`` (the page), ``/map.json`` (``document()``), 404 for anything else."""

    def respond(path: str) -> tuple[int, str, bytes]:
        if path in ("/", "/index.html"):
            return 200, HTML, page()
        if path == "/map.json":
            return 200, JSON, json.dumps(document(), separators=(",", ":")).encode()
        return 404, TEXT, b"404 page not found\n"

    return respond
