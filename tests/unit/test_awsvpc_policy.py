"""The IAM policy in docs/backends.md is exactly the EC2 calls the backend makes, and the one the tests enforce.

The end-to-end tests run flanneld with a moto user holding ``NODE_POLICY`` (moto checks it), which proves the
list is enough; this test proves it is no more than the calls in the code, and that the docs say the same.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.cloud.aws_world import NODE_POLICY

REPO = Path(__file__).resolve().parents[2]


def documented_policy() -> dict[str, object]:
    text = (REPO / "docs" / "backends.md").read_text()
    section = text[text.index("## aws-vpc"):]
    block = re.search(r"\*\*IAM permissions\*\*.*?```json\n(.*?)```", section, re.S)
    assert block, "docs/backends.md's aws-vpc section has no IAM policy block"
    return dict(json.loads(block.group(1)))


def called_actions() -> set[str]:
    source = "".join(p.read_text() for p in (REPO / "src" / "flannel" / "backend").glob("awsvpc*.py"))
    names = set(re.findall(r'call\(\s*"([a-z_]+)"', source))
    return {"ec2:" + "".join(part.capitalize() for part in name.split("_")) for name in names}


def test_the_documented_policy_is_the_one_the_tests_enforce() -> None:
    assert documented_policy() == NODE_POLICY


def test_the_policy_lists_exactly_the_calls_the_backend_makes() -> None:
    statement = NODE_POLICY["Statement"][0]  # type: ignore[index]
    assert set(statement["Action"]) == called_actions()


def test_flannelctl_expects_aws_vpc_leases_without_a_backend_type() -> None:
    from flannel.config import parse_network_config
    from flannel.ctl.leases import expected_backend_type

    config = parse_network_config('{"Network":"10.244.0.0/16","Backend":{"Type":"aws-vpc"}}')
    assert expected_backend_type(config) == ""
