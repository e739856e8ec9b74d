"""A small, strict fake Kubernetes API server for flannel's kube-mode tests (in-process or as a process).

In-process::

    async with FakeKubeApi(token="t") as api:
        api.create_node("node-1")
        client = KubeClient(KubeClientConfig(server=api.url, token="t"))

As a process (e.g. inside a network namespace)::

    python -m tests.kube_fake --listen 198.18.0.2:6443 --tls-dir DIR --token T   # prints "ready <url>"
"""

from tests.kube_fake.objects import make_node, make_pod
from tests.kube_fake.server import FakeKubeApi
from tests.kube_fake.tls import TlsDir, make_tls_dir

__all__ = ["FakeKubeApi", "TlsDir", "make_node", "make_pod", "make_tls_dir"]
