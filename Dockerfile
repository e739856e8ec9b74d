# syntax=docker/dockerfile:1
# The flanneld image for Kubernetes (deploy/kube-flannel.yml, deploy/helm/flannel): flanneld, the flannel
# CNI plugin and its installer (the DaemonSet's init containers), iptables (legacy and nft, chosen to match
# the node by deploy/image/iptables-wrapper), nftables and iproute2. Build it from the repository root:
#   docker build -t ghcr.io/flannel-py/flanneld:v0.1.0 .
# The tag is pyproject.toml's version; the registry is a placeholder for yours (docs/kubernetes.md).
# Python is Debian 12's own python3.11, for flanneld, its tools and the CNI plugin's runtime alike: the project
# is tested on it (the Makefile's venv), and it is what a systemd install on Debian runs. Linked statically and
# built with PGO and LTO, it holds 0.5 MiB less than the python:3.11 images' shared-libpython build and starts
# faster (docs/performance.md, "Running as deployed"). install-cni-plugin refuses a runtime whose byte code
# differs from its own Python's: here they are one interpreter.
ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev gcc libc6-dev binutils \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY pyproject.toml constraints.txt ./
COPY src ./src
# A virtualenv, so that the final stage copies exactly the package and its dependencies, at the versions
# of constraints.txt (the pip that understands --build-constraint first). The image carries every optional
# extra (grpc: the gRPC etcd client, FLANNEL_ETCD_CLIENT=grpc; ipsec: vici; aws, tencent, gce, ali: the cloud
# SDKs); only the configured backend (or client) ever imports its package.
RUN python3.11 -m venv /opt/flannel \
    && /opt/flannel/bin/pip install --no-cache-dir --disable-pip-version-check -c constraints.txt --upgrade pip \
    && /opt/flannel/bin/pip install --no-cache-dir --disable-pip-version-check -c constraints.txt \
        --build-constraint constraints.txt '.[grpc,ipsec,aws,tencent,gce,ali]'
# The CNI plugin for nodes without Python (docs/kubernetes.md): a static launcher, and a relocatable runtime
# tree holding what the plugin imports, made from /usr/bin/python3.11 (static, no PIE: nothing to relocate;
# it starts faster, which every pod start pays: docs/performance.md, "Session 6").
COPY deploy/image/cni_launcher.c deploy/image/cni_runtime.py ./deploy/image/
RUN mkdir -p /opt/flannel/libexec \
    && gcc -static -Os -Wall -Werror -o /opt/flannel/libexec/flannel-cni-launcher deploy/image/cni_launcher.c \
    && strip /opt/flannel/libexec/flannel-cni-launcher \
    && /usr/bin/python3.11 deploy/image/cni_runtime.py /opt/flannel/cni-runtime /build/src

FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.11 ca-certificates iproute2 iptables nftables \
        wireguard-go wireguard-tools \
    && rm -rf /var/lib/apt/lists/*
# The ipsec backend's IKE daemon: charon (started by flanneld), swanctl for debugging, and the standard plugins
# (openssl, gcm) that the default ESP proposal aes128gcm16-sha256-prfsha256-ecp256 needs; the extra plugins
# carry kernel-libipsec, for UserspaceESP (docs/backends.md).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        strongswan-charon strongswan-swanctl libstrongswan-standard-plugins libcharon-extra-plugins \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/flannel /opt/flannel
COPY deploy/image/flannel_install.py /opt/bin/flannel-install
COPY deploy/image/cni_runtime.py /opt/bin/cni_runtime.py
COPY deploy/image/iptables-wrapper /usr/sbin/iptables-wrapper
# /opt/bin holds what the manifests run: flanneld, install-cni-plugin and install-conf (upstream's paths),
# and mk-docker-opts.sh, the Docker host helper, where upstream's image has it (docs/docker.md).
# The wrapper becomes the preferred iptables/ip6tables alternative until its first call picks a backend.
RUN chmod 0755 /opt/bin/flannel-install /usr/sbin/iptables-wrapper \
    && ln -s /opt/flannel/bin/flanneld /opt/bin/flanneld \
    && ln -s /opt/flannel/bin/mk-docker-opts /opt/bin/mk-docker-opts.sh \
    && ln -s flannel-install /opt/bin/install-cni-plugin \
    && ln -s flannel-install /opt/bin/install-conf \
    && for family in iptables ip6tables; do \
        update-alternatives --install /usr/sbin/$family $family /usr/sbin/iptables-wrapper 100 \
            --slave /usr/sbin/$family-restore $family-restore /usr/sbin/iptables-wrapper \
            --slave /usr/sbin/$family-save $family-save /usr/sbin/iptables-wrapper; \
    done \
    && /opt/bin/flanneld --version \
    && /opt/bin/mk-docker-opts.sh -f /nonexistent -d /dev/null
# PYTHONOPTIMIZE=2: the loaded code carries no docstrings (nor asserts), 1 MiB less RSS for flanneld
# (docs/performance.md, "Running as deployed"). Its byte code is compiled here, for the standard library and the
# package, so that no start compiles it; a cloud SDK's is written on its first import. The CNI plugin's
# runtime on the node ignores PYTHON* variables (python -I) and install-cni-plugin compiles it at level 0.
RUN python3.11 -m compileall -q -o 2 -x '/(test|tests|idlelib|tkinter|lib2to3|ensurepip)/' /usr/lib/python3.11 \
    && python3.11 -m compileall -q -o 2 /opt/flannel/lib/python3.11/site-packages/flannel
# GLIBC_TUNABLES: flanneld's malloc settings (one arena; blocks from 64 KiB on mapped on their own, so freeing
# gives them back) from its first allocation, without loading ctypes to set them (0.4 MiB). The container's
# other processes (iptables, nft, charon) run with them too, which costs them nothing that matters.
ENV PATH=/opt/flannel/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONOPTIMIZE=2 \
    GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=65536
ENTRYPOINT ["/opt/bin/flanneld"]
