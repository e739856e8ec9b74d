"""Taking secrets out of text before it leaves the node in a ``flannelctl bundle``.

A bug report bundle holds logs, configs, unit environments and kernel dumps, any of which can carry a secret:
an etcd password (flag, variable or URL userinfo), a TLS private key, an IPsec PSK or a wireguard key in the
network config's ``Backend`` section, a Kubernetes bearer token (header, kubeconfig, a JWT in a log line). The
rules below replace each value with ``<redacted>`` and keep its name, so the reader still sees that it was set.
They err on the side of removing: a false positive costs a word in a bug report, a miss leaks a credential.
"""

from __future__ import annotations

import re

from flannel.secret import redact_urls

MARK = "<redacted>"

_SECRET_WORD = r"(?:password|passwd|passphrase|psk|pre_?shared[_ -]?key|secret|token|private[_ -]?key|api_?key|" \
               r"credentials?|client-key-data)"

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM private keys, whole blocks (RSA, EC, PKCS#8, encrypted).
    (re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.S),
     f"-----BEGIN \\1PRIVATE KEY-----{MARK}-----END \\1PRIVATE KEY-----"),
    # HTTP authorization headers: Bearer and Basic.
    (re.compile(r"(?i)(authorization\s*[:=]\s*\"?(?:bearer|basic)\s+)[^\s\"',]+"), rf"\1{MARK}"),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1{MARK}"),
    # JSON: "PSK": "...", "token": "...", "PrivateKey": "..." (case-insensitive, as flannel reads its config).
    (re.compile(rf"(?i)(\"[A-Za-z0-9_-]*{_SECRET_WORD}[A-Za-z0-9_-]*\"\s*:\s*)\"(?:[^\"\\]|\\.)*\""),
     rf'\1"{MARK}"'),
    # The same inside a JSON string (a config stored as text in a report): \"PSK\":\"...\".
    (re.compile(rf"(?i)(\\+\"[A-Za-z0-9_-]*{_SECRET_WORD}[A-Za-z0-9_-]*\\+\"\s*:\s*)(\\+\")(?:(?!\2).)*\2"),
     rf"\1\2{MARK}\2"),
    # Flags: --etcd-password=x, --etcd-password x, -token x.
    (re.compile(rf"(?i)(--?[a-z0-9-]*{_SECRET_WORD}[a-z0-9-]*(?:=|\s+))(?!-)\S+"), rf"\1{MARK}"),
    # Variables and ini/yaml/wg lines: FLANNELD_ETCD_PASSWORD=x, PrivateKey = x, token: x, psk "x".
    (re.compile(rf"(?im)^(\s*(?:export\s+)?[A-Za-z0-9_.-]*{_SECRET_WORD}[A-Za-z0-9_.-]*\s*[=:]\s*)(?!\s*$)[^\n]*"),
     rf"\1{MARK}"),
    (re.compile(rf"(?i)(\b[A-Z0-9_]*{_SECRET_WORD}[A-Z0-9_]*=)[^\s\"']+"), rf"\1{MARK}"),
    # JSON web tokens anywhere (service-account tokens in logs).
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+"), MARK),
)


def redact(text: str) -> str:
    """``text`` with every secret value replaced by ``<redacted>`` (names kept)."""
    text = redact_urls(text)
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return text
