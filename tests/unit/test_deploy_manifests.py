"""deploy/: the Kubernetes manifest and the systemd example, checked offline (the chart: test_deploy_chart.py).

Every Kubernetes object in deploy/ is validated against the Kubernetes 1.30 OpenAPI schemas bundled with the
``kubernetes-validate`` package, in strict mode (an unknown or misspelt field fails). The schemas cannot say
whether the content is right, so the tests also pin what flannel needs: the RBAC rules of spec §7.7, the
probes on the health port, the downward-API env, the host mounts, and configs that our own parsers accept.
"""

from __future__ import annotations

import configparser
import json
import posixpath
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from flannel.config import parse_network_config
from flannel.daemon.flag_table import BY_NAME
from flannel.daemon.flags import Options, parse_args

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MANIFEST = DEPLOY / "kube-flannel.yml"
CONFLIST = DEPLOY / "cni" / "10-flannel.conflist"
KUBE_VERSION = "1.30.0"
NAMESPACE = "kube-flannel"
VERSION: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"ghcr.io/flannel-py/flanneld:v{VERSION}"

Doc = dict[str, Any]

MINIMAL_RULES = {
    ("", "pods", "get"),
    ("", "nodes", "get"),
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
    ("", "nodes/status", "patch"),
}
"""Spec §7.7: all that flanneld in kube mode asks the API server for."""


def yaml_files() -> list[Path]:
    """Every YAML file under deploy/, except Helm templates (Go templates, not YAML until rendered)."""
    files = [p for p in sorted(DEPLOY.rglob("*")) if p.suffix in (".yaml", ".yml") and p.is_file()]
    return [p for p in files if "templates" not in p.relative_to(DEPLOY).parts]


def load_docs(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def kube_docs(docs: list[Doc]) -> list[Doc]:
    return [doc for doc in docs if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc]


def by_kind(docs: list[Doc]) -> dict[str, Doc]:
    found: dict[str, Doc] = {}
    for doc in kube_docs(docs):
        assert doc["kind"] not in found, f"two {doc['kind']} objects"
        found[doc["kind"]] = doc
    return found


@cache
def _manifest_text() -> str:
    return MANIFEST.read_text()


def manifest() -> dict[str, Doc]:
    return by_kind(load_docs(_manifest_text()))


def assert_valid(doc: Doc) -> None:
    """Strict schema validation; the message names the object and the path of the first error."""
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{name} does not validate against Kubernetes {KUBE_VERSION}: {path}: {exc.message}")


def rule_set(role: Doc) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def pod_spec(docs: dict[str, Doc]) -> Doc:
    spec: Doc = docs["DaemonSet"]["spec"]["template"]["spec"]
    return spec


def container(spec: Doc, name: str, init: bool = False) -> Doc:
    for c in spec["initContainers" if init else "containers"]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no {'init ' if init else ''}container {name}")


def flanneld_argv(c: Doc) -> list[str]:
    """The flags flanneld gets, wherever they are written (the manifest uses args, the chart command)."""
    argv = [*c.get("command", []), *c.get("args", [])]
    assert argv[0] == "/opt/bin/flanneld"
    return [str(a) for a in argv[1:]]


def flanneld_options(c: Doc) -> Options:
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    return parse_args(flanneld_argv(c), env)


def mounts(c: Doc) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}


def volumes(spec: Doc) -> dict[str, Doc]:
    return {v["name"]: v for v in spec["volumes"]}


# --- every YAML file -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_file_parses(path: Path) -> None:
    assert load_docs(path.read_text()), f"{path} holds no YAML document"


def _all_kube_docs() -> Iterator[tuple[str, Doc]]:
    for path in yaml_files():
        for i, doc in enumerate(kube_docs(load_docs(path.read_text()))):
            yield f"{path.relative_to(DEPLOY)}#{i}-{doc['kind']}", doc


@pytest.mark.parametrize(("where", "doc"), list(_all_kube_docs()), ids=lambda v: v if isinstance(v, str) else "")
def test_kubernetes_object_validates_against_the_schemas(where: str, doc: Doc) -> None:
    assert_valid(doc)


def test_the_validator_rejects_a_misspelt_field() -> None:
    """Strict mode is what catches typos: a check of the check."""
    ds = manifest()["DaemonSet"]
    broken = json.loads(json.dumps(ds))
    broken["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="hostNetwrk"):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


# --- kube-flannel.yml ----------------------------------------------------------------------------------


def test_manifest_holds_upstreams_objects() -> None:
    docs = load_docs(_manifest_text())
    names = [(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in kube_docs(docs)]
    assert sorted(names, key=str) == sorted(
        [
            ("Namespace", NAMESPACE, None),
            ("ClusterRole", "flannel", None),
            ("ClusterRoleBinding", "flannel", None),
            ("ServiceAccount", "flannel", NAMESPACE),
            ("ConfigMap", "kube-flannel-cfg", NAMESPACE),
            ("DaemonSet", "kube-flannel-ds", NAMESPACE),
        ],
        key=str,
    )
    ns = manifest()["Namespace"]["metadata"]["labels"]
    assert ns["pod-security.kubernetes.io/enforce"] == "privileged"  # hostNetwork and hostPath pods


def test_cluster_role_grants_exactly_the_minimal_rules() -> None:
    docs = manifest()
    assert rule_set(docs["ClusterRole"]) == MINIMAL_RULES
    for rule in docs["ClusterRole"]["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames or nonResourceURLs"
    binding = docs["ClusterRoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "flannel", "namespace": NAMESPACE}]
    assert pod_spec(docs)["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]


def test_daemonset_runs_on_every_linux_node_with_host_networking() -> None:
    docs = manifest()
    ds = docs["DaemonSet"]
    spec = pod_spec(docs)
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]
    selector = ds["spec"]["selector"]["matchLabels"]
    assert selector.items() <= ds["spec"]["template"]["metadata"]["labels"].items()


def test_flanneld_runs_in_kube_mode_with_the_health_server() -> None:
    c = container(pod_spec(manifest()), "kube-flannel")
    assert c["image"] == IMAGE
    opts = flanneld_options(c)  # our own flag parser: an unknown flag would raise
    assert opts.kube_subnet_mgr
    assert opts.ip_masq
    assert opts.healthz_port == 8081
    assert opts.healthz_ip == "0.0.0.0"  # with hostNetwork the kubelet probes the node's address
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "50Mi"}}
    assert c["securityContext"] == {"privileged": False, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}}


def test_probes_hit_healthz_and_readyz_on_the_health_port() -> None:
    c = container(pod_spec(manifest()), "kube-flannel")
    ports = {p["name"]: p for p in c["ports"]}
    port = flanneld_options(c).healthz_port
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path
        target = get["port"]
        number = ports[target]["containerPort"] if isinstance(target, str) else target
        assert number == port, f"{probe} targets {target}, flanneld listens on {port}"
    assert ports["healthz"]["protocol"] == "TCP"
    assert (c["livenessProbe"]["initialDelaySeconds"], c["livenessProbe"]["periodSeconds"]) == (10, 30)
    assert (c["readinessProbe"]["initialDelaySeconds"], c["readinessProbe"]["periodSeconds"]) == (5, 10)


def test_pod_name_and_namespace_come_from_the_downward_api() -> None:
    env = {e["name"]: e for e in container(pod_spec(manifest()), "kube-flannel")["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["EVENT_QUEUE_DEPTH"]["value"] == "5000"
    assert env["CONT_WHEN_CACHE_NOT_READY"]["value"] == "false"


def test_host_mounts_match_flanneld_and_cni_plugin_paths() -> None:
    docs = manifest()
    spec = pod_spec(docs)
    vols = volumes(spec)
    assert vols["run"]["hostPath"] == {"path": "/run/flannel"}
    assert vols["cni-plugin"]["hostPath"] == {"path": "/opt/cni/bin"}
    assert vols["cni"]["hostPath"] == {"path": "/etc/cni/net.d"}
    assert vols["xtables-lock"]["hostPath"] == {"path": "/run/xtables.lock", "type": "FileOrCreate"}
    assert vols["flannel-cfg"]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    for c in [*spec["initContainers"], *spec["containers"]]:
        assert set(mounts(c)) <= set(vols), f"{c['name']} mounts an undefined volume"

    c = container(spec, "kube-flannel")
    opts = flanneld_options(c)
    m = mounts(c)
    # flanneld writes subnet.env where the host's CNI plugin reads it (its default subnetFile).
    assert posixpath.dirname(opts.subnet_file) == m["run"] == vols["run"]["hostPath"]["path"]
    assert posixpath.join(m["flannel-cfg"], "net-conf.json") == posixpath.normpath(opts.net_config_path)
    assert m["xtables-lock"] == "/run/xtables.lock"


def test_init_containers_install_the_cni_plugin_and_the_conflist() -> None:
    docs = manifest()
    spec = pod_spec(docs)
    assert [c["name"] for c in spec["initContainers"]] == ["install-cni-plugin", "install-cni"]

    plugin = container(spec, "install-cni-plugin", init=True)
    assert plugin["image"] == IMAGE
    assert [*plugin["command"], *plugin["args"]] == ["/opt/bin/install-cni-plugin", "/opt/cni/bin"]
    assert mounts(plugin) == {"cni-plugin": "/opt/cni/bin"}

    conf = container(spec, "install-cni", init=True)
    assert conf["image"] == IMAGE
    m = mounts(conf)
    source = posixpath.join(m["flannel-cfg"], "cni-conf.json")
    assert [*conf["command"], *conf["args"]] == ["/opt/bin/install-conf", source, "/etc/cni/net.d/10-flannel.conflist"]
    assert m["cni"] == "/etc/cni/net.d"
    assert "cni-conf.json" in docs["ConfigMap"]["data"]


def test_configmap_cni_conf_is_the_shipped_conflist() -> None:
    cni = json.loads(manifest()["ConfigMap"]["data"]["cni-conf.json"])
    assert cni == json.loads(CONFLIST.read_text())
    assert [p["type"] for p in cni["plugins"]] == ["flannel", "portmap"]


def test_configmap_net_conf_parses_with_flannels_parser() -> None:
    cfg = parse_network_config(manifest()["ConfigMap"]["data"]["net-conf.json"])
    assert str(cfg.network) == "10.244.0.0/16"
    assert cfg.backend_type == "vxlan"
    assert cfg.enable_ipv4 and not cfg.enable_ipv6 and not cfg.enable_nftables


def test_images_carry_the_package_version() -> None:
    spec = pod_spec(manifest())
    images = {c["image"] for c in [*spec["initContainers"], *spec["containers"]]}
    assert images == {IMAGE}
    assert f"ghcr.io/flannel-py/flanneld:v{VERSION}" in (REPO / "Dockerfile").read_text()


# --- systemd, outside Kubernetes -----------------------------------------------------------------------


def test_systemd_unit_runs_flanneld_as_a_notify_service() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd" / "flanneld.service").read_text())
    service = unit["Service"]
    assert service["Type"] == "notify"  # flanneld sends READY=1 (spec §2 step 17)
    assert service["ExecStart"].split()[0].endswith("/flanneld")
    assert service["EnvironmentFile"].lstrip("-") == "/etc/default/flanneld"
    assert service["Restart"] == "always"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_environment_file_sets_only_real_flags() -> None:
    env: dict[str, str] = {}
    for line in (DEPLOY / "systemd" / "flanneld.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    known = {spec.env_var for spec in BY_NAME.values()}
    assert set(env) <= known, f"not flanneld variables: {set(env) - known}"
    opts = parse_args([], env)
    assert not opts.kube_subnet_mgr
    assert opts.etcd_endpoints.startswith("https://")
    assert opts.etcd_certfile and opts.etcd_keyfile  # TLS is used only when both are set (spec §6.9)
