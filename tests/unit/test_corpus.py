"""Bad and edge inputs from ``tests/corpus/`` through the real parsers (issue 15).

Each file (or, for ``keys.txt`` and ``prefixes.txt``, each line) is one case, run by ``tests/parser_runs.py``
as flanneld or the CNI plugin would run it, under a hard time limit. Its outcome per parser step must be the
one written in the directory's ``EXPECTED`` file: ``ok``, ``none`` (a parser that answers "not a subnet"), or
``error:<field>``, meaning the step's domain error names ``<field>`` (``ConfigError.field``, where ``-`` is the
whole document; otherwise the message). Any other exception fails the case. To add a case, add a file and
its line in ``EXPECTED``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from flannel.backend.route_plane import is_peer_subnet
from flannel.errors import LeaseDecodeError
from flannel.lease import Lease, LeaseAttrs, parse_subnet_key
from flannel.subnet.lease_tracker import LeaseTracker
from flannel.subnet.manager import WatchResult
from tests import parser_runs as runs
from tests.time_limit import TimeLimitExceeded, time_limit

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
LIMIT = 2.0
"""Seconds one case may take; the slowest (a 10 000-character key, 1 000-deep JSON) take milliseconds."""


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[], list[runs.Outcome]]


def _flags_case(path: Path) -> Callable[[], list[runs.Outcome]]:
    argv, environ = [], {}
    for line in path.read_text(encoding="utf-8").split("\n")[:-1]:
        if line.startswith("ENV "):
            key, _, value = line[4:].partition("=")
            environ[key] = value
        else:
            argv.append(line)
    return lambda: runs.flags(argv, environ)


def _file_runner(kind: str, path: Path) -> Callable[[], list[runs.Outcome]]:
    data = path.read_bytes()
    simple: dict[str, Callable[[bytes], list[runs.Outcome]]] = {
        "network_config": runs.network_config, "lease_value": runs.lease_value, "cni_stdin": runs.cni_stdin,
        "subnet_env": runs.subnet_env,
    }
    if kind in simple:
        return lambda: simple[kind](data)
    if kind == "kube_node":
        return lambda: runs.kube_node(json.loads(data))
    if kind == "cni_env":
        return lambda: runs.cni_env(runs.env_lines(data.decode()))
    if kind == "flags":
        return _flags_case(path)
    raise AssertionError(f"no runner for {kind}")


def _cases() -> list[Case]:
    cases = []
    for kind in ("network_config", "lease_value", "kube_node", "cni_stdin", "cni_env", "subnet_env", "flags"):
        for path in sorted((CORPUS / kind).iterdir()):
            if path.name != "EXPECTED":
                cases.append(Case(f"{kind}/{path.name}", _file_runner(kind, path)))
    for kind, name, run in (("subnet_key", "keys.txt", runs.subnet_key), ("kube_prefix", "prefixes.txt",
                                                                           runs.kube_prefix)):
        lines = (CORPUS / kind / name).read_text(encoding="utf-8").split("\n")[:-1]
        for lineno, line in enumerate(lines, 1):
            cases.append(Case(f"{kind}/{name}:{lineno}", lambda line=line, run=run: run(line)))  # type: ignore[misc]
    return cases


def _expected() -> dict[str, list[str]]:
    out = {}
    for path in CORPUS.glob("*/EXPECTED"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                name, *tokens = line.split()
                out[f"{path.parent.name}/{name}"] = tokens
    return out


CASES = _cases()
EXPECTED = _expected()


def _token(name: str, value: Any) -> str:
    if runs.is_domain_error(value):
        return f"{name}=error"
    return f"{name}={'none' if value is None else 'ok'}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_corpus_input_gives_a_result_or_the_domain_error_naming_its_field(case: Case) -> None:
    with time_limit(LIMIT, case.id):
        outcomes = case.run()
    want = EXPECTED.get(case.id)
    assert want is not None, f"{case.id} has no line in EXPECTED; it gives {[_token(*o) for o in outcomes]}"
    assert len(outcomes) == len(want), (case.id, outcomes, want)
    for (name, value), token in zip(outcomes, want, strict=True):
        step, _, result = token.partition("=")
        assert step == name, (case.id, token)
        kind, _, field = result.partition(":")
        if kind == "error":
            assert runs.is_domain_error(value), f"{case.id}: {name} gave {value!r}, expected an error naming {field}"
            assert runs.names_field(value, field), f"{case.id}: {name}: {value!r} does not name {field}"
        else:
            assert not runs.is_domain_error(value), f"{case.id}: {name} failed: {value!r}"
            assert (value is None) == (kind == "none"), (case.id, name, value)


def test_every_expected_line_has_its_corpus_case() -> None:
    lease_sets = {f"lease_set/{p.name}" for p in (CORPUS / "lease_set").iterdir()}
    assert set(EXPECTED) - {c.id for c in CASES} - lease_sets == set()


CLUSTER = IPv4Network("10.244.0.0/16")
OWN = IPv4Network("10.244.1.0/24")


@pytest.mark.parametrize("path", sorted(p for p in (CORPUS / "lease_set").iterdir() if p.name != "EXPECTED"),
                         ids=lambda p: p.name)
def test_overlapping_and_foreign_leases_are_never_routed_over_the_own_subnet_or_outside_the_network(
        path: Path) -> None:
    # A snapshot of hand-written etcd entries: undecodable ones are skipped one by one, and what reaches a
    # backend as a peer lies inside the cluster network and clear of this node's subnet.
    leases, skipped = [], []
    with time_limit(LIMIT, path.name):
        for revision, line in enumerate(path.read_text(encoding="utf-8").split("\n")[:-1], 1):
            key, _, value = line.partition(" ")
            subnets = parse_subnet_key(key)
            try:
                attrs = LeaseAttrs.from_json(value)
                attrs.backend_json()
            except LeaseDecodeError:
                skipped.append(key)
                continue
            if subnets is None:
                skipped.append(key)
                continue
            leases.append(Lease(subnet=subnets[0], ipv6_subnet=subnets[1], attrs=attrs, revision=revision))
        tracker = LeaseTracker(own=Lease(subnet=OWN))
        events = tracker.apply(WatchResult(snapshot=tuple(leases)))
        peers = [e.lease.subnet for e in events if e.lease.subnet and is_peer_subnet(e.lease.subnet, CLUSTER, OWN)]
    for subnet in peers:
        assert subnet.subnet_of(CLUSTER) and not subnet.overlaps(OWN)
    want = EXPECTED[f"lease_set/{path.name}"]
    assert [f"peers={','.join(str(p) for p in peers) or '-'}", f"skipped={','.join(skipped) or '-'}"] == want


@pytest.mark.parametrize(
    ("what", "data"),
    [
        ("a 4 MB string", b'{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw","Pad":"' + b"x" * (4 << 20)
         + b'"}}'),
        ("100 000 array elements", b'{"Network":"10.244.0.0/16","Networks":[' + b'"10.0.0.0/8",' * 100_000 + b"1]}"),
        ("1 000 000 opening brackets", b"[" * 1_000_000),
        ("100 000 keys", b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(100_000)) + b"}"),
    ],
)
def test_a_huge_network_config_is_refused_or_read_in_bounded_time(what: str, data: bytes) -> None:
    with time_limit(5.0, what):
        outcomes = runs.network_config(data)
    assert all(runs.is_domain_error(v) or v is not None for _, v in outcomes)


def test_the_time_limit_fails_a_runaway_parser_instead_of_waiting_for_it() -> None:
    def runaway() -> None:
        while True:
            with contextlib.suppress(Exception):  # what a careless parser might do; the limit is no Exception
                pass

    with pytest.raises(TimeLimitExceeded, match=r"took longer than 0\.05 s"), time_limit(0.05, "a runaway"):
        runaway()
