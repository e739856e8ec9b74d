"""A minimal Prometheus registry: counters, gauges and histograms, rendered in the text exposition format.

Why not ``prometheus-client``: flanneld must fit 50 MiB and keeps ``ssl`` out (see ``daemon/entry.py``).
prometheus-client 0.26 imports ``ssl`` at module level, so it cannot even be imported there, and with ``ssl``
stubbed out it still costs about 8.7 MiB of RSS (urllib, email, http.server, wsgiref, gzip...). This module
costs well under 1 MiB and renders the same format (``docs/metrics.md`` has the numbers).

The format is Prometheus text format 0.0.4: ``# HELP`` and ``# TYPE`` lines, then one sample per line;
label values escape ``\\``, ``"`` and newlines, HELP text escapes ``\\`` and newlines; histograms give
cumulative ``_bucket{le=...}`` samples ending with ``le="+Inf"``, then ``_sum`` and ``_count``.

Hot paths stay cheap: a labelled child is looked up once (``family.labels(...)``) and can be kept; ``inc()``
is then one attribute add. Everything runs on the event loop thread; an increment from another thread may
be lost in a race, never corrupted.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def format_value(v: float) -> str:
    """Render a sample value the way Go's client does: ``+Inf``/``-Inf``/``NaN``, integers without ``.0``."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if isinstance(v, int) or (v.is_integer() and abs(v) < 1e15):
        return str(int(v))
    return repr(float(v))


def escape_label_value(v: str) -> str:
    """Escape a label value: backslash, double quote and line feed, as the text format requires."""
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(v: str) -> str:
    """Escape HELP text: backslash and line feed (a double quote stays as it is)."""
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class CounterChild:
    """One counter time series. Only goes up."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter can only increase")
        self.value += amount


class GaugeChild:
    """One gauge time series: set, or moved up and down; or computed at scrape time by a function."""

    __slots__ = ("_fn", "value")

    def __init__(self) -> None:
        self.value: float = 0
        self._fn: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set_function(self, fn: Callable[[], float]) -> None:
        """Compute the value when scraped: free for the hot path (e.g. ``len(peers)``)."""
        self._fn = fn

    def get(self) -> float:
        return self._fn() if self._fn is not None else self.value


class HistogramChild:
    """One histogram: per-bucket counts (made cumulative at render time), sum and count."""

    __slots__ = ("_bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is the +Inf bucket
        self.sum: float = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal").
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value
        self.count += 1


C = TypeVar("C", CounterChild, GaugeChild, HistogramChild)
F = TypeVar("F", "Counter", "Gauge", "Histogram")


class Family(Generic[C]):
    """A metric name with its HELP, TYPE and label names; holds one child per label-value tuple."""

    kind = ""

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        for label in self.labelnames:
            if not _LABEL_RE.match(label) or label.startswith("__") or (label == "le" and self.kind == "histogram"):
                raise ValueError(f"invalid label name {label!r} for {name}")
        self._children: dict[tuple[str, ...], C] = {}
        self._unlabelled: C | None = self.labels() if not self.labelnames else None

    @property
    def _default(self) -> C:
        if self._unlabelled is None:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...)")
        return self._unlabelled

    def _new_child(self) -> C:
        raise NotImplementedError

    def labels(self, *values: str) -> C:
        """The child for these label values, in ``labelnames`` order; created on first use."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values!r}")
            key = tuple(str(v) for v in values)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._new_child()
        return child

    def remove(self, *values: str) -> None:
        """Forget the child for these label values (a peer that left): its series disappears from the output."""
        self._children.pop(tuple(str(v) for v in values), None)

    def samples(self) -> Iterator[str]:
        raise NotImplementedError

    def render(self) -> Iterator[str]:
        yield f"# HELP {self.name} {escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        yield from self.samples()


class Counter(Family[CounterChild]):
    kind = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1) -> None:
        """Increment an unlabelled counter."""
        self._default.inc(amount)

    def samples(self) -> Iterator[str]:
        for values, child in self._children.items():
            yield f"{self.name}{_label_text(self.labelnames, values)} {format_value(child.value)}"


class Gauge(Family[GaugeChild]):
    kind = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set(self, value: float) -> None:
        self._default.set(value)

    def inc(self, amount: float = 1) -> None:
        self._default.inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._default.dec(amount)

    def set_function(self, fn: Callable[[], float]) -> None:
        self._default.set_function(fn)

    def samples(self) -> Iterator[str]:
        for values, child in self._children.items():
            yield f"{self.name}{_label_text(self.labelnames, values)} {format_value(child.get())}"


class Histogram(Family[HistogramChild]):
    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = (),
                 buckets: Iterable[float] = DEFAULT_BUCKETS) -> None:
        bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct and non-empty")
        self.bounds = bounds
        super().__init__(name, help, labelnames)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self._default.observe(value)

    def samples(self) -> Iterator[str]:
        les = [*(format_value(b) for b in self.bounds), "+Inf"]
        for values, child in self._children.items():
            cumulative = 0
            for le, n in zip(les, child.counts, strict=True):
                cumulative += n
                labels = _label_text(self.labelnames, values, f'le="{le}"')
                yield f"{self.name}_bucket{labels} {cumulative}"
            plain = _label_text(self.labelnames, values)
            yield f"{self.name}_sum{plain} {format_value(child.sum)}"
            yield f"{self.name}_count{plain} {child.count}"


class Registry:
    """Metric families by name. Registering the same name again returns the existing family if it matches."""

    def __init__(self) -> None:
        self._families: dict[str, Counter | Gauge | Histogram] = {}

    def _register(self, family: F) -> F:
        old = self._families.get(family.name)
        if old is None:
            self._families[family.name] = family
            return family
        if type(old) is not type(family) or old.labelnames != family.labelnames:
            raise ValueError(f"metric {family.name} is already registered as a {old.kind} with {old.labelnames}")
        assert isinstance(old, type(family))
        return old

    def counter(self, name: str, help: str, labelnames: Iterable[str] = ()) -> Counter:
        return self._register(Counter(name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: Iterable[str] = ()) -> Gauge:
        return self._register(Gauge(name, help, labelnames))

    def histogram(self, name: str, help: str, labelnames: Iterable[str] = (),
                  buckets: Iterable[float] = DEFAULT_BUCKETS) -> Histogram:
        return self._register(Histogram(name, help, labelnames, buckets))

    def get(self, name: str) -> Counter | Gauge | Histogram | None:
        return self._families.get(name)

    def render(self) -> bytes:
        """The whole registry in text exposition format, families sorted by name."""
        lines: list[str] = []
        for name in sorted(self._families):
            lines.extend(self._families[name].render())
        return ("\n".join(lines) + "\n").encode() if lines else b""
