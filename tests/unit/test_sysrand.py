"""``flannel.sysrand``: chance from ``os.urandom`` instead of the ``random`` module (issue #16)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from flannel import sysrand
from flannel.subnet.allocate import pick_subnets


def test_unit_stays_in_the_half_open_interval_and_spreads() -> None:
    draws = [sysrand.unit() for _ in range(20000)]
    assert all(0.0 <= x < 1.0 for x in draws)
    assert 0.45 < sum(draws) / len(draws) < 0.55
    assert min(draws) < 0.01 and max(draws) > 0.99


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 256, 257, 1 << 40])
def test_below_is_in_range(n: int) -> None:
    assert all(0 <= sysrand.below(n) < n for _ in range(2000))


def test_below_reaches_every_value_about_as_often() -> None:
    counts = Counter(sysrand.below(3) for _ in range(30000))  # 3 needs 2 bits: one draw in four is redrawn
    assert set(counts) == {0, 1, 2}
    assert all(9000 < c < 11000 for c in counts.values())


def test_below_refuses_an_empty_range_and_choice_an_empty_sequence() -> None:
    with pytest.raises(ValueError):
        sysrand.below(0)
    with pytest.raises(IndexError):
        sysrand.SystemChooser().choice([])


def test_the_system_chooser_and_a_seeded_random_both_serve_allocation() -> None:
    from flannel.config import check_network_config, parse_network_config

    cfg = check_network_config(parse_network_config('{"Network": "10.5.0.0/16"}'))
    for rng in (sysrand.SystemChooser(), random.Random(7)):
        v4, v6 = pick_subnets(cfg, [], rng)
        assert v4.prefixlen == 24 and v4.subnet_of(cfg.network) and v6 is None  # type: ignore[arg-type]
