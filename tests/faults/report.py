"""Turn the fault suite's figures (JSON lines) into the markdown table of ``docs/reliability.md``.

Usage: ``.venv/bin/python tests/faults/report.py [FIGURES.jsonl]`` (default ``$FLANNEL_FAULT_FIGURES``).
One row per test, its latest run; the table goes to standard output. "Ready again" is the largest over the
running flanneld processes, each host's own figure in brackets.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

HEADER = ("| Scenario | Lost / sent pings | Ready again (s) | Unready during fault | flanneld exits "
          "| Kernel = leases | Result | Commit | Command |")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def row(fig: dict[str, Any]) -> str:
    ready = "never" if fig["ready_again_s"] is None else f"{fig['ready_again_s']:.2f}"
    per_host = ", ".join(f"{h} {'never' if v is None else f'{v:.2f}'}" for h, v in fig["ready_again_by_host"].items())
    ready += f" ({per_host})"
    unready = ", ".join(sorted(fig["unready_during_fault"])) or "none"
    exits = ", ".join(f"{e['host']} (exit {e['code']})" for e in fig["exits"]) or "none"
    agrees = "yes" if fig["kernel_agrees"] else f"no ({len(fig['mismatches'])} differences)"
    extra = "; ".join(f"{k}: {v}" for k, v in fig["extra"].items() if k != "note")
    scenario = fig["scenario"] + (f" ({extra})" if extra else "")
    result = fig["result"]
    return (f"| {_cell(scenario)} | {fig['lost']} / {fig['sent']} | {ready} | {_cell(unready)} | {_cell(exits)} "
            f"| {agrees} | {result} | {fig['commit']} | `{fig['command']}` |")


def table(lines: list[str]) -> str:
    latest: dict[str, dict[str, Any]] = {}
    for line in lines:
        if line.strip():
            fig = json.loads(line)
            latest[fig["nodeid"]] = fig  # later runs replace earlier ones
    return "\n".join([HEADER, "|" + "---|" * HEADER.count(" | ") + "---|", *map(row, latest.values())])


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FLANNEL_FAULT_FIGURES", "")
    if not path:
        sys.exit("usage: report.py FIGURES.jsonl (or set FLANNEL_FAULT_FIGURES)")
    with open(path) as f:
        print(table(f.readlines()))


if __name__ == "__main__":
    main()
