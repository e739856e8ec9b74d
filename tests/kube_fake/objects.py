"""Realistic Kubernetes objects and ``Status`` bodies for the fake API server.

Nodes look like a kubeadm node's (labels, kubelet annotations, conditions, addresses, nodeInfo, a handful
of images), about 4 KB of JSON each, so that memory and bandwidth measured against the fake are honest:
a real cluster's node objects are that size and the image list is what makes them so.
"""

from __future__ import annotations

import datetime
import http
import ipaddress
from typing import Any

JsonObject = dict[str, Any]

_IMAGES = [
    (["registry.k8s.io/etcd@sha256:44a8e24dcbba3470ee1fee21d5e88d128c936e9b55d4bc51fbef8086f8ed123b",
      "registry.k8s.io/etcd:3.5.12-0"], 57236178),
    (["docker.io/flannel/flannel@sha256:c951947891d7811a4da6bf6f2f4dcd09e33c6e1eb6a95022f3f621d00ed4615e",
      "docker.io/flannel/flannel:v0.28.9"], 32996046),
    (["registry.k8s.io/kube-proxy@sha256:8a1c7c5e5e9d4e5c79e8c62a86e7b4fc7d1b2a5e2c0c68fd91b9a4ea3a0d1e55",
      "registry.k8s.io/kube-proxy:v1.30.2"], 29035454),
    (["registry.k8s.io/coredns/coredns@sha256:1eeb4c7316bacb1d4c8ead65571cd92dd21e27359f0d4917f1a5822a73b75db1",
      "registry.k8s.io/coredns/coredns:v1.11.1"], 18182961),
    (["docker.io/flannel/flannel-cni-plugin@sha256:f1812994f0edbcb5bb5ccb63be2147ba6ad10e1faaa7ca9fcdad4f441739d84",
      "docker.io/flannel/flannel-cni-plugin:v1.7.1-flannel1"], 4878976),
    (["registry.k8s.io/pause@sha256:7031c1b283388d2c2e09b57badb803c05ebed362dc88d84b480cc47f72a21097",
      "registry.k8s.io/pause:3.9"], 321520),
]


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_node(name: str, index: int = 0, pod_cidr: str | None = None, internal_ip: str | None = None,
              annotations: dict[str, str] | None = None) -> JsonObject:
    """A node as kubeadm + kubelet leave it. ``pod_cidr`` defaults to ``10.244.<index>.0/24`` (``None`` keeps
    that default; pass ``""`` for a node whose CIDR is not allocated yet)."""
    if pod_cidr is None:
        pod_cidr = f"10.{244 + index // 256}.{index % 256}.0/24"
    ip = internal_ip or str(ipaddress.IPv4Address("172.18.0.2") + index)
    stamp = now_rfc3339()
    node: JsonObject = {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "m5.large",
                "topology.kubernetes.io/region": "eu-west-1",
                "topology.kubernetes.io/zone": f"eu-west-1{'abc'[index % 3]}",
            },
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                **(annotations or {}),
            },
        },
        "spec": {"providerID": f"aws:///eu-west-1a/i-{index:017x}"},
        "status": {
            "capacity": {"cpu": "2", "ephemeral-storage": "102350Mi", "hugepages-2Mi": "0",
                         "memory": "8012544Ki", "pods": "110"},
            "allocatable": {"cpu": "2", "ephemeral-storage": "94324332Ki", "hugepages-2Mi": "0",
                            "memory": "7910144Ki", "pods": "110"},
            "conditions": [_condition(t, "False", f"Kubelet{r}", m, stamp) for t, r, m in (
                ("MemoryPressure", "HasSufficientMemory", "kubelet has sufficient memory available"),
                ("DiskPressure", "HasNoDiskPressure", "kubelet has no disk pressure"),
                ("PIDPressure", "HasSufficientPID", "kubelet has sufficient PID available"),
            )] + [_condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", stamp)],
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": f"{index:032x}", "systemUUID": f"ec2{index:05x}-8b4e-11ee-b9d1-0242ac120002",
                "bootID": f"{index:08x}-6f1d-4a4b-9e3c-5d6f7a8b9c0d", "kernelVersion": "6.1.0-21-cloud-amd64",
                "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "containerd://1.7.13",
                "kubeletVersion": "v1.30.2", "kubeProxyVersion": "v1.30.2", "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "images": [{"names": names, "sizeBytes": size} for names, size in _IMAGES],
        },
    }
    if pod_cidr:
        node["spec"]["podCIDR"] = pod_cidr
        node["spec"]["podCIDRs"] = [pod_cidr]
    return node


def _condition(kind: str, status: str, reason: str, message: str, stamp: str) -> JsonObject:
    return {"type": kind, "status": status, "lastHeartbeatTime": stamp, "lastTransitionTime": stamp,
            "reason": reason, "message": message}


def make_pod(namespace: str, name: str, node_name: str) -> JsonObject:
    """A flannel DaemonSet pod scheduled on ``node_name``."""
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "flannel", "tier": "node"}},
        "spec": {
            "nodeName": node_name,
            "hostNetwork": True,
            "serviceAccountName": "flannel",
            "containers": [{"name": "kube-flannel", "image": "docker.io/flannel/flannel:v0.28.9",
                            "command": ["/opt/bin/flanneld"], "args": ["--ip-masq", "--kube-subnet-mgr"]}],
        },
        "status": {"phase": "Running"},
    }


def status(code: int, reason: str, message: str, details: JsonObject | None = None) -> JsonObject:
    """A failure ``Status`` exactly as kube-apiserver shapes it."""
    body: JsonObject = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": message, "reason": reason, "code": code}
    if details is not None:
        body["details"] = details
    return body


def success(name: str, kind: str) -> JsonObject:
    """The ``Status`` a DELETE answers."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "kind": kind}}


class ApiError(Exception):
    """An error answer: the handler raises it, the server writes ``body`` with ``code``."""

    def __init__(self, code: int, reason: str, message: str, details: JsonObject | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.body = status(code, reason, message, details)


def not_found(kind: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{kind} "{name}" not found', {"name": name, "kind": kind})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def reason_phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"
