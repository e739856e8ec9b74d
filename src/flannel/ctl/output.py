"""What every ``flannelctl`` command prints: findings, tables for people, stable JSON for scripts.

Each command builds one report: a dict of plain values (its JSON form, whose keys are documented in
docs/flannelctl.md and never renamed) plus a list of ``Finding``. The exit code follows from the findings alone
(``exit_code``), so a script can rely on it without parsing anything, and colour is added only when the output
is a terminal: a pipe or a file gets plain text that diffs and greps cleanly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

ERROR = "error"
"""A problem: the command exits 1."""
WARNING = "warning"
"""Worth knowing (a check that could not run, a setting with no effect); does not change the exit code."""

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2

_COLOURS = {ERROR: "\033[31m", WARNING: "\033[33m", "ok": "\033[32m", "dim": "\033[2m"}
_RESET = "\033[0m"


@dataclass(frozen=True)
class Finding:
    """One thing a check found. Its JSON keys: ``severity``, ``code``, ``subject``, ``message``, ``fix``."""

    severity: str
    """``error`` or ``warning``."""
    code: str
    """A stable identifier for scripts, e.g. ``duplicate_public_ip`` or ``drift``."""
    subject: str
    """What it is about: a lease key, a kernel entry, an endpoint."""
    message: str
    """What is wrong and why it matters, in one sentence."""
    fix: str = ""
    """The command that repairs it, when there is one."""

    def as_json(self) -> dict[str, str]:
        return {"severity": self.severity, "code": self.code, "subject": self.subject, "message": self.message,
                "fix": self.fix}


def exit_code(findings: Sequence[Finding]) -> int:
    """1 when any finding is an error, else 0."""
    return EXIT_PROBLEMS if any(f.severity == ERROR for f in findings) else EXIT_OK


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, style: str, colour: bool) -> str:
    """``text`` in the colour of ``style`` (a severity, ``ok`` or ``dim``) when ``colour`` is on."""
    code = _COLOURS.get(style)
    return f"{code}{text}{_RESET}" if colour and code else text


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; a lone ``-`` stands for an empty cell."""
    cells = [[c if c else "-" for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def render_findings(findings: Sequence[Finding], colour: bool) -> str:
    """One block per finding: severity, subject and message, then the fix indented."""
    if not findings:
        return paint("no problems found", "ok", colour)
    lines = []
    for f in findings:
        lines.append(f"{paint(f.severity.upper(), f.severity, colour)} {f.code} {f.subject}: {f.message}")
        if f.fix:
            lines.append(f"    fix: {f.fix}")
    return "\n".join(lines)


def emit(stream: TextIO, report: dict[str, Any], findings: Sequence[Finding], human: str, as_json: bool) -> int:
    """Print the report (``human`` text, or the JSON of ``report`` with ``findings`` and ``healthy``) and return
    the exit code."""
    code = exit_code(findings)
    if as_json:
        doc = {**report, "findings": [f.as_json() for f in findings], "healthy": code == EXIT_OK}
        stream.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    else:
        stream.write(human.rstrip("\n") + "\n")
    return code


def duration(seconds: float | None) -> str:
    """``3d4h``, ``5h12m``, ``7m03s``, ``42s``; empty for unknown."""
    if seconds is None:
        return ""
    s = int(seconds)
    sign, s = ("-", -s) if s < 0 else ("", s)
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d{hours}h"
    if hours:
        return f"{sign}{hours}h{minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m{secs:02d}s"
    return f"{sign}{secs}s"
