"""The ``flannel`` CNI meta-plugin: a drop-in replacement for upstream's ``flannel-io/cni-plugin`` (spec §13).

A container runtime starts the plugin once per pod and per verb, so its start-up time is paid on every pod
start. Python's own start-up is about 10 ms here; ``import json`` (through ``re``) adds 8 ms, ``dataclasses``
10 ms, ``typing`` 3.5 ms and ``ipaddress`` 3 ms more (measured, see docs/performance.md). That is why this
package imports none of them on the ADD/DEL path: :mod:`flannel.cni.lite` gives JSON and frozen records on top
of CPython's C accelerators, :mod:`flannel.cni.cidr` parses addresses with ``inet_pton``, and type-only
imports sit behind ``TYPE_CHECKING``. Nothing here imports the daemon's modules (etcd, gRPC, netlink).
"""
