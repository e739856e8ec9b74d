"""Where TLS's memory goes in a flanneld-like process (issue #16): each step in a fresh interpreter.

The gateway etcd client needs Python's ``ssl`` for ``https://`` endpoints, and flanneld with TLS measured
~7.5 MiB more than without. This splits that figure: importing ``ssl`` (OpenSSL's libssl and libcrypto are
loaded and initialised), building a context (``ssl.create_default_context`` against a bare
``SSLContext(PROTOCOL_TLS_CLIENT)``), loading the CA (the given file against the system bundle), the client
certificate, and one connection (handshake with client certificate, a request, an answer) to a local TLS
server. Each variant runs in its own process, which prints its VmRSS and VmHWM; medians of ``--rounds``.

Usage: .venv/bin/python bench/bench_tls_cost.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

CHILD = r'''
import sys
steps = sys.argv[1].split(",")
tls = sys.argv[2]
if "ssl" not in steps:
    sys.modules["ssl"] = None
import asyncio

def mem():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out

ctx = None
if "ssl" in steps:
    import ssl
if "default_ctx" in steps:
    ctx = ssl.create_default_context(cafile=tls + "/ca.pem")
if "default_ctx_system" in steps:
    ctx = ssl.create_default_context(cafile="/etc/ssl/certs/ca-certificates.crt")
if "bare_ctx" in steps:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=tls + "/ca.pem")
if "cert" in steps:
    ctx.load_cert_chain(tls + "/client.pem", tls + "/client-key.pem")
if "small_buffer" in steps:
    import asyncio.sslproto
    asyncio.sslproto.SSLProtocol.max_size = 16 * 1024
if "connect" in steps:
    port = int(sys.argv[3])
    async def talk():
        conns = []
        for _ in range(int(sys.argv[4])):
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
            w.write(b"ping\n")
            await w.drain()
            await r.readline()
            conns.append(w)
        for w in conns:
            w.close()
    asyncio.run(talk())
import json
print(json.dumps({**mem(), "hashlib": "_hashlib" in sys.modules}))
'''

VARIANTS: list[tuple[str, str, int]] = [
    ("asyncio, ssl blocked (as flanneld over http://)", "", 0),
    ("asyncio + import ssl", "ssl", 0),
    ("+ create_default_context(cafile=CA)", "ssl,default_ctx", 0),
    ("+ SSLContext(PROTOCOL_TLS_CLIENT) + load_verify_locations(CA)", "ssl,bare_ctx", 0),
    ("+ create_default_context(system bundle)", "ssl,default_ctx_system", 0),
    ("+ default context, CA, client cert", "ssl,default_ctx,cert", 0),
    ("+ bare context, CA, client cert", "ssl,bare_ctx,cert", 0),
    ("+ bare context, CA, client cert, 1 connection", "ssl,bare_ctx,cert,connect", 1),
    ("+ bare context, CA, client cert, 5 connections", "ssl,bare_ctx,cert,connect", 5),
    ("+ bare context, CA, client cert, 5 connections, 16 KiB TLS buffer", "ssl,bare_ctx,cert,connect,small_buffer", 5),
]


async def serve(tls: Path) -> tuple[asyncio.Server, int]:
    """A TLS echo-a-line server requiring client certificates, as etcd does with ``--client-cert-auth``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls / "ca.pem"))
    ctx.load_cert_chain(tls / "server.pem", tls / "server-key.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            w.write(await r.readline())
            await w.drain()
            await r.read()
        except (OSError, ssl.SSLError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.etcd_server import make_tls_files

    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        make_tls_files(Path(tmp))
        server, port = await serve(Path(tmp))
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in VARIANTS}
        for _ in range(args.rounds):
            for name, steps, conns in VARIANTS:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", CHILD, steps, tmp, str(port), str(conns), stdout=subprocess.PIPE)
                out, _ = await proc.communicate()
                results[name].append(json.loads(out))
        server.close()
    base = statistics.median(r["VmHWM"] for r in results[VARIANTS[0][0]])
    print(f"{'variant':72} {'VmRSS':>8} {'VmHWM':>8} {'over ssl blocked':>17}  hashlib")
    for name, _, _ in VARIANTS:
        rss = statistics.median(r["VmRSS"] for r in results[name])
        hwm = statistics.median(r["VmHWM"] for r in results[name])
        print(f"{name:72} {rss:7.1f}M {hwm:7.1f}M {hwm - base:+16.1f}M  {results[name][0]['hashlib']}")


if __name__ == "__main__":
    asyncio.run(main())
