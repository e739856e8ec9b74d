"""Poll one flanneld's ``/readyz`` every 0.1 s and write each change of answer, with the time, to a file.

Started inside a host's namespace (``ip netns exec``) by ``tests/faults/harness.py``, one per simulated
host, for the life of the cluster; the harness reads the file to tell when the node was ready again. A line
is ``<monotonic seconds> <status> <body>``; status 0 means no answer (flanneld not listening, or stopped).
CLOCK_MONOTONIC is one clock for every process of the machine, so the harness can compare the times.

Usage: ``readyz_probe.py HOST PORT OUTFILE BOUND_SECONDS``; it ends by itself after BOUND_SECONDS.
"""

from __future__ import annotations

import http.client
import sys
import time


def probe(host: str, port: int) -> tuple[int, str]:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=1.0)
        try:
            conn.request("GET", "/readyz")
            resp = conn.getresponse()
            return resp.status, resp.read(300).decode(errors="replace").replace("\n", " ")
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as exc:
        return 0, type(exc).__name__


def main() -> None:
    host, port, out, bound = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    end = time.monotonic() + bound
    last: int | None = None
    with open(out, "a", buffering=1) as f:
        while time.monotonic() < end:
            status, body = probe(host, port)
            if status != last:
                f.write(f"{time.monotonic():.3f} {status} {body}\n")
                last = status
            time.sleep(0.1)


if __name__ == "__main__":
    main()
