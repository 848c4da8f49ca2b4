"""The report's arithmetic: Prometheus' histogram_quantile and the agreement rule."""

from __future__ import annotations

import math
import random

import pytest

from otel_stream.demo.report import (
    agreement_range,
    bucketed,
    exact_quantile,
    histogram_quantile,
)

BOUNDS = (0.1, 0.2, 0.5, 1.0)


def test_interpolates_linearly_inside_the_bucket() -> None:
    # 10 observations: 2 in (0, 0.1], 4 in (0.1, 0.2], 4 in (0.5, 1.0].
    counts = [2, 4, 0, 4, 0]
    assert histogram_quantile(0.5, BOUNDS, counts) == pytest.approx(0.1 + 0.1 * 3 / 4)
    assert histogram_quantile(0.1, BOUNDS, counts) == pytest.approx(0.05)  # first bucket from 0
    assert histogram_quantile(0.9, BOUNDS, counts) == pytest.approx(0.5 + 0.5 * 3 / 4)


def test_a_rank_on_a_bucket_edge_returns_its_upper_bound() -> None:
    assert histogram_quantile(0.6, BOUNDS, [2, 4, 0, 4, 0]) == pytest.approx(0.2)


def test_the_overflow_bucket_returns_the_largest_bound() -> None:
    assert histogram_quantile(0.99, BOUNDS, [1, 0, 0, 0, 9]) == 1.0


def test_no_observations_no_quantile() -> None:
    assert histogram_quantile(0.5, BOUNDS, [0, 0, 0, 0, 0]) is None
    assert exact_quantile(0.5, []) is None


def test_exact_quantile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert exact_quantile(0.5, values) == 5.0
    assert exact_quantile(0.9, values) == 9.0
    assert exact_quantile(0.99, values) == 10.0


def test_agreement_range_covers_the_buckets_around_the_value() -> None:
    assert agreement_range(0.3, BOUNDS, 0.05) == (0.2, 0.5)
    assert agreement_range(0.19, BOUNDS, 0.05) == (0.1, 0.5)
    assert agreement_range(0.02, BOUNDS, 0.05) == (0.0, 0.1)
    assert agreement_range(0.99, BOUNDS, 0.05) == (0.5, math.inf)


@pytest.mark.parametrize("seed", range(5))
def test_histogram_quantile_lands_in_the_agreement_range(seed: int) -> None:
    """The claim the report's ✓ rests on, for values jittered by less than epsilon."""
    rng = random.Random(seed)
    bounds = tuple(0.01 * 1.33**i for i in range(30))
    truth = [rng.lognormvariate(math.log(0.4), 0.8) for _ in range(300)]
    measured = [value + rng.uniform(-0.02, 0.02) for value in truth]
    histogram = bucketed(measured, bounds)
    for q in (0.5, 0.9, 0.99):
        lower, upper = agreement_range(exact_quantile(q, truth) or 0, bounds, 0.02)
        assert lower <= (histogram.quantile(q) or 0) <= upper
