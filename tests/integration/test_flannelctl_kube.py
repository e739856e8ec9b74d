"""``flannelctl leases --kube-subnet-mgr`` against the strict fake API server: nodes read as leases by flanneld's
own rule, with the etcd mode's conflict checks, an unannotated node as a warning and garbage as an error.

The fake is served by the test's event loop, so flannelctl's ``main`` (which runs its own loop) runs in a thread.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

from flannel.ctl.cli import main
from flannel.subnet.kube_annotations import annotation_names
from tests.kube_fake.fixtures import fake_api_fixture  # noqa: F401
from tests.kube_fake.server import FakeKubeApi

NAMES = annotation_names()


def annotations(ip: str, mac: str, data: str | None = None) -> dict[str, str]:
    return {NAMES.public_ip: ip, NAMES.backend_type: "vxlan", NAMES.kube_subnet_manager: "true",
            NAMES.backend_data: data if data is not None else json.dumps({"VNI": 1, "VtepMAC": mac})}


async def leases(api: FakeKubeApi, conf: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    argv = ["leases", "--kube-subnet-mgr", f"--kube-api-url={api.url}", f"--net-config-path={conf}", "-o", "json",
            "--timeout=5", *extra]
    code = await asyncio.to_thread(main, argv, {}, out, err)
    return code, json.loads(out.getvalue()) if out.getvalue() else {}, err.getvalue()


async def test_nodes_are_leases_and_conflicts_are_flagged(fake_api: FakeKubeApi, tmp_path: Path) -> None:
    conf = tmp_path / "net-conf.json"
    conf.write_text('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
    fake_api.create_node("a", pod_cidr="10.244.1.0/24", annotations=annotations("172.18.0.2", "0a:00:00:00:00:01"))
    fake_api.create_node("b", pod_cidr="10.244.2.0/24", annotations=annotations("172.18.0.3", "0a:00:00:00:00:02"))
    code, doc, _ = await leases(fake_api, conf)
    assert code == 0 and [(x["key"], x["subnet"], x["public_ip"], x["reserved"]) for x in doc["leases"]] == [
        ("a", "10.244.1.0/24", "172.18.0.2", False), ("b", "10.244.2.0/24", "172.18.0.3", False)]
    fake_api.create_node("c", pod_cidr="10.244.2.0/24", annotations=annotations("172.18.0.4", "0a:00:00:00:00:04"))
    fake_api.create_node("d", pod_cidr="10.244.4.0/24", annotations=annotations("172.18.0.5", "", data="{bad"))
    fake_api.create_node("e", pod_cidr="10.244.5.0/24")
    code, doc, err = await leases(fake_api, conf)
    found = {(f["subject"], f["code"], f["severity"]) for f in doc["findings"]}
    assert code == 1 and "Traceback" not in err
    assert found == {("node/c", "overlaps_lease", "error"), ("node/d", "undecodable", "error"),
                     ("node/e", "not_annotated", "warning")}


async def test_an_unreachable_api_server_is_named_and_exits_1(tmp_path: Path) -> None:
    conf = tmp_path / "net-conf.json"
    conf.write_text('{"Network":"10.244.0.0/16"}')
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(main, ["leases", "--kube-subnet-mgr", "--kube-api-url=http://127.0.0.1:1",
                                          f"--net-config-path={conf}", "--timeout=2"], {}, out, err)
    assert code == 1 and "cannot list nodes from the API server http://127.0.0.1:1" in err.getvalue()
