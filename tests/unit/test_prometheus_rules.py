"""deploy/prometheus and deploy/grafana, checked offline: the alert rules with ``promtool`` (Debian's
``prometheus`` package), the dashboard against flanneld's own metric registry. The dashboard's queries run
against a real Prometheus scraping a real flanneld in tests/e2e/test_network_map.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from flannel import metrics

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "flannel-rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "flannel-rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "flannel-dashboard.json"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
_NAME = re.compile(r"\b(flannel_[a-z0-9_]+)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool is missing: make deps installs Debian's prometheus package")
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


def registered(name: str) -> bool:
    """Whether flanneld exports ``name`` (a histogram's ``_bucket``/``_sum``/``_count`` series included)."""
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return metrics.REGISTRY.get(name) is not None or metrics.REGISTRY.get(base) is not None


def dashboard_exprs(doc: dict[str, Any] | None = None) -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    doc = json.loads(DASHBOARD.read_text()) if doc is None else doc
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", []) if t.get("expr")]


def test_the_rules_are_valid() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_rules_fire_on_each_fault_and_stay_quiet_otherwise() -> None:
    r = promtool("test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_a_test() -> None:
    alerts = set(re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.M))
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert alerts and alerts == tested


def test_the_rules_use_only_metrics_flanneld_exports() -> None:
    names = set(_NAME.findall(RULES.read_text()))
    assert names and [n for n in names if not registered(n)] == []


def test_the_dashboard_queries_only_metrics_flanneld_exports() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    names = {n for e in exprs for n in _NAME.findall(e)}
    assert [n for n in sorted(names) if not registered(n)] == []


def test_the_dashboard_is_importable_grafana_json() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in doc["panels"])
    assert {v["name"] for v in doc["templating"]["list"]} == {"DS_PROMETHEUS", "instance"}
    for p in doc["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
