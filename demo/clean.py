"""Remove what ``make demo KEEP=1`` left running: its namespaces, the processes inside them, its files.

Only namespaces of the demo/test family whose creating process has exited are touched, so a test run in
progress is left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.cluster import NS_FAMILY


def main() -> int:
    names = [line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                                        check=True).stdout.splitlines() if line.strip()]
    removed = 0
    stopped: list[int] = []
    for name in names:
        m = re.match(rf"^{NS_FAMILY}(\d+)x", name)
        if not m or Path(f"/proc/{m.group(1)}").exists():
            continue
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGTERM)
                stopped.append(int(pid))
                print(f"stopping process {pid} in {name}")
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", name], check=False)
        removed += 1
    deadline = time.monotonic() + 5
    while stopped and time.monotonic() < deadline:
        stopped = [pid for pid in stopped if Path(f"/proc/{pid}").exists()]
        time.sleep(0.1)
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for tmp in Path(tempfile.gettempdir()).glob(f"flannel-e2e-{NS_FAMILY}*"):
        m = re.match(rf"^flannel-e2e-{NS_FAMILY}(\d+)x", tmp.name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"removed {removed} namespaces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
