"""The console script's pre-scan for kube mode, which decides whether ``ssl`` may be imported at all."""

from __future__ import annotations

import pytest

from flannel.daemon.entry import _gateway_needs_ssl, _kube_mode


@pytest.mark.parametrize(("argv", "env", "kube"), [
    ([], {}, False),
    (["--kube-subnet-mgr"], {}, True),
    (["-kube-subnet-mgr"], {}, True),
    (["--kube-subnet-mgr=true"], {}, True),
    (["--kube-subnet-mgr=1"], {}, True),
    (["--kube-subnet-mgr=false"], {}, False),
    (["--kube-subnet-mgr", "--kube-subnet-mgr=false"], {}, False),
    ([], {"FLANNELD_KUBE_SUBNET_MGR": "true"}, True),
    ([], {"FLANNELD_KUBE_SUBNET_MGR": "false"}, False),
    (["--kube-subnet-mgr=false"], {"FLANNELD_KUBE_SUBNET_MGR": "true"}, False),
    (["--etcd-prefix=/kube-subnet-mgr"], {}, False),
    (["kube-subnet-mgr"], {}, False),
])
def test_kube_mode_is_read_as_the_flag_parser_will(argv: list[str], env: dict[str, str], kube: bool) -> None:
    assert _kube_mode(argv, env) is kube


def test_etcd_mode_keeps_ssl_out_and_kube_mode_loads_it_but_not_grpc() -> None:
    import subprocess
    import sys

    probe = ("import sys; from flannel.daemon import entry;"
             "entry._limit_memory(entry._kube_mode(sys.argv[1:], {}), {});"
             "import asyncio; from flannel.daemon import startup, main;"
             "print('ssl' in sys.modules and sys.modules['ssl'] is not None, 'grpc' in sys.modules)")
    etcd = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    kube = subprocess.run([sys.executable, "-c", probe, "--kube-subnet-mgr"], capture_output=True, text=True,
                          timeout=30, check=True)
    assert etcd.stdout.split() == ["False", "False"]
    assert kube.stdout.split() == ["True", "False"]


def test_etcd_mode_loads_no_openssl_through_the_back_door() -> None:
    """hashlib (through hmac, secrets, uuid...) loads OpenSSL's libcrypto too: about 4 MiB of RSS that etcd
    mode keeps out with ``ssl``."""
    import subprocess
    import sys

    probe = ("import sys; from flannel.daemon import entry; entry._limit_memory(False, {});"
             "from flannel.daemon import main, startup; from flannel.subnet import etcd_manager, etcd_store;"
             "from flannel.backend import vxlan, hostgw, udp; from flannel.traffic import keeper;"
             "print(sorted(m for m in ('_hashlib', 'hashlib', '_ssl') if sys.modules.get(m) is not None))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "[]"


def test_neither_mode_loads_shutil_tempfile_datetime_or_pyyaml_for_its_own_use() -> None:
    """``shutil`` (with ``bz2``, ``lzma``), ``tempfile``, ``datetime`` and PyYAML are 2.5 MiB resident together:
    flanneld needs none of them on its way to holding peers (issue #16); a YAML kubeconfig still loads PyYAML."""
    import subprocess
    import sys

    probe = ("import sys; from flannel.daemon import entry;"
             "entry._limit_memory(entry._kube_mode(sys.argv[1:], {}), {});"
             "from flannel.daemon import main, startup; from flannel.backend import vxlan, hostgw;"
             "from flannel.traffic import keeper, iptables, nftables; from flannel.subnet import kube_manager,"
             " kube_own_node; from flannel.kube import client, loading, kubeconfig;"
             "print(sorted(m for m in ('shutil', 'tempfile', 'bz2', 'lzma', 'yaml', 'datetime') if m in sys.modules))")
    for argv in ([], ["--kube-subnet-mgr"]):
        out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=30,
                             check=True)
        assert out.stdout.strip() == "[]", argv


def test_neither_mode_loads_random() -> None:
    """``random`` is 0.15 MiB resident; back-off jitter and subnet allocation draw from ``os.urandom``
    (``flannel.sysrand``; issue #16)."""
    import subprocess
    import sys

    probe = ("import sys; from flannel.daemon import entry; entry._limit_memory(True, {});"
             "from flannel.daemon import main, startup, health; from flannel.backend import vxlan;"
             "from flannel.traffic import keeper, iptables, nftables; from flannel.subnet import kube_manager,"
             " kube_own_node, etcd_manager, etcd_gateway, etcd_choice; from flannel.kube import client, loading,"
             " kubeconfig; print('random' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("argv", "env", "needs"), [
    (["--etcd-endpoints=https://e:2379"], {}, True),  # the gateway client is the default
    (["--etcd-endpoints=https://e:2379"], {"FLANNEL_ETCD_CLIENT": "grpc"}, False),  # gRPC has its own TLS
    (["--etcd-certfile=/c.pem"], {"FLANNEL_ETCD_CLIENT": "grpc"}, False),
    (["--etcd-endpoints=http://e:2379"], {}, False),
    (["--etcd-endpoints=https://e:2379"], {"FLANNEL_ETCD_CLIENT": "gateway"}, True),
    (["--etcd-endpoints", "http://a:2379,https://b:2379"], {"FLANNEL_ETCD_CLIENT": "gateway"}, True),
    (["--etcd-endpoints=http://e:2379"], {"FLANNEL_ETCD_CLIENT": "gateway"}, False),
    ([], {"FLANNEL_ETCD_CLIENT": "gateway", "FLANNELD_ETCD_ENDPOINTS": "https://e:2379"}, True),
    (["--etcd-certfile=/c.pem"], {"FLANNEL_ETCD_CLIENT": "gateway"}, True),
    ([], {"FLANNEL_ETCD_CLIENT": "gateway", "FLANNELD_ETCD_CERTFILE": "/c.pem"}, True),
    ([], {"FLANNEL_ETCD_CLIENT": "gateway"}, False),
])
def test_the_gateway_client_keeps_ssl_only_when_it_speaks_tls(argv: list[str], env: dict[str, str],
                                                             needs: bool) -> None:
    assert _gateway_needs_ssl(argv, env) is needs


def test_the_default_gateway_client_loads_neither_grpc_nor_ssl_over_http() -> None:
    import os
    import subprocess
    import sys

    probe = ("import sys; from flannel.daemon import entry; entry._limit_memory(False, {});"
             "import asyncio; from flannel.daemon import startup, main;"
             "from flannel.subnet.etcd_choice import etcd_client_class; etcd_client_class({});"
             "from flannel.subnet import etcd_manager;"
             "print(sorted(m for m in ('grpc', 'etcd3aio', '_ssl', '_hashlib') if sys.modules.get(m) is not None))")
    env = {k: v for k, v in os.environ.items() if k != "FLANNEL_ETCD_CLIENT"}  # the default client
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True,
                         env=env)
    assert out.stdout.strip() == "[]"


def test_the_client_is_chosen_by_the_environment_and_a_wrong_name_is_a_config_error() -> None:
    from flannel.errors import ConfigError
    from flannel.subnet.etcd_choice import etcd_client_class
    from flannel.subnet.etcd_gateway import EtcdGatewayStore
    from flannel.subnet.etcd_store import EtcdStore

    assert etcd_client_class({}) is EtcdGatewayStore
    assert etcd_client_class({"FLANNEL_ETCD_CLIENT": "gateway"}) is EtcdGatewayStore
    assert etcd_client_class({"FLANNEL_ETCD_CLIENT": "grpc"}) is EtcdStore
    with pytest.raises(ConfigError, match="FLANNEL_ETCD_CLIENT='http'"):
        etcd_client_class({"FLANNEL_ETCD_CLIENT": "http"})


def test_grpc_without_its_packages_is_a_config_error_naming_the_extra() -> None:
    import subprocess
    import sys

    probe = ("import sys; sys.modules['etcd3aio'] = None; from flannel.errors import ConfigError;"
             "from flannel.subnet.etcd_choice import etcd_client_class\n"
             "try: etcd_client_class({'FLANNEL_ETCD_CLIENT': 'grpc'})\n"
             "except ConfigError as exc: print(exc)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    assert "flannel[grpc]" in out.stdout


@pytest.mark.parametrize(("tunables", "in_effect"), [
    ("glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=65536", True),
    ("glibc.malloc.mmap_threshold=65536:glibc.malloc.tcache_count=0:glibc.malloc.arena_max=1", True),
    ("glibc.malloc.arena_max=1", False),
    ("glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=65536", False),
    ("glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=65536:glibc.malloc.arena_max=4", False),  # last wins
    ("", False),
])
def test_the_malloc_settings_are_recognised_in_glibc_tunables(tunables: str, in_effect: bool) -> None:
    from flannel.daemon.entry import _tunables_set

    assert _tunables_set({"GLIBC_TUNABLES": tunables} if tunables else {}) is in_effect


def test_as_deployed_the_malloc_settings_come_from_the_environment_and_ctypes_stays_out() -> None:
    """``ctypes`` is 0.4 MiB resident, loaded only to call ``mallopt``; the image and the systemd unit set the same
    settings as glibc tunables (``tests.deployed``), so flanneld as deployed loads it for nothing else."""
    import os
    import subprocess
    import sys

    from flannel.daemon.entry import _tunables_set
    from tests.deployed import DEPLOYED_ENV

    assert _tunables_set(DEPLOYED_ENV)
    probe = ("import os, sys; from flannel.daemon import entry; entry._limit_memory(True, os.environ);"
             "from flannel.daemon import main, startup, health; from flannel.backend import vxlan, hostgw;"
             "from flannel.netlink import Netlink; Netlink().close();"
             "from flannel.traffic import keeper, iptables, nftables; from flannel.subnet import kube_manager,"
             " kube_own_node, etcd_manager, etcd_gateway; from flannel.kube import client, loading, kubeconfig;"
             "print('ctypes' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    for extra, loaded in (({}, "True"), (DEPLOYED_ENV, "False")):
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True,
                             env={**env, **extra})
        assert out.stdout.strip() == loaded, extra
