"""A stand-in instance metadata service: fixed paths, optional required header (GCE's ``Metadata-Flavor``).

The real services answer ``404`` for an unknown path; GCE's answers ``403`` when the ``Metadata-Flavor:
Google`` header is missing. Extra dynamic paths (GCE's token endpoint) are callables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tests.cloud_fakes.server import Request, Response, text


class Metadata:
    """Serves ``paths`` (path → text, or a callable for dynamic answers); ``down`` makes every answer a 503."""

    def __init__(self, paths: Mapping[str, str | Callable[[Request], Response]],
                 required_headers: Mapping[str, str] | None = None) -> None:
        self.paths = dict(paths)
        self.required = {k.lower(): v for k, v in (required_headers or {}).items()}
        self.down = False
        self.served: list[str] = []

    def __call__(self, req: Request) -> Response:
        if self.down:
            return text("unavailable", 503)
        if req.method != "GET":
            return text("method not allowed", 405)
        for name, value in self.required.items():
            if req.headers.get(name) != value:
                return text(f"missing required header {name}: {value}", 403)
        answer = self.paths.get(req.path)
        if answer is None:
            return text("not found", 404)
        self.served.append(req.path)
        if callable(answer):
            return answer(req)
        return text(answer)
