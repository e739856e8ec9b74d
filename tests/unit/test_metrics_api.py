"""The metrics API other modules use: registration once, labels, the kernel/lease helpers, and no ``ssl``."""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel import metrics
from flannel.metrics_core import Counter, Registry
from flannel.netlink import FdbDelete, NeighReplace, RouteReplace


def value(name: str, *labels: str) -> float:
    family = metrics.REGISTRY.get(name)
    assert family is not None, name
    child = family.labels(*labels)
    return float(child.get() if hasattr(child, "get") else getattr(child, "value", 0))


@pytest.fixture
def scratch() -> Iterator[Registry]:
    yield Registry()


def test_registering_the_same_metric_again_returns_the_same_object(scratch: Registry) -> None:
    a = scratch.counter("flannel_udp_dropped_total", "Dropped.", ["reason"])
    b = scratch.counter("flannel_udp_dropped_total", "Dropped (other help text).", ("reason",))
    assert a is b


def test_predefined_udp_metric_is_what_counter_returns() -> None:
    assert metrics.counter("flannel_udp_dropped_total", "x", ["reason"]) is metrics.UDP_DROPPED


def test_registering_a_name_with_another_type_or_labels_fails(scratch: Registry) -> None:
    scratch.counter("flannel_x_total", "X.", ["a"])
    with pytest.raises(ValueError, match="already registered"):
        scratch.gauge("flannel_x_total", "X.", ["a"])
    with pytest.raises(ValueError, match="already registered"):
        scratch.counter("flannel_x_total", "X.", ["b"])


def test_wrong_number_of_label_values_fails(scratch: Registry) -> None:
    c = scratch.counter("flannel_x_total", "X.", ["a", "b"])
    with pytest.raises(ValueError, match="takes labels"):
        c.labels("only-one")


def test_unlabelled_call_on_a_labelled_family_says_to_use_labels(scratch: Registry) -> None:
    with pytest.raises(ValueError, match=r"use \.labels"):
        scratch.counter("flannel_x_total", "X.", ["a"]).inc()


def test_counters_never_go_down(scratch: Registry) -> None:
    with pytest.raises(ValueError, match="only increase"):
        scratch.counter("flannel_x_total", "X.").inc(-1)


def test_label_values_are_text_and_children_are_kept(scratch: Registry) -> None:
    c: Counter = scratch.counter("flannel_x_total", "X.", ["n"])
    c.labels(1).inc()  # type: ignore[arg-type]
    c.labels("1").inc()
    assert c.labels("1").value == 2
    assert c.labels(1) is c.labels("1")  # type: ignore[arg-type]


def test_gauge_function_is_read_at_scrape_time(scratch: Registry) -> None:
    peers = [1, 2]
    g = scratch.gauge("flannel_known_peers", "Peers.")
    g.set_function(lambda: len(peers))
    peers.append(3)
    assert b"flannel_known_peers 3\n" in scratch.render()


def test_op_kind_is_the_snake_case_class_name() -> None:
    op = RouteReplace(dst=IPv4Network("10.1.2.0/24"), gateway=IPv4Address("10.1.2.0"), oif=3, onlink=True)
    assert metrics.op_kind(op) == "route_replace"
    assert metrics.op_kind(FdbDelete(index=3, mac="02:00:00:00:00:01", dst=IPv4Address("1.2.3.4"))) == "fdb_delete"


def test_kernel_batch_counts_every_op_by_kind_and_the_refused_ones() -> None:
    route = RouteReplace(dst=IPv4Network("10.1.2.0/24"), gateway=IPv4Address("10.1.2.0"), oif=3, onlink=True)
    neigh = NeighReplace(index=3, ip=IPv4Address("10.1.2.0"), mac="02:00:00:00:00:01")
    before = (value("flannel_kernel_operations_total", "route_replace"),
              value("flannel_kernel_operations_total", "neigh_replace"),
              value("flannel_kernel_operation_errors_total", "neigh_replace"))
    metrics.count_kernel_batch([route, neigh, route, neigh], failed=[(3, errno.EINVAL)])
    after = (value("flannel_kernel_operations_total", "route_replace"),
             value("flannel_kernel_operations_total", "neigh_replace"),
             value("flannel_kernel_operation_errors_total", "neigh_replace"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2, 1]


@pytest.mark.parametrize(("op", "kind"), [
    ("link add flannel.1 type vxlan id 1", "link_add"),
    ("link del #7", "link_delete"),
    ("link set #7 up", "link_set"),
    ("addr replace 10.1.0.0/32 dev #7", "addr_replace"),
    ("addr del 10.1.0.0/32 dev #7", "addr_delete"),
])
def test_single_requests_are_counted_by_object_and_verb(op: str, kind: str) -> None:
    before = value("flannel_kernel_operations_total", kind), value("flannel_kernel_operation_errors_total", kind)
    metrics.count_kernel_request(op)
    metrics.count_kernel_request(op, errno.EEXIST)
    after = value("flannel_kernel_operations_total", kind), value("flannel_kernel_operation_errors_total", kind)
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)


def test_deleting_what_is_already_gone_is_not_an_error() -> None:
    fdb = FdbDelete(index=3, mac="02:00:00:00:00:01", dst=IPv4Address("1.2.3.4"))
    neigh = NeighReplace(index=3, ip=IPv4Address("10.1.2.0"), mac="02:00:00:00:00:01")
    before = value("flannel_kernel_operation_errors_total", "fdb_delete")
    neigh_before = value("flannel_kernel_operation_errors_total", "neigh_replace")
    metrics.count_kernel_batch([fdb, neigh], failed=[(0, errno.ENOENT), (1, errno.ENODEV)])
    assert value("flannel_kernel_operation_errors_total", "fdb_delete") == before
    assert value("flannel_kernel_operation_errors_total", "neigh_replace") == neigh_before + 1
    link_before = value("flannel_kernel_operation_errors_total", "link_delete")
    metrics.count_kernel_request("link del #9", errno.ENODEV)
    assert value("flannel_kernel_operation_errors_total", "link_delete") == link_before


def test_reads_are_not_kernel_changes() -> None:
    before = metrics.render()
    metrics.count_kernel_request("link show flannel.1")
    metrics.count_kernel_request("route get 10.1.2.3", errno.ENETUNREACH)
    assert metrics.render() == before


def test_event_latency_pairs_the_first_received_batch_with_programming() -> None:
    h = metrics.LEASE_EVENT_TO_KERNEL.labels()
    count = h.count
    metrics.EVENT_LATENCY.programmed()  # nothing pending (a snapshot): nothing observed
    assert h.count == count
    metrics.EVENT_LATENCY.received()
    metrics.EVENT_LATENCY.received()  # a second batch before programming keeps the earliest time
    metrics.EVENT_LATENCY.programmed()
    metrics.EVENT_LATENCY.programmed()
    assert h.count == count + 1


def test_build_info_names_versions_and_backend() -> None:
    metrics.set_build_info("vxlan")
    text = metrics.render().decode()
    assert 'flannel_build_info{version="0.1.0",upstream_version="v0.28.9",backend="vxlan"} 1' in text


def test_every_flannel_metric_has_the_prefix_and_help() -> None:
    text = metrics.render().decode()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name.startswith("flannel_") and help_text
    for needed in ("flannel_lease_expiration_timestamp_seconds", "flannel_known_peers", "flannel_lease_events_total",
                   "flannel_kernel_operations_total", "flannel_kernel_operation_errors_total",
                   "flannel_lease_event_to_kernel_seconds", "flannel_reconcile_repairs_total",
                   "flannel_datastore_watch_reconnects_total", "flannel_datastore_watch_errors_total",
                   "flannel_traffic_rule_repairs_total", "flannel_build_info", "flannel_udp_dropped_total",
                   "flannel_udp_packets_total", "flannel_lease_rejected_total"):
        assert f"# TYPE {needed} " in text, needed


def test_metrics_and_health_server_import_without_ssl() -> None:
    """flanneld blocks ``ssl`` (daemon/entry.py); the metrics path must never need it."""
    code = ("import sys; sys.modules['ssl'] = None\n"
            "import flannel.metrics, flannel.daemon.health\n"
            "flannel.metrics.render()\n"
            "assert sys.modules['ssl'] is None\n"
            "assert 'http.server' not in sys.modules and 'urllib.request' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
