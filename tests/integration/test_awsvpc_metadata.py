"""aws-vpc's instance-metadata reads (``read_identity``) against the stand-in, in a namespace, black box.

Each case runs ``read_identity`` in a fresh ``python`` inside the namespace (real boto3/botocore, the real
socket path to 169.254.169.254 on the namespace's loopback) and reports what it got or the error text. The
happy paths (IMDSv2 with a token, IMDSv1 without) also run end to end in tests/e2e/test_awsvpc.py; these are
the refusals, each of which must be one clear line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.cloud.aws_metadata import IMDS_IP, Instance, MetadataStandIn
from tests.netns import NetNS, netns_fixture  # noqa: F401

pytestmark = [pytest.mark.root]
pytest.importorskip("boto3", reason="the aws extra is not installed (pip install -e '.[dev,aws]')")

READ = """
import asyncio, json
from flannel.backend.awsvpc_api import read_identity
try:
    i = asyncio.run(read_identity(attempts=2))
    print(json.dumps({"id": i.instance_id, "region": i.region, "version": i.metadata_version}))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
"""


@pytest.fixture
def imds(netns: NetNS) -> Iterator[tuple[NetNS, MetadataStandIn]]:
    netns.ip("addr", "add", f"{IMDS_IP}/32", "dev", "lo")
    stand_in = MetadataStandIn()
    try:
        yield netns, stand_in
    finally:
        stand_in.close()


def read(ns: NetNS, **env: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | env
    r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", READ], capture_output=True,
                       text=True, timeout=60, env=environ, check=True)
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def test_a_token_is_fetched_first_and_sent_with_every_read(imds: tuple[NetNS, MetadataStandIn]) -> None:
    ns, stand_in = imds
    inst = stand_in.serve(ns.name, Instance("i-0abc", "eu-central-1", mode="v2"))
    assert read(ns) == {"id": "i-0abc", "region": "eu-central-1", "version": "IMDSv2"}
    assert inst.requests[0] == ("PUT", "/latest/api/token", False)
    assert all(valid for method, _, valid in inst.requests if method == "GET")


def test_without_the_token_api_reads_fall_back_to_imdsv1_unless_that_is_disabled(
        imds: tuple[NetNS, MetadataStandIn]) -> None:
    ns, stand_in = imds
    stand_in.serve(ns.name, Instance("i-0abc", "us-east-2", mode="v1"))
    assert read(ns)["version"] == "IMDSv1"
    error = read(ns, AWS_EC2_METADATA_V1_DISABLED="true")["error"]
    assert error.startswith("AWSError: instance metadata at http://169.254.169.254/ failed after 2 attempts")
    assert "IMDSv1 has been disabled" in error


def test_a_service_without_the_item_is_not_an_ec2_instance_and_fails_at_once(
        imds: tuple[NetNS, MetadataStandIn]) -> None:
    ns, stand_in = imds
    inst = stand_in.serve(ns.name, Instance("", "eu-west-1"))  # empty: the stand-in answers 404
    error = read(ns)["error"]
    assert error == ("AWSError: instance metadata at http://169.254.169.254/ answered 404 for "
                     "latest/meta-data/instance-id")
    assert sum(1 for m, path, _ in inst.requests if m == "GET") == 1, "a 404 is not retried"


def test_a_malformed_endpoint_variable_is_named(imds: tuple[NetNS, MetadataStandIn]) -> None:
    ns, _ = imds
    error = read(ns, AWS_EC2_METADATA_SERVICE_ENDPOINT="not a url")["error"]
    assert error.startswith("AWSError: instance metadata:") and "not a url" in error
