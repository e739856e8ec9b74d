"""How to reach etcd: the ``--etcd-*`` flags as options, and their checks at start-up (spec §6.9).

Kept free of gRPC (which costs ~10 MiB and a noticeable import time) so that flag validation can check the
endpoints and the TLS files before anything is dialled: a typo in an endpoint or a file name is an operator's
mistake that no amount of retrying fixes, so it is reported once, at start, naming the flag. The client
(``etcd_client``) parses endpoints with the same function, so what passes here is what gets dialled.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flannel.errors import ConfigError
from flannel.secret import NO_SECRET, Secret, has_userinfo, strip_userinfo

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

DEFAULT_PORT = 2379
INSECURE_WARNING = "no certificate provided: connecting to etcd with http. This is insecure"
_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", re.ASCII)


@dataclass(frozen=True)
class EtcdStoreOptions:
    """How to reach etcd: flanneld's ``--etcd-*`` flags."""

    endpoints: Sequence[str] = ("http://127.0.0.1:2379",)
    """Endpoint URLs as flanneld takes them (``http://h:2379``, ``https://h:2379`` or bare ``h:2379``)."""
    keyfile: str = ""
    """Client private key (PEM) for TLS client authentication."""
    certfile: str = ""
    """Client certificate (PEM); TLS client auth needs both this and ``keyfile``."""
    cafile: str = ""
    """CA bundle to verify the server; the system bundle when empty."""
    username: str = ""
    """etcd user for authentication (with ``password``)."""
    password: Secret[str] = NO_SECRET
    """Password of ``username`` (a ``Secret``: this dataclass' ``repr`` and every message leave it out)."""
    request_timeout: float = 10.0
    """Upper bound in seconds for one request on one endpoint, retries included, so an unreachable etcd
    fails, not hangs. A request that fails over may take this long once per endpoint."""

    def __post_init__(self) -> None:
        # Hashable, whatever sequence was given; ``user:password@`` dropped, because the client never used it
        # (nor does upstream's: credentials come from --etcd-username/--etcd-password) and every error names
        # the endpoint.
        cleaned = tuple(strip_userinfo(e.strip()) for e in self.endpoints if e.strip())
        object.__setattr__(self, "endpoints", cleaned)
        if isinstance(self.password, str):  # a plain string from a caller outside the type checker's view
            object.__setattr__(self, "password", Secret(self.password))

    @classmethod
    def from_flag(cls, endpoints: str, **kwargs: Any) -> EtcdStoreOptions:
        """Build from the comma-separated ``--etcd-endpoints`` text; user info in an endpoint is dropped, with a
        warning that names the endpoint without it."""
        urls = endpoints.split(",")
        for url in urls:
            if has_userinfo(url.strip()):
                log.warning("etcd endpoint %s: user info in the URL is ignored (as upstream); use "
                            "--etcd-username and FLANNELD_ETCD_PASSWORD", strip_userinfo(url.strip()))
        return cls(endpoints=urls, **kwargs)


@dataclass(frozen=True)
class Endpoint:
    """One ``--etcd-endpoints`` entry, split."""

    scheme: str
    """``http``, ``https`` or ``""`` (a bare ``host:port``)."""
    host: str
    """Host name or IP address (IPv6 without brackets)."""
    port: int
    """TCP port; 2379 when not given."""


def parse_endpoint(url: str) -> Endpoint:
    """Split ``scheme://host:port`` (scheme optional, port 2379 by default); ``ValueError`` if malformed.

    The message starts with ``invalid etcd endpoint '<url>'`` and says what is wrong.
    """

    def bad(why: str) -> ValueError:
        return ValueError(f"invalid etcd endpoint {url!r}: {why}")

    try:
        parts = urlsplit(url if "://" in url else f"//{url}")
        port = parts.port
    except ValueError as exc:  # a bad port, or a malformed [IPv6] literal
        raise bad(str(exc)) from None
    if parts.scheme not in ("", "http", "https"):
        raise bad(f"unsupported scheme {parts.scheme!r} (use http://, https:// or a bare host:port)")
    host = parts.hostname
    if not host:
        raise bad("no host")
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    elif _HOST_RE.fullmatch(host) is None:
        raise bad(f"{host!r} is not a host name or IP address")
    if parts.username is not None or parts.password is not None:
        raise bad("credentials in the URL are not used (give --etcd-username and --etcd-password)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise bad("a path, query or fragment is not used")
    if port == 0:
        raise bad("port 0")
    return Endpoint(parts.scheme, host, port or DEFAULT_PORT)


def uses_tls(ep: Endpoint, have_client_cert: bool) -> bool:
    """Like the Go etcd client: ``https://`` always, ``http://`` never, a bare address with a client certificate."""
    return ep.scheme == "https" or (ep.scheme == "" and have_client_cert)


def check_etcd_flags(endpoints: str, keyfile: str, certfile: str, cafile: str) -> list[str]:
    """Check ``--etcd-endpoints`` and the TLS file flags at start; warnings to log, ``ConfigError`` if unusable.

    Every endpoint must parse, and every named file must exist and not be a directory (Go fails at start on a
    missing certificate or key too; this port would otherwise retry for ever). Settings that are legal but
    have no effect are warnings: a certificate without its key, TLS files with ``http://`` endpoints.
    """
    urls = EtcdStoreOptions.from_flag(endpoints).endpoints
    if not urls:
        raise ConfigError("--etcd-endpoints: no etcd endpoint given", "etcd-endpoints")
    parsed = []
    for url in urls:
        try:
            parsed.append(parse_endpoint(url))
        except ValueError as exc:
            raise ConfigError(f"--etcd-endpoints: {exc}", "etcd-endpoints") from None
    for flag, path in (("etcd-certfile", certfile), ("etcd-keyfile", keyfile), ("etcd-cafile", cafile)):
        if path:
            _check_file(flag, path)
    warnings = []
    have_cert = bool(certfile and keyfile)
    if bool(certfile) != bool(keyfile):
        given, missing = ("certfile", "keyfile") if certfile else ("keyfile", "certfile")
        warnings.append(f"--etcd-{given} is set without --etcd-{missing}: TLS client authentication needs both, "
                        f"so no client certificate is used")
    plain = [url for url, ep in zip(urls, parsed, strict=True) if not uses_tls(ep, have_cert)]
    if (certfile or keyfile or cafile) and plain:
        warnings.append(f"TLS is not used for the endpoints {', '.join(plain)}: --etcd-certfile, --etcd-keyfile "
                        f"and --etcd-cafile apply only to https:// endpoints (and bare ones with a client "
                        f"certificate)")
    return warnings


def _check_file(flag: str, path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ConfigError(f"--{flag}: {path}: {exc.strerror or exc}", flag) from None
    except ValueError as exc:  # an embedded NUL byte
        raise ConfigError(f"--{flag}: {path!r}: {exc}", flag) from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"--{flag}: {path}: is a directory", flag)


CLIENT_ENV = "FLANNEL_ETCD_CLIENT"
"""Environment variable choosing the etcd client: ``gateway`` (the default) or ``grpc``."""
CLIENTS = ("gateway", "grpc")
