"""A vxlan node never loads a cloud SDK: the registry imports boto3 only for aws-vpc.

Checked in a fresh interpreter (a subprocess), because this test process may have imported boto3 already.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BUILD = textwrap.dedent("""
    import json, sys
    from ipaddress import IPv4Address
    from flannel.backend.base import BackendContext, ExternalInterface
    from flannel.backend.registry import create_backend
    from flannel.config import parse_network_config
    sys.modules.setdefault("ssl", None)  # as daemon/entry.py does in etcd mode
    ext = ExternalInterface("eth0", 2, 1500, IPv4Address("198.18.0.11"), None, IPv4Address("198.18.0.11"), None)
    config = parse_network_config(json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": sys.argv[1]}}))
    create_backend(BackendContext(subnet_manager=None, ext_iface=ext), config)
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore", "ssl")
                            and sys.modules[m] is not None)))
""")


def loaded(backend: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", BUILD, backend], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    return list(__import__("json").loads(out))


def test_a_vxlan_backend_built_through_the_registry_loads_no_cloud_sdk() -> None:
    assert loaded("vxlan") == []


def test_an_aws_vpc_backend_loads_boto3_and_lifts_the_ssl_block_for_https() -> None:
    pytest.importorskip("boto3", reason="the aws extra is not installed (pip install 'flannel[aws]')")
    mods = loaded("aws-vpc")
    assert "boto3" in mods and "botocore" in mods and "ssl" in mods


def test_without_boto3_the_registry_names_the_extra_to_install() -> None:
    script = textwrap.dedent("""
        import json, sys
        sys.modules["boto3"] = None  # as if the aws extra were not installed
        from ipaddress import IPv4Address
        from flannel.backend.base import BackendContext, ExternalInterface
        from flannel.backend.registry import create_backend
        from flannel.config import parse_network_config
        ext = ExternalInterface("eth0", 2, 1500, IPv4Address("198.18.0.11"), None, IPv4Address("198.18.0.11"), None)
        config = parse_network_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "aws-vpc"}}')
        try:
            create_backend(BackendContext(subnet_manager=None, ext_iface=ext), config)
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    assert out.startswith("FlannelError backend 'aws-vpc' needs the Python package boto3"), out
    assert "pip install 'flannel[aws]'" in out, out
