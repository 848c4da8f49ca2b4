"""The report's arithmetic: Prometheus' histogram_quantile, the tolerance, and the marks.

The tolerance is claimed to be a bound: with the default buckets and every measurement
within epsilon of the truth, no quantile's error exceeds it. The property tests below
check that claim on the workloads the buckets were sized for; the other tests build
reports that must fail (a mis-measured duration, coarse buckets, a value above the
largest bound, a count that differs, a long stream cut short) and see each ✗.
"""

from __future__ import annotations

import io
import math
import random
from typing import Any

import pytest
from rich.console import Console

from otel_stream import buckets
from otel_stream.demo import load, report
from otel_stream.demo.report import (
    Estimate,
    Metrics,
    bucketed,
    default_bound,
    estimate_quantile,
    exact_quantile,
    histogram_quantile,
    tolerance,
)
from otel_stream.demo.run import LoadProgress

BOUNDS = (0.1, 0.2, 0.5, 1.0)
EPSILON = report.EPSILON


def test_interpolates_linearly_inside_the_bucket() -> None:
    # 10 observations: 2 in (0, 0.1], 4 in (0.1, 0.2], 4 in (0.5, 1.0].
    counts = [2, 4, 0, 4, 0]
    assert histogram_quantile(0.5, BOUNDS, counts) == pytest.approx(0.1 + 0.1 * 3 / 4)
    assert histogram_quantile(0.1, BOUNDS, counts) == pytest.approx(0.05)  # first bucket from 0
    assert histogram_quantile(0.9, BOUNDS, counts) == pytest.approx(0.5 + 0.5 * 3 / 4)
    assert estimate_quantile(0.9, BOUNDS, counts) == Estimate(pytest.approx(0.875), 0.5, 1.0)


def test_a_rank_on_a_bucket_edge_returns_its_upper_bound() -> None:
    assert histogram_quantile(0.6, BOUNDS, [2, 4, 0, 4, 0]) == pytest.approx(0.2)


def test_the_overflow_bucket_returns_the_largest_bound() -> None:
    assert histogram_quantile(0.99, BOUNDS, [1, 0, 0, 0, 9]) == 1.0
    estimate = estimate_quantile(0.99, BOUNDS, [1, 0, 0, 0, 9])
    assert estimate is not None
    assert estimate.in_overflow
    assert tolerance(estimate, 3.0) == (None, "overflow")


def test_no_observations_no_quantile() -> None:
    assert histogram_quantile(0.5, BOUNDS, [0, 0, 0, 0, 0]) is None
    assert exact_quantile(0.5, []) is None


def test_exact_quantile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert exact_quantile(0.5, values) == 5.0
    assert exact_quantile(0.9, values) == 9.0
    assert exact_quantile(0.99, values) == 10.0


def test_tolerance_is_the_distance_to_the_bucket_edge_on_the_side_of_the_error() -> None:
    estimate = Estimate(0.45, 0.2, 0.5)
    # Telemetry high: the truth may be down to the bucket's lower edge, minus epsilon.
    assert tolerance(estimate, 0.4, epsilon=0.05)[0] == pytest.approx((0.45 - 0.2 + 0.05) / 0.4)
    # Telemetry low: up to the upper edge, plus epsilon.
    assert tolerance(estimate, 0.48, epsilon=0.05)[0] == pytest.approx((0.5 - 0.45 + 0.05) / 0.48)


def test_the_default_buckets_cap_the_tolerance_of_a_coarse_bucket() -> None:
    coarse = Estimate(2.75, 0.5, 5.0)  # the middle of a 0.5 to 5 s bucket
    allowed, held_to = tolerance(coarse, 1.3, buckets.DURATION_BUCKETS)
    assert held_to == "default"
    # 1.3 s + epsilon lies in the default bucket (1.33, 1.78]: at most 1.78 s is allowed.
    assert allowed == pytest.approx((1.78 - 1.3) / 1.3)
    assert allowed == default_bound(True, 1.3, buckets.DURATION_BUCKETS)
    assert default_bound(False, 1.3, buckets.DURATION_BUCKETS) == pytest.approx(
        (1.3 - 1.0) / 1.3  # 1.3 s - epsilon lies in (1.0, 1.33]
    )


WORKLOADS = [
    (report.TTFB, 0.35, 0.5),
    (report.TTFB, 0.08, 0.6),
    (report.TTFB, 6.0, 1.0),
    (report.DURATION, 0.4, 0.7),
    (report.DURATION, 8.0, 0.8),
    (report.DURATION, 60.0, 1.0),
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("metric", "median", "sigma"), WORKLOADS)
@pytest.mark.parametrize("n", [1, 3, 20, 300])
def test_no_error_exceeds_the_tolerance_with_the_default_buckets(
    seed: int, metric: str, median: float, sigma: float, n: int
) -> None:
    """The claim every ✓ rests on: server readings within epsilon of the clients',
    bucketed in the default buckets, never err by more than the tolerance."""
    bounds = report.DEFAULT_BOUNDS[metric]
    rng = random.Random(seed)
    truth = [rng.lognormvariate(math.log(median), sigma) for _ in range(n)]
    for jitter in (EPSILON, -EPSILON, None):
        measured = [
            max(0.0, v + (jitter if jitter is not None else rng.uniform(-EPSILON, EPSILON)))
            for v in truth
        ]
        row = report.timing_row(metric, "timing", bucketed(measured, bounds), truth)
        for quantile in row["quantiles"]:
            assert quantile["ok"], (quantile, jitter)


def durations_report(
    server: list[float],
    clients: list[float],
    bounds: tuple[float, ...] = buckets.DURATION_BUCKETS,
) -> dict[str, Any]:
    return report.timing_row(report.DURATION, "stream duration", bucketed(server, bounds), clients)


def spread(n: int, low: float, high: float) -> list[float]:
    return [low * (high / low) ** (i / (n - 1)) for i in range(n)]


def test_a_duration_measured_short_by_more_than_the_buckets_and_clocks_explain_fails() -> None:
    """A bound of about a bucket's width plus epsilon cannot see a small error, and must see
    a large one: a stream span that ends halfway through the stream."""
    clients = spread(40, 0.8, 4.0)
    cut_short = [value / 2 for value in clients]
    rows = durations_report(cut_short, clients)["quantiles"]
    assert [row["ok"] for row in rows] == [False, False, False]
    assert all(row["error"] < -row["tolerance"] for row in rows)
    within = durations_report([value - EPSILON for value in clients], clients)["quantiles"]
    assert [row["ok"] for row in within] == [True, True, True]


def test_coarse_buckets_fail_where_they_blur_the_value() -> None:
    clients = spread(40, 0.8, 4.0)
    rows = durations_report(clients, clients, (0.5, 5.0, 50.0))["quantiles"]
    assert rows[0]["ok"] is False
    assert rows[0]["held_to"] == "default"
    assert rows[0]["bucket"] == [0.5, 5.0]


def test_a_quantile_above_the_largest_bound_fails_however_close_it_reads() -> None:
    clients = spread(40, 0.8, 4.0)
    rows = durations_report(clients, clients, (0.25, 0.5, 1.0))["quantiles"]
    p99 = rows[-1]
    assert p99["telemetry"] == 1.0
    assert p99["bucket"] == [1.0, None]
    assert p99["tolerance"] is None
    assert p99["ok"] is False


def test_a_count_that_differs_fails_every_quantile_of_the_timing() -> None:
    clients = spread(40, 0.8, 4.0)
    row = durations_report([*clients, 2.0], clients)
    assert row["count"] == {"telemetry": 41, "clients": 40, "ok": False}
    assert [quantile["ok"] for quantile in row["quantiles"]] == [False, False, False]


def result(kind: str, first_byte: float | None, end: float, **fields: Any) -> load.ClientResult:
    observation = fields.pop("observation", "done")
    return load.ClientResult(
        kind, observation=observation, status=200, first_byte=first_byte, end=end, **fields
    )


def test_the_long_stream_is_held_to_epsilon_and_to_a_bucket_that_holds_it() -> None:
    long_stream = result("long_stream", 0.35, 10.35)
    ok = report.long_stream_row(long_stream, 9.98, buckets.DURATION_BUCKETS)
    assert ok is not None
    assert ok["ok"] is True
    assert ok["tolerance"] == pytest.approx(EPSILON / 10.0)
    assert ok["bucket"] == [7.5, 10.0]
    cut = report.long_stream_row(long_stream, 9.5, buckets.DURATION_BUCKETS)
    assert cut is not None
    assert cut["ok"] is False
    clamped = report.long_stream_row(long_stream, 10.0, (1.0, 5.0))
    assert clamped is not None
    assert clamped["ok"] is False
    assert clamped["bucket"] == [5.0, None]
    missing = report.long_stream_row(long_stream, None, buckets.DURATION_BUCKETS)
    assert missing is not None
    assert missing["ok"] is False


def sample_metrics() -> tuple[Metrics, list[load.ClientResult]]:
    """Six requests: three streamed answers, one non-streamed answer, one user who gave
    up waiting, one model error mid-stream; telemetry that agrees with them."""
    results = [
        result("completed", 0.30, 1.30),
        result("completed", 0.32, 1.52),
        result("long_stream", 0.35, 3.35),
        result("non_stream", 1.20, 1.21, streamed=False),
        result("give_up_waiting", None, 0.40, observation="left"),
        result("model_error", 0.31, 0.81, observation="broken"),
    ]
    metrics = Metrics()
    metrics.terminations = {
        ("completed", "streaming"): 4,
        ("client_disconnect", "waiting"): 1,
        ("app_error", "streaming"): 1,
    }
    metrics.durations = {
        "completed": bucketed([1.0, 1.2, 3.0], buckets.DURATION_BUCKETS),
        "app_error": bucketed([0.5], buckets.DURATION_BUCKETS),
    }
    metrics.histograms = {
        report.TTFB: bucketed([0.30, 0.32, 0.35, 1.2, 0.31], buckets.TTFB_BUCKETS),
        report.TTFT: bucketed([], buckets.TTFB_BUCKETS),
    }
    return metrics, results


def build(metrics: Metrics, results: list[load.ClientResult], **options: Any) -> dict[str, Any]:
    run = {"url": "http://127.0.0.1:1/v1/chat/completions", "requests": len(results)}
    run |= {"concurrency": 2, "wall_seconds": 3.5, "exporters": []}
    return report.build_report(metrics, results, run=run, first_token_supported=True, **options)


def render(data: dict[str, Any]) -> str:
    console = Console(file=io.StringIO(), width=100, no_color=True)
    report.render(data, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(text, str)
    return text


def test_the_counts_reconcile_on_the_page() -> None:
    metrics, results = sample_metrics()
    data = build(metrics, results, long_stream_seconds=3.0)
    assert data["counts"] == {
        "requests": 6,
        "ended_before_first_byte": {"client_disconnect": 1},
        "first_byte": 5,
        "single_message": {"completed": 1},
        "streamed": 4,
        "time_to_first_byte_count": 5,
    }
    text = " ".join(render(data).split())
    assert (
        "Counts: 6 requests; 1 ended before the first byte (client_disconnect 1), so 5 have a "
        "time to first byte; 1 of those answered in a single message, not streamed (completed "
        "1), so 4 have a stream duration"
    ) in text
    assert data["ok"] is True
    assert "✓ every mark passed." in text


def test_a_failed_mark_is_listed_and_fails_the_report() -> None:
    metrics, results = sample_metrics()
    data = build(metrics, results, long_stream_seconds=2.0)  # the span is a second short
    assert data["ok"] is False
    assert data["failed"] == [
        "long stream: 2.00 (telemetry) vs 3.00 (exact), error -33.3 % > tolerance 3.3 %"
    ]
    text = render(data)
    assert "✗ 1 marks failed:" in text
    long_row = next(line for line in text.splitlines() if "long stream (its stream span)" in line)
    assert "✗" in long_row


def test_the_progress_bar_shows_done_of_total_and_the_time_left() -> None:
    now = [100.0]
    console = Console(file=io.StringIO(), width=120, force_terminal=True)
    by_requests = LoadProgress(
        console, load.LoadPlan(seconds=math.inf, requests=40), lambda: now[0]
    )
    assert by_requests.status() == "0/40 requests · ?:?? left"
    for _ in range(10):
        by_requests.on_result(result("completed", 0.3, 1.3))
    now[0] += 5.0
    assert by_requests.status() == "10/40 requests · 0:15 left"

    by_time = LoadProgress(console, load.LoadPlan(seconds=20.0), lambda: now[0])
    now[0] += 12.4
    by_time.on_result(result("completed", 0.3, 1.3))
    assert by_time.status() == "1 request · 12/20 s · 0:07 left"
    now[0] += 10.0
    assert by_time.status() == "1 request · 20/20 s · finishing"


def test_time_to_first_token_is_judged_whenever_payloads_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From the setting, not the data: missing first-token data must fail its marks."""
    from otel_stream.demo import run

    monkeypatch.delenv("OTEL_STREAM_PAYLOADS", raising=False)
    assert run.first_token_expected() is True
    monkeypatch.setenv("OTEL_STREAM_PAYLOADS", "false")
    assert run.first_token_expected() is False
    metrics, results = sample_metrics()
    results = [*results, result("completed", 0.30, 1.30, first_token=0.4)]
    data = build(metrics, results)  # first tokens seen by a client, none in the telemetry
    first_token = data["timings"][1]
    assert first_token["count"] == {"telemetry": 0, "clients": 1, "ok": False}
    assert data["ok"] is False
