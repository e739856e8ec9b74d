"""The hand-written registry renders what the Prometheus text format (0.0.4) requires.

The rules checked are those of the format's specification ("Exposition formats", text format): one
``# HELP`` and one ``# TYPE`` line per family before its samples; label values escape ``\\``, ``"`` and line
feed; HELP escapes ``\\`` and line feed; histogram buckets are cumulative, sorted by ``le``, and end with
``le="+Inf"`` whose count equals ``_count``; values may be ``+Inf``, ``-Inf`` and ``NaN``. The output is also
read back by prometheus-client's own parser, the reference implementation in Python.
"""

from __future__ import annotations

import math
import re

import pytest

from flannel.metrics_core import (
    CONTENT_TYPE,
    Registry,
    escape_help,
    escape_label_value,
    format_value,
)

# The text format's grammar for one sample line: name, optional {label="value",...}, value, optional timestamp.
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE_RE = re.compile(
    rf"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{{(?:{_LABEL})(?:,{_LABEL})*\}})? "
    r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|Inf)|NaN)( -?\d+)?$"
)


def check_grammar(text: str) -> None:
    """Every line is a well-formed HELP, TYPE or sample line, and each family's HELP/TYPE come first, once."""
    assert text.endswith("\n")
    seen_type: set[str] = set()
    current = ""
    for line in text.splitlines():
        if line.startswith("# HELP "):
            current = line.split(" ")[2]
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == current and name not in seen_type and kind in {"counter", "gauge", "histogram"}
            seen_type.add(name)
        else:
            m = _SAMPLE_RE.match(line)
            assert m, f"not a valid sample line: {line!r}"
            assert re.sub(r"_(bucket|sum|count)$", "", m.group(1)) == current or m.group(1) == current


def test_counter_renders_help_type_and_one_line_per_child() -> None:
    r = Registry()
    c = r.counter("flannel_things_total", "Things done.", ["kind"])
    c.labels("a").inc()
    c.labels("b").inc(2.5)
    text = r.render().decode()
    assert text == (
        "# HELP flannel_things_total Things done.\n"
        "# TYPE flannel_things_total counter\n"
        'flannel_things_total{kind="a"} 1\n'
        'flannel_things_total{kind="b"} 2.5\n'
    )
    check_grammar(text)


def test_unlabelled_metrics_are_present_from_the_start_at_zero() -> None:
    r = Registry()
    r.counter("flannel_a_total", "A.")
    r.gauge("flannel_b", "B.")
    assert r.render().decode().splitlines()[2::3] == ["flannel_a_total 0", "flannel_b 0"]


def test_label_values_escape_backslash_quote_and_newline() -> None:
    r = Registry()
    r.counter("flannel_x_total", "X.", ["reason"]).labels('a\\b"c\nd').inc()
    line = r.render().decode().splitlines()[2]
    assert line == 'flannel_x_total{reason="a\\\\b\\"c\\nd"} 1'
    check_grammar(r.render().decode())


def test_help_escapes_backslash_and_newline_but_not_quotes() -> None:
    assert escape_help('a\\b\n"c"') == 'a\\\\b\\n"c"'
    assert escape_label_value('"') == '\\"'
    r = Registry()
    r.gauge("flannel_g", 'line one\nline "two" \\ end')
    assert r.render().decode().splitlines()[0] == '# HELP flannel_g line one\\nline "two" \\\\ end'


def test_histogram_buckets_are_cumulative_and_end_with_inf() -> None:
    r = Registry()
    h = r.histogram("flannel_latency_seconds", "Latency.", buckets=[0.1, 1, 0.5])  # unsorted on purpose
    for v in (0.05, 0.1, 0.3, 0.7, 2.0, 100.0):
        h.observe(v)
    text = r.render().decode()
    assert text.splitlines()[2:] == [
        'flannel_latency_seconds_bucket{le="0.1"} 2',  # 0.1 itself falls in le="0.1": less than or equal
        'flannel_latency_seconds_bucket{le="0.5"} 3',
        'flannel_latency_seconds_bucket{le="1"} 4',
        'flannel_latency_seconds_bucket{le="+Inf"} 6',
        "flannel_latency_seconds_sum 103.15",
        "flannel_latency_seconds_count 6",
    ]
    check_grammar(text)


def test_labelled_histogram_puts_le_after_its_labels() -> None:
    r = Registry()
    r.histogram("flannel_h_seconds", "H.", ["op"], buckets=[1]).labels("put").observe(0.5)
    assert r.render().decode().splitlines()[2:] == [
        'flannel_h_seconds_bucket{op="put",le="1"} 1',
        'flannel_h_seconds_bucket{op="put",le="+Inf"} 1',
        'flannel_h_seconds_sum{op="put"} 0.5',
        'flannel_h_seconds_count{op="put"} 1',
    ]


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (3, "3"), (2.0, "2"), (0.25, "0.25"), (1e-05, "1e-05"), (1.5e20, "1.5e+20"),
    (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN"), (-7.0, "-7"),
])
def test_values_render_as_go_does(value: float, text: str) -> None:
    assert format_value(value) == text


def test_special_values_are_valid_samples() -> None:
    r = Registry()
    g = r.gauge("flannel_g", "G.", ["v"])
    g.labels("inf").set(math.inf)
    g.labels("ninf").set(-math.inf)
    g.labels("nan").set(math.nan)
    check_grammar(r.render().decode())


def test_families_render_sorted_by_name_and_empty_registry_is_empty() -> None:
    assert Registry().render() == b""
    r = Registry()
    r.gauge("flannel_z", "Z.")
    r.gauge("flannel_a", "A.")
    assert [line for line in r.render().decode().splitlines() if line.startswith("# TYPE")] == [
        "# TYPE flannel_a gauge", "# TYPE flannel_z gauge"]


def test_reference_parser_reads_the_output_back() -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    r = Registry()
    c = r.counter("flannel_ops_total", "Ops, with a \\ and\na newline.", ["kind"])
    c.labels('we"ird\\\n').inc(3)
    r.gauge("flannel_peers", "Peers.").set(5)
    h = r.histogram("flannel_lat_seconds", "Lat.", buckets=[0.5, 1])
    h.observe(0.2)
    h.observe(3)
    families = {f.name: f for f in parser.text_string_to_metric_families(r.render().decode())}
    ops = families["flannel_ops"]  # the parser strips _total from a counter's family name
    assert ops.type == "counter" and ops.documentation == "Ops, with a \\ and\na newline."
    assert [(s.labels, s.value) for s in ops.samples] == [({"kind": 'we"ird\\\n'}, 3.0)]
    assert families["flannel_peers"].samples[0].value == 5.0
    lat = {(s.name, s.labels.get("le")): s.value for s in families["flannel_lat_seconds"].samples}
    assert lat == {("flannel_lat_seconds_bucket", "0.5"): 1.0, ("flannel_lat_seconds_bucket", "1"): 1.0,
                   ("flannel_lat_seconds_bucket", "+Inf"): 2.0, ("flannel_lat_seconds_sum", None): 3.2,
                   ("flannel_lat_seconds_count", None): 2.0}


def test_content_type_is_the_text_format() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


@pytest.mark.parametrize("name", ["", "9lives", "flannel-x", "flannel x"])
def test_invalid_metric_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid metric name"):
        Registry().counter(name, "x")


@pytest.mark.parametrize("label", ["__reserved", "a-b", "1a"])
def test_invalid_label_names_are_refused(label: str) -> None:
    with pytest.raises(ValueError, match="invalid label name"):
        Registry().counter("flannel_x_total", "x", [label])


def test_histogram_cannot_have_an_le_label() -> None:
    with pytest.raises(ValueError, match="invalid label name"):
        Registry().histogram("flannel_h", "h", ["le"])
