"""``mk-docker-opts``: turn flanneld's ``subnet.env`` into dockerd options (``--bip``, ``--mtu``, ``--ip-masq``).

Docker hosts running flannel with etcd start dockerd through a systemd drop-in that runs this first and then
passes ``$DOCKER_OPTS`` (deploy/systemd/docker.service.d/flannel.conf, docs/docker.md). Upstream ships the
same tool as ``dist/mk-docker-opts.sh``; existing units, images and scripts call it by that name and read its
output, so the file we write is byte-identical to what that script writes under ``/bin/sh`` = dash (Debian and
Ubuntu hosts) for the same ``subnet.env``, flags and environment. tests/unit/test_docker_opts.py holds vectors
produced by the script itself. Run by busybox ash (upstream's Alpine image) the script writes the same bytes
except for a backslash in a value (ash's ``echo`` keeps it, dash's interprets it) and ``-k DOCKER_OPT_...``
(ash's ``set`` does not list ``OPTARG``): measured on the same 1,076 cases, 130 differ, all of those.

What the script does, and so what this does:

* options ``-f FILE`` (default ``/run/flannel/subnet.env``), ``-d FILE`` (default ``/run/docker_opts.env``),
  ``-i`` individual ``DOCKER_OPT_*`` lines, ``-c`` the combined line (neither: both), ``-k KEY`` the combined
  line's name, ``-m`` no ``--ip-masq``; parsed like ``getopts``, a bad flag prints the usage and exits 1;
* the subnet file's assignments overlay the environment (the script sources it), and a missing file is no
  error: whatever ``FLANNEL_*`` the environment holds is used;
* ``--ip-masq`` is the *opposite* of ``FLANNEL_IPMASQ`` (flanneld masquerades, so Docker must not); any value
  but ``true``/``false`` is an error, before the output file is touched;
* every shell variable whose name or value mentions ``DOCKER_OPT_`` is an option, sorted by name: the script
  lists them with ``set | grep``, so ``DOCKER_OPT_*`` variables from the environment join in;
* the combined value starts with the key's current value plus a space when it has one, then adds
  ``" " + option`` for each option, hence its leading space;
* after writing, a route *via* a gateway to our own subnet means another host's traffic would be sent away:
  exit 1 with the offending ``ip route`` lines.

Where the script's behaviour is an accident of the shell we do the plain thing instead (docs/docker.md lists
these): a relative ``-f`` path is read from the working directory (dash's ``.`` searches PATH for it, fails and
writes nothing), a subnet file must hold only assignments (the script would run any command in it), a value
with blanks stays one option (the script's word splitting writes broken lines), and ``-k`` must be a variable
name. This module imports only the standard library's lightest parts: it runs once per dockerd start.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DOCKER_ENV = "/run/docker_opts.env"
DEFAULT_KEY = "DOCKER_OPTS"
OPTION_MARK = "DOCKER_OPT_"
"""What ``set | grep`` looks for: a variable whose ``name='value'`` line holds it is an option."""

USAGE = """{prog} [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file
OPTIONS:
\t-f\tPath to flannel env file. Defaults to /run/flannel/subnet.env
\t-d\tPath to Docker env file to write to. Defaults to /run/docker_opts.env
\t-i\tOutput each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
\t-c\tOutput combined Docker options into DOCKER_OPTS var
\t-k\tSet the combined options key to this value (default DOCKER_OPTS=)
\t-m\tDo not output --ip-masq (useful for older Docker version)

"""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ASSIGNMENT = re.compile(r"(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)\Z", re.DOTALL)
_IFS = re.compile(r"[ \t\n]+")
"""The shell's field separators (not Python's whitespace: a ``\r`` from a CRLF file stays in the value)."""
_ECHO_ESCAPES = {"\\": "\\", "a": "\a", "b": "\b", "e": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


class OptsError(Exception):
    """A failure worth one line on stderr and exit status 1, the script's status for its own errors."""


class UsageError(Exception):
    """A bad flag: ``message`` (getopts' complaint, if any) goes before the usage text."""


def parse_flags(args: Sequence[str]) -> dict[str, str]:
    """The script's ``getopts "f:d:icmk:?h"`` loop: grouped flags, attached arguments, ``--``, first operand."""
    flags = {"f": DEFAULT_SUBNET_FILE, "d": DEFAULT_DOCKER_ENV, "k": DEFAULT_KEY, "i": "", "c": "", "m": ""}
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            break
        pos = 1
        while pos < len(arg):
            letter = arg[pos]
            pos += 1
            if letter in "fdk":
                if pos < len(arg):
                    value, pos = arg[pos:], len(arg)
                elif index < len(args):
                    value, index = args[index], index + 1
                else:
                    raise UsageError(f"No arg for -{letter} option\n")
                flags[letter] = value
                flags["OPTARG"] = value
            elif letter in "icm":
                flags[letter] = "true"
                flags["OPTARG"] = ""
            elif letter in "?h":
                raise UsageError("")
            else:
                raise UsageError(f"Illegal option -{letter}\n")
    return flags


def _unquote(text: str, where: str) -> str:
    """The value of a shell word made of plain, ``'single'`` and ``"double"`` quoted parts (no expansions)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise OptsError(f"{where}: unterminated ' quote")
            out.append(text[i + 1 : end])
            i = end + 1
        elif char == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                if text[i] in "$`":
                    raise OptsError(f"{where}: expansions ($, `) are not supported")
                if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in '$`"\\\n':
                    i += 1
                out.append(text[i])
                i += 1
            if i >= len(text):
                raise OptsError(f'{where}: unterminated " quote')
            i += 1
        elif char == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif char in " \t" and text[i:].lstrip(" \t")[:1] in ("", "#"):
            break  # trailing blanks or a comment
        elif char in "$`;&|<>() \t":
            raise OptsError(f"{where}: only NAME=VALUE assignments are supported, found {char!r}")
        else:
            out.append(char)
            i += 1
    return "".join(out)


def read_subnet_file(path: str) -> dict[str, str]:
    """The assignments of ``path`` (``export``, quotes and ``#`` comments allowed); nothing if it is missing."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            lines = f.read().split("\n")
    except OSError as exc:
        raise OptsError(f"{path}: {exc.strerror}") from exc
    found: dict[str, str] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.lstrip(" \t")
        if not line or line.startswith("#"):
            continue
        match = _ASSIGNMENT.match(line)
        if match is None:
            raise OptsError(f"{path}:{number}: only NAME=VALUE assignments are supported: {raw!r}")
        found[match.group(1)] = _unquote(match.group(2), f"{path}:{number}")
    return found


def dash_echo(text: str) -> str:
    """What dash's ``echo TEXT`` prints, newline included: it interprets backslash escapes, ``\\c`` stops."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "c":
            return "".join(out)
        if nxt == "0":
            digits = re.match(r"[0-7]{0,3}", text[i + 2 : i + 5])
            octal = digits.group(0) if digits else ""
            out.append(chr(int(octal or "0", 8) & 0xFF))
            i += 2 + len(octal)
        elif nxt in _ECHO_ESCAPES:
            out.append(_ECHO_ESCAPES[nxt])
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out) + "\n"


def option_value(value: str) -> str:
    """``$(eval echo "\\$NAME")``: the value split on blanks, rejoined by one space, echoed, newlines trimmed."""
    return dash_echo(" ".join(_IFS.split(value.strip(" \t\n")))).rstrip("\n")


def docker_options(variables: Mapping[str, str], use_ipmasq: bool) -> dict[str, str]:
    """``DOCKER_OPT_BIP``/``_MTU``/``_IPMASQ`` for the ``FLANNEL_*`` values that are set."""
    opts: dict[str, str] = {}
    if variables.get("FLANNEL_SUBNET"):
        opts["DOCKER_OPT_BIP"] = "--bip=" + variables["FLANNEL_SUBNET"]
    if variables.get("FLANNEL_MTU"):
        opts["DOCKER_OPT_MTU"] = "--mtu=" + variables["FLANNEL_MTU"]
    ipmasq = variables.get("FLANNEL_IPMASQ", "")
    if ipmasq and use_ipmasq:
        if ipmasq not in ("true", "false"):
            raise OptsError(dash_echo(f"Invalid value of FLANNEL_IPMASQ: {ipmasq}").rstrip("\n"))
        opts["DOCKER_OPT_IPMASQ"] = "--ip-masq=" + ("false" if ipmasq == "true" else "true")
    return opts


def render(environ: Mapping[str, str], flags: Mapping[str, str]) -> tuple[str, str]:
    """The output file's text, and ``FLANNEL_SUBNET`` (for the route check) for these flags and environment."""
    key = flags["k"]
    if not _NAME.match(key):
        raise OptsError(f"-k {key!r}: the combined key must be a shell variable name")
    individual, combined = bool(flags["i"]), bool(flags["c"])
    if not individual and not combined:
        individual = combined = True
    variables = {name: value for name, value in environ.items() if _NAME.match(name)}
    variables.update(read_subnet_file(flags["f"]))
    variables.update(docker_options(variables, use_ipmasq=not flags["m"]))
    existing = variables.get(key, "")
    combined_value = existing + " " if existing else ""
    # The script's own variables are listed by `set` too; they matter only if they mention DOCKER_OPT_.
    variables.update(flannel_env=flags["f"], docker_env=flags["d"], combined_opts_key=key, docker_opts=combined_value)
    if "OPTARG" in flags:
        variables["OPTARG"] = flags["OPTARG"]
    lines: list[str] = []
    for name in sorted(variables):
        if OPTION_MARK not in name and OPTION_MARK not in variables[name]:
            continue
        value = option_value(variables[name])
        if individual:
            lines.append(dash_echo(f'{name}="{value}"'))
        combined_value += " " + value
    if combined:
        lines.append(dash_echo(f'{key}="{combined_value}"'))
    return "".join(lines), variables.get("FLANNEL_SUBNET", "")


def conflicting_routes(flannel_subnet: str, environ: Mapping[str, str]) -> str:
    """``ip route`` lines with a gateway to our own subnet (the script's ``grep SUBNET | grep via``).

    ``ip`` is looked up on ``environ``'s PATH, the one the script would search.
    """
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)\.(\d+)/(\d+)", flannel_subnet)
    if match is None:
        return ""
    a, b, c, d, length = match.groups()
    subnet = f"{a}.{b}.{c}.{int(d) - 1}/{length}"
    pattern = re.compile(".".join(re.escape(part) for part in subnet.split(".")))  # grep: "." is any character
    import subprocess  # here: only a file with an IPv4 subnet needs it, and it is the heaviest import

    try:
        shown = subprocess.run(
            ["ip", "route", "show"], capture_output=True, text=True, check=False, env=dict(environ)
        ).stdout
    except OSError:
        return ""  # no `ip`: the script's pipeline finds nothing either
    return "\n".join(line for line in shown.splitlines() if pattern.search(line) and "via" in line)


def write_output(path: str, text: str) -> None:
    """Create or truncate ``path`` (mode 0666 less the umask, as a shell redirection does) and write ``text``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    except OSError as exc:
        raise OptsError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The console script: the exit status is the script's (0, or 1 for usage, a bad value or a route clash)."""
    argv = list(sys.argv if argv is None else argv)
    environ = os.environ if environ is None else environ
    try:
        flags = parse_flags(argv[1:])
    except UsageError as exc:
        sys.stderr.write(str(exc) + USAGE.format(prog=argv[0] if argv else "mk-docker-opts"))
        return 1
    try:
        text, flannel_subnet = render(environ, flags)
        write_output(flags["d"], text)
        clash = conflicting_routes(flannel_subnet, environ)
    except OptsError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    if clash:
        sys.stderr.write(dash_echo(f"Your routing table already contains the subnet: {clash}"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
