"""moto's EC2 server for the aws-vpc tests, started with ``python -m tests.cloud.aws_moto HOST PORT``.

moto (a third-party emulator of the AWS APIs, installed from PyPI) serves the real EC2 query protocol, and the
real boto3 in flanneld talks to it through ``AWS_ENDPOINT_URL_EC2``. Three things of AWS's that moto 5.2 does
not model are added here, each from AWS's published behaviour, and nothing else is changed:

* route state: AWS reports a route ``blackhole`` once its target ENI or instance is gone; moto always says
  ``active``. ``Route.state`` follows AWS's rule here, so the blackhole clean-up is tested against it.
* the route quota: AWS refuses a ``CreateRoute`` past 50 non-propagated routes with ``RouteLimitExceeded``;
  moto never does. The limit is enforced here (``MOTO_ROUTE_LIMIT``, default 50).
* weather: ``POST /_faults`` with ``{"action": "DescribeRouteTables", "code": "RequestLimitExceeded",
  "status": 503, "count": 2}`` makes the next ``count`` requests of that action fail as AWS fails them
  (EC2's XML error document; or, with ``"body"``, that body as it is: an answer the SDK cannot parse), so
  the SDK's real error parsing and our retries are exercised. ``GET /_faults``
  tells what is still pending (an action never called leaves its fault pending), ``DELETE`` drops it all.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import Any
from urllib.parse import parse_qs

ROUTE_LIMIT = int(os.environ.get("MOTO_ROUTE_LIMIT", "50"))


def _patch_moto() -> None:
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.route_tables import Route, RouteBackend

    def state(self: Any) -> str:
        backend = self.route_table.ec2_backend
        if self.interface is not None and self.interface.id not in backend.enis:
            return "blackhole"
        if self.instance is not None and self.instance.state not in ("running", "pending"):
            return "blackhole"
        return "active"

    Route.state = property(state)  # type: ignore[assignment,method-assign]
    original = RouteBackend.create_route

    def create_route(self: Any, route_table_id: str, destination_cidr_block: str | None, *args: Any,
                     **kwargs: Any) -> Any:
        if not kwargs.get("local"):
            table = self.get_route_table(route_table_id)
            used = sum(1 for r in table._routes.values() if not r.local)
            if used >= ROUTE_LIMIT:
                raise EC2ClientError("RouteLimitExceeded",
                                     f"The maximum number of routes has been reached for {route_table_id}.")
        return original(self, route_table_id, destination_cidr_block, *args, **kwargs)

    RouteBackend.create_route = create_route  # type: ignore[method-assign]


class Faults:
    """A WSGI layer in front of moto that answers chosen actions with AWS error documents."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.pending: dict[str, list[tuple[str, int, str | None]]] = {}
        self.served: dict[str, int] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = BytesIO(body)
        if environ.get("PATH_INFO") == "/_faults":
            if environ["REQUEST_METHOD"] == "DELETE":
                with self.lock:
                    self.pending.clear()
            if environ["REQUEST_METHOD"] == "POST":
                spec = json.loads(body)
                with self.lock:
                    self.pending.setdefault(spec["action"], []).extend(
                        [(spec["code"], int(spec.get("status", 503)), spec.get("body"))] * int(spec.get("count", 1)))
            with self.lock:
                answer = json.dumps({"pending": {k: len(v) for k, v in self.pending.items()},
                                     "served": self.served}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [answer]
        action = (parse_qs(body.decode("utf-8", "replace")).get("Action") or [""])[0]
        with self.lock:
            queue = self.pending.get(action)
            fault = queue.pop(0) if queue else None
            if fault is not None:
                self.served[action] = self.served.get(action, 0) + 1
        if fault is None:
            return self.app(environ, start_response)
        code, status, body = fault
        doc = body.encode() if body is not None else (
            f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
            f'<Message>injected by the test</Message></Error></Errors>'
            f'<RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>').encode()
        start_response(f"{status} Injected", [("Content-Type", "text/xml"), ("Content-Length", str(len(doc)))])
        return [doc]


def main(argv: list[str]) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    host, port = argv[0], int(argv[1])
    _patch_moto()
    # The services the tests use, loaded before listening: a client waiting for the port then finds them ready.
    import moto.ec2.models
    import moto.iam.models
    import moto.sts.models  # noqa: F401
    server = make_server(host, port, Faults(DomainDispatcherApplication(create_backend_app)), threaded=True,
                         request_handler=MotoRequestHandler)
    print(f"moto EC2 on http://{host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
