"""The two inputs of a CNI call: ``CNI_*`` environment variables and the network config on stdin.

The checks and their wording are those of the CNI library's ``skel`` package (v1.3.0), which upstream's
plugin runs under, so a runtime sees the same codes: missing or invalid variables are code 4, an unusable
network config code 7, an unsupported ``cniVersion`` code 1. One deliberate difference: stdin that is not
JSON at all is code 7 (invalid network config) here, where ``skel`` says 6 (decoding failure).

Go matches JSON keys to struct fields case-insensitively, so ``"SubnetFile"`` works upstream; the config
reader does the same (``lite.fold_keys``). Keys inside ``delegate`` and ``ipam`` are map keys in Go and are
matched exactly.
"""

from __future__ import annotations

from flannel.cni.errors import INCOMPATIBLE_VERSION, INVALID_ENVIRONMENT, INVALID_NETWORK_CONFIG, CNIError
from flannel.cni.lite import JSONError, dataclass, fold_keys, load_object
from flannel.cni.versions import SUPPORTED_VERSIONS, effective_version, go_quote, go_quote_list

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_CHARS = _ALNUM | frozenset("_.-")
_MAX_IFNAME = 15
MAX_CONTAINER_ID = 255
"""The saved config is named by the container ID, and a file name has at most 255 bytes (NAME_MAX)."""

# Which variables each command needs (skel's table); CNI_COMMAND is always needed.
_REQUIRED = {
    "CNI_CONTAINERID": ("ADD", "CHECK", "DEL"),
    "CNI_NETNS": ("ADD", "CHECK"),
    "CNI_IFNAME": ("ADD", "CHECK", "DEL"),
    "CNI_PATH": ("ADD", "CHECK", "DEL", "GC", "STATUS"),
}


@dataclass(frozen=True)
class CniArgs:
    """The ``CNI_*`` variables of one call, checked for the command."""

    command: str
    container_id: str
    netns: str
    ifname: str
    path: tuple[str, ...]
    """``CNI_PATH`` split on ``:``, empty entries dropped."""


@dataclass(frozen=True)
class NetConf:
    """The flannel plugin's network config (§13.1), with upstream's defaults filled in."""

    raw: dict[str, Any]
    """The whole document, for the keys only some commands read (``prevResult``, valid attachments)."""
    cni_version: str
    """As given; empty when absent (then the delegate config gets no ``cniVersion`` either, as upstream)."""
    name: str
    type: str
    """This plugin's own type (``flannel``), as given."""
    subnet_file: str
    data_dir: str
    delegate: dict[str, Any] | None
    ipam: dict[str, Any] | None
    runtime_config: dict[str, Any] | None

    @property
    def version(self) -> str:
        """The spec version the caller speaks (an absent ``cniVersion`` means 0.1.0)."""
        return effective_version(self.cni_version)


def is_valid_name(text: str) -> bool:
    """``^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$``: what CNI allows in container IDs and network names.

    It also makes a container ID safe as a file name under the data directory (no ``/``, no ``..``).
    """
    return bool(text) and text[0] in _ALNUM and all(c in _NAME_CHARS for c in text)


def read_args(environ: Mapping[str, str]) -> CniArgs:
    """Collect and check the variables the command needs (an unknown command is the caller's business)."""
    command = environ.get("CNI_COMMAND", "")
    missing = [] if command else ["CNI_COMMAND"]
    for var, commands in _REQUIRED.items():
        value = environ.get(var, "")
        if not value:
            if command in commands:
                missing.append(var)
        elif command in commands:
            _validate(var, value)
    if missing:
        raise CNIError(INVALID_ENVIRONMENT, f"required env variables [{','.join(missing)}] missing")
    path = tuple(p for p in environ.get("CNI_PATH", "").split(":") if p)
    return CniArgs(
        command, environ.get("CNI_CONTAINERID", ""), environ.get("CNI_NETNS", ""), environ.get("CNI_IFNAME", ""), path
    )


def _validate(var: str, value: str) -> None:
    if var == "CNI_CONTAINERID":
        # Checked before the characters, so that the error object does not echo an arbitrarily long value.
        if len(value) > MAX_CONTAINER_ID:
            details = f"at most {MAX_CONTAINER_ID} characters, got {len(value)}"
            raise CNIError(INVALID_ENVIRONMENT, "containerID is too long", details)
        if not is_valid_name(value):
            raise CNIError(INVALID_ENVIRONMENT, "invalid characters in containerID", value)
    if var == "CNI_IFNAME":
        if len(value.encode()) > _MAX_IFNAME:
            details = f"interface name should be less than {_MAX_IFNAME + 1} characters"
            raise CNIError(INVALID_ENVIRONMENT, "interface name is too long", details)
        if value in (".", ".."):
            raise CNIError(INVALID_ENVIRONMENT, "interface name is . or ..")
        if any(c in "/:" or c.isspace() for c in value):
            raise CNIError(INVALID_ENVIRONMENT, "interface name contains / or : or whitespace characters")


_FIELDS = ("cniVersion", "name", "type", "subnetFile", "dataDir", "delegate", "ipam", "runtimeConfig")


def parse_netconf(data: bytes) -> NetConf:
    """Decode and check stdin; raise :class:`CNIError` (7, or 1 for the version) naming the key at fault."""
    try:
        raw = load_object(data)
    except JSONError as exc:
        raise CNIError(INVALID_NETWORK_CONFIG, f"error parsing network config from stdin: {exc}") from None
    fields = fold_keys(raw, _FIELDS)
    name = _string(fields, "name", "")
    if not name:
        raise CNIError(INVALID_NETWORK_CONFIG, "missing network name")
    if not is_valid_name(name):
        raise CNIError(INVALID_NETWORK_CONFIG, "invalid characters found in network name", name)
    cni_version = _string(fields, "cniVersion", "")
    if effective_version(cni_version) not in SUPPORTED_VERSIONS:
        config = go_quote(effective_version(cni_version))
        details = f"config is {config}, plugin supports {go_quote_list(SUPPORTED_VERSIONS)}"
        raise CNIError(INCOMPATIBLE_VERSION, "incompatible CNI versions", details)
    return NetConf(
        raw=raw,
        cni_version=cni_version,
        name=name,
        type=_string(fields, "type", ""),
        # An empty string means the default (Go would use it as is: a relative dataDir in the runtime's cwd).
        subnet_file=_string(fields, "subnetFile", DEFAULT_SUBNET_FILE) or DEFAULT_SUBNET_FILE,
        data_dir=_string(fields, "dataDir", DEFAULT_DATA_DIR) or DEFAULT_DATA_DIR,
        delegate=_object(fields, "delegate"),
        ipam=_object(fields, "ipam"),
        runtime_config=_object(fields, "runtimeConfig"),
    )


def _string(fields: dict[str, Any], key: str, default: str) -> str:
    value = fields.get(key)
    if value is None:  # absent, or JSON null: Go leaves the field as it was
        return default
    if not isinstance(value, str):
        raise CNIError(INVALID_NETWORK_CONFIG, f"invalid network config: {key!r} must be a string")
    return value


def _object(fields: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = fields.get(key)
    if value is not None and not isinstance(value, dict):
        raise CNIError(INVALID_NETWORK_CONFIG, f"invalid network config: {key!r} must be a JSON object")
    return value
