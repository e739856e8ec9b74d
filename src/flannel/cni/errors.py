"""The CNI error object, its well-known codes, and the Go-style wording of system errors.

Every failure of the plugin ends as one JSON object on stdout, ``{"cniVersion", "code", "msg", "details"}``,
and a non-zero exit status (CNI spec, "Error"). Runtimes act on the code, people read the message, so each
message names the file, key or variable at fault. Raising :class:`CNIError` anywhere below ``plugin.main``
is how a command fails; ``main`` is the one place that prints it.
"""

from __future__ import annotations

from flannel.cni.lite import Struct, dumps

# Well-known error codes (CNI spec 1.1, "Error").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
"""STATUS: the plugin cannot service ADD requests."""
INTERNAL = 999


class CNIError(Exception):
    """A failure reported to the runtime as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg}; {self.details}" if self.details else self.msg

    def __repr__(self) -> str:
        return f"CNIError({self.code}, {self.msg!r}, {self.details!r})"

    def to_json(self, cni_version: str) -> str:
        """The error object as the CNI spec shows it, one line with a trailing newline."""
        obj = Struct(cniVersion=cni_version, code=self.code, msg=self.msg, details=self.details)
        return dumps(obj) + "\n"


def os_error_text(op: str, path: str, exc: OSError) -> str:
    """``open /run/flannel/subnet.env: no such file or directory``: what Go's ``*PathError`` prints.

    Upstream's messages embed Go's error texts; keeping their shape keeps log searches and docs valid.
    """
    reason = exc.strerror or str(exc)
    return f"{op} {path}: {reason[:1].lower()}{reason[1:]}"


def code_for_os_error(exc: OSError, missing: int = IO_FAILURE) -> int:
    """``missing`` for a file that does not exist, otherwise the I/O failure code."""
    return missing if isinstance(exc, FileNotFoundError) else IO_FAILURE
