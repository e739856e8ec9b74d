# flannel in Python. Two entry points on a fresh Debian 12 machine, as root:
#   make demo   - install what is needed, then run a 3-host VXLAN demo in network namespaces
#   make test   - install what is needed, then run every test (unit, integration, end to end)
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
APT_PACKAGES := etcd-server etcd-client iproute2 iptables nftables iputils-ping procps \
                containernetworking-plugins iperf3 python3-venv python3-dev ca-certificates openssl

.PHONY: all deps venv demo demo-clean test lint unit integration e2e faults bench clean

all: test

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@# etcd-server's package starts a system etcd on 127.0.0.1:2379; our tests and demo run their own.
	@if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then systemctl stop etcd; fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	@# The CNI plugin starts once per pod: byte-compile so no call pays for compiling (editable install).
	$(VENV)/bin/python -m compileall -q src/flannel
	touch $@

venv: deps $(VENV)/.installed

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

# The fault suite alone (also part of `make test`), then its figures as the table of docs/reliability.md.
FAULT_FIGURES ?= fault-figures.jsonl
faults: venv
	rm -f $(FAULT_FIGURES)
	FLANNEL_FAULT_FIGURES=$(abspath $(FAULT_FIGURES)) $(VENV)/bin/pytest -q -ra tests/faults; status=$$?; \
	$(PY) tests/faults/report.py $(FAULT_FIGURES); exit $$status

test: venv lint
	$(VENV)/bin/pytest -q -ra tests

bench: venv
	$(PY) bench/bench_program_peers.py
	$(PY) bench/bench_daemon.py
	$(PY) bench/bench_cni.py
	$(PY) bench/bench_throughput.py
	$(PY) bench/bench_kube.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
