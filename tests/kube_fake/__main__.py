"""Run the fake API server as a process: ``python -m tests.kube_fake --listen 198.18.0.2:6443 ...``.

End-to-end tests start it inside a network namespace, wait for the line starting with ``ready`` on stdout
(it carries the URL, useful with port 0), drive it over the API and the ``/_fake/`` hooks, and stop it
with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from tests.kube_fake.server import FakeKubeApi
from tests.kube_fake.tls import make_tls_dir


def _split_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.kube_fake", description=__doc__)
    p.add_argument("--listen", type=_split_listen, default=("127.0.0.1", 0), help="HOST:PORT (port 0: any)")
    p.add_argument("--tls-dir", type=Path, help="serve HTTPS with DIR/server.crt+key (made with openssl if absent)")
    p.add_argument("--client-ca", action="store_true", help="also accept client certificates signed by DIR/ca.crt")
    p.add_argument("--token", help="require this bearer token")
    p.add_argument("--nodes-file", type=Path, help="JSON list (or NodeList) of nodes to create at start")
    p.add_argument("--generate-nodes", type=int, default=0, help="create this many realistic nodes at start")
    p.add_argument("--bookmark-interval", type=float, default=60.0, help="seconds between watch bookmarks")
    p.add_argument("--history-limit", type=int, default=10000, help="watch events kept before compaction")
    return p.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    host, port = args.listen
    if args.tls_dir is not None and not (args.tls_dir / "server.crt").exists():
        make_tls_dir(args.tls_dir, names=(host, "127.0.0.1", "localhost"))
    api = FakeKubeApi(host, port, tls_dir=args.tls_dir, token=args.token, client_ca=args.client_ca,
                      history_limit=args.history_limit, bookmark_interval=args.bookmark_interval)
    if args.nodes_file is not None:
        data = json.loads(args.nodes_file.read_text())
        for node in data["items"] if isinstance(data, dict) else data:
            api.create_node(node)
    if args.generate_nodes:
        api.add_nodes(args.generate_nodes)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with api:
        print(f"ready {api.url}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
    sys.exit(0)
