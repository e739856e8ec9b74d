"""``flannelctl bundle FILE.tar.gz``: everything a bug report needs from one node, with secrets taken out.

A maintainer's first questions are always the same: which version and config, what do the leases say, what
does the kernel hold (links, routes, neighbours, FDB, iptables/nftables, sysctls), what did flanneld log, and
what does ``doctor`` think. The bundle answers all of them in one file. Each part is collected on its own (a
tool that is missing or fails is listed in ``manifest.json`` with its exit status, never fatal), and every byte
written passes through ``redact.redact`` first: no etcd password, TLS key, PSK, wireguard private key or bearer
token leaves the node.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flannel import UPSTREAM_VERSION
from flannel.ctl.redact import redact

COMMAND_TIMEOUT = 20.0
MAX_PART = 8 << 20
"""Bytes kept of one part (the tail of a log, the head of a dump)."""

KERNEL: Sequence[tuple[str, list[str]]] = (
    ("kernel/ip-link.txt", ["ip", "-d", "-s", "link", "show"]),
    ("kernel/ip-addr.txt", ["ip", "-d", "addr", "show"]),
    ("kernel/ip-route.txt", ["ip", "-d", "route", "show", "table", "all"]),
    ("kernel/ip-6-route.txt", ["ip", "-6", "-d", "route", "show", "table", "all"]),
    ("kernel/ip-rule.txt", ["ip", "rule", "show"]),
    ("kernel/ip-neigh.txt", ["ip", "-d", "neigh", "show"]),
    ("kernel/bridge-fdb.txt", ["bridge", "fdb", "show"]),
    ("kernel/iptables-save.txt", ["iptables-save"]),
    ("kernel/ip6tables-save.txt", ["ip6tables-save"]),
    ("kernel/iptables-legacy-save.txt", ["iptables-legacy-save"]),
    ("kernel/iptables-nft-save.txt", ["iptables-nft-save"]),
    ("kernel/nft-ruleset.txt", ["nft", "list", "ruleset"]),
    ("kernel/sysctl-net.txt", ["sysctl", "-a", "--pattern", r"^net\.(ipv4|ipv6|bridge|core)\."]),
    ("kernel/wg-show.txt", ["wg", "show", "all"]),
    ("kernel/uname.txt", ["uname", "-a"]),
)
"""Kernel state, one tool each. ``wg show`` prints no private key (it says ``(hidden)``); redaction is the net."""

REPORTS: Sequence[tuple[str, list[str]]] = (
    ("flannelctl/status.json", ["status"]),
    ("flannelctl/leases.json", ["leases"]),
    ("flannelctl/config.json", ["config", "get"]),
    ("flannelctl/doctor.json", ["doctor"]),
)

RunReport = Callable[[list[str]], tuple[int, str]]
"""Runs one flannelctl command with ``-o json`` and the bundle's flags; its exit code and stdout."""


def _tool(argv: list[str]) -> tuple[int | None, str]:
    try:
        r = subprocess.run(argv, capture_output=True, timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        return None, f"{argv[0]}: not installed\n"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{argv[0]}: {exc}\n"
    out = r.stdout[:MAX_PART].decode("utf-8", "replace")
    err = r.stderr[:4096].decode("utf-8", "replace")
    return r.returncode, out + (f"\n--- stderr ---\n{err}" if err else "")


def _tail(path: str) -> tuple[int | None, str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - MAX_PART))
            return 0, f.read().decode("utf-8", "replace")
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}\n"


def environment(environ: Mapping[str, str]) -> str:
    """flanneld's variables (``FLANNELD_*``, ``NODE_NAME``, ``POD_*``, ``KUBERNETES_*``), sorted."""
    keep = ("FLANNELD_", "FLANNEL_", "NODE_NAME", "POD_", "KUBERNETES_", "ETCDCTL_", "EVENT_QUEUE_DEPTH")
    return "".join(f"{k}={v}\n" for k, v in sorted(environ.items()) if k.startswith(keep))


def build(path: str, run_report: RunReport, environ: Mapping[str, str], subnet_file: str,
          log_files: Sequence[str], cni_dir: str) -> dict[str, Any]:
    """Write the bundle to ``path``; its manifest (also stored in it as ``manifest.json``)."""
    parts: list[tuple[str, int | None, str]] = []
    for name, words in REPORTS:
        parts.append((name, *run_report(words)))
    for name, argv in KERNEL:
        parts.append((name, *_tool(argv)))
    parts.append(("logs/journal-flanneld.txt",
                  *_tool(["journalctl", "-u", "flanneld", "--no-pager", "-o", "short-iso", "-n", "20000"])))
    for i, log in enumerate(log_files):
        parts.append((f"logs/log-file-{i}-{os.path.basename(log)}", *_tail(log)))
    parts.append(("config/subnet.env", *_tail(subnet_file)))
    parts.append(("config/environment.txt", 0, environment(environ)))
    try:
        for entry in sorted(os.listdir(cni_dir)):
            parts.append((f"config/cni/{entry}", *_tail(os.path.join(cni_dir, entry))))
    except OSError as exc:
        parts.append(("config/cni", None, f"cannot list {cni_dir}: {exc.strerror or exc}\n"))
    manifest = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "node": platform.node(),
                "flannel_version": UPSTREAM_VERSION, "redacted": True,
                "parts": [{"name": n, "exit_code": c, "bytes": len(t.encode())} for n, c, t in parts]}
    root = f"flannel-bundle-{platform.node() or 'node'}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others, even briefly
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, _, text in [*parts, ("manifest.json", 0, json.dumps(manifest, indent=2) + "\n")]:
            data = redact(text).encode()
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))
    return manifest
