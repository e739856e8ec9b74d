"""The cloud SDKs are optional extras, imported only by the backend that needs them: a vxlan node (and the CNI
plugin, and the daemon's start-up path) never loads one. Each check runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

SDK_MODULES = ("tencentcloud", "googleapiclient", "google", "httplib2", "aliyunsdkcore", "aliyunsdkvpc", "requests")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)


def test_a_vxlan_node_imports_no_cloud_sdk() -> None:
    code = f"""
import json, sys
from ipaddress import IPv4Address
from flannel.daemon import main
from flannel.backend.base import BackendContext, ExternalInterface
from flannel.backend.registry import create_backend
from flannel.config import parse_network_config
cfg = parse_network_config('{{"Network":"10.244.0.0/16","Backend":{{"Type":"vxlan"}}}}')
a = IPv4Address("198.18.0.11")
ext = ExternalInterface("eth0", 2, 1500, a, None, a, None)
create_backend(BackendContext(subnet_manager=None, ext_iface=ext), cfg)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {SDK_MODULES!r})))
"""
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_a_missing_sdk_names_the_extra_to_install() -> None:
    code = """
import sys
sys.modules["tencentcloud"] = None  # as if the extra were not installed
from ipaddress import IPv4Address
from flannel.backend.base import BackendContext, ExternalInterface
from flannel.backend.registry import create_backend
from flannel.config import parse_network_config
from flannel.errors import FlannelError
cfg = parse_network_config('{"Network":"10.244.0.0/16","Backend":{"Type":"tencent-vpc"}}')
a = IPv4Address("198.18.0.11")
try:
    create_backend(BackendContext(subnet_manager=None, ext_iface=ExternalInterface("eth0", 2, 1500, a, None, a, None)),
                   cfg)
except FlannelError as exc:
    print(exc)
"""
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert "needs the Python package tencentcloud-sdk-python-common" in r.stdout
    assert "pip install 'flannel[tencent]'" in r.stdout
