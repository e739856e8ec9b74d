"""The flanneld executable's exit statuses and messages for things that must fail before any I/O."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flannel.backend.base import BackendContext
from flannel.backend.registry import create_backend
from flannel.config import NetworkConfig
from flannel.errors import ConfigError

FLANNELD = str(Path(sys.executable).parent / "flanneld")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLANNELD, *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin"})


def test_version_goes_to_stderr_and_exits_zero() -> None:
    r = run("--version")
    assert r.returncode == 0 and r.stdout == ""
    assert r.stderr.startswith("v0.28.9")


def test_unknown_flag_exits_2_with_usage() -> None:
    r = run("--no-such-flag")
    assert r.returncode == 2
    assert "flag provided but not defined: -no-such-flag" in r.stderr
    assert "-etcd-endpoints" in r.stderr


def test_help_exits_zero() -> None:
    r = run("-h")
    assert r.returncode == 0 and "-etcd-prefix" in r.stdout


def test_kube_mode_with_an_invalid_annotation_prefix_exits_1_with_upstreams_text() -> None:
    r = run("--kube-subnet-mgr", "--kube-annotation-prefix=org")
    assert r.returncode == 1
    assert "subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*" in r.stderr


def test_renew_margin_out_of_range_exits_1() -> None:
    r = run("--subnet-lease-renew-margin=1440")
    assert r.returncode == 1
    assert "Invalid subnet-lease-renew-margin option, out of acceptable range" in r.stderr


def test_kube_mode_from_the_env_outside_a_cluster_says_what_is_missing() -> None:
    r = subprocess.run([FLANNELD], capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin", "FLANNELD_KUBE_SUBNET_MGR": "true"})
    assert r.returncode == 1
    assert "unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT" in r.stderr


def test_unknown_backend_type_uses_upstream_text() -> None:
    with pytest.raises(ConfigError, match=r"^unknown backend type: bogus$"):
        create_backend(BackendContext(None, None), NetworkConfig(backend_type="bogus"))  # type: ignore[arg-type]


def test_backend_type_lookup_is_case_insensitive() -> None:
    backend = create_backend(BackendContext(None, None), NetworkConfig(backend_type="WireGuard"))  # type: ignore[arg-type]
    assert type(backend).__name__ == "WireGuardBackend"
