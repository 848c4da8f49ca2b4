"""Metric semantics: attribute sets, the balanced up-down counter, bucket advice and fidelity."""

from __future__ import annotations

import concurrent.futures
import math
from statistics import NormalDist

import httpx
import pytest

from otel_stream import StreamingMiddleware, buckets
from tests.apps import starlette_app
from tests.rawclient import abort, open_request, read_until
from tests.servers import serve, wait_until
from tests.telemetry_harness import Telemetry

HTTP_SEMCONV_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


def histogram_quantile(q: float, bounds: tuple[float, ...], cumulative: list[float]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q."""
    total = cumulative[-1]
    rank = q * total
    for index, count in enumerate(cumulative):
        if count >= rank:
            if index == len(bounds):  # the +Inf bucket: Prometheus returns the last bound
                return bounds[-1]
            lower = 0.0 if index == 0 else bounds[index - 1]
            before = 0.0 if index == 0 else cumulative[index - 1]
            return lower + (bounds[index] - lower) * (rank - before) / (count - before)
    raise AssertionError("unreachable")


def worst_error(bounds: tuple[float, ...], median: float, sigma: float) -> float:
    dist = NormalDist(math.log(median), sigma)
    cumulative = [dist.cdf(math.log(bound)) for bound in bounds] + [1.0]
    errors = []
    for q in (0.5, 0.9, 0.99):
        true = math.exp(dist.inv_cdf(q))
        errors.append(abs(histogram_quantile(q, bounds, cumulative) - true) / true)
    return max(errors)


TTFB_WORKLOADS = [(0.08, 0.6), (0.6, 0.8), (6.0, 1.0)]
DURATION_WORKLOADS = [(0.4, 0.7), (8.0, 0.8), (60.0, 1.0)]


@pytest.mark.parametrize(("median", "sigma"), TTFB_WORKLOADS)
def test_ttfb_buckets_keep_quantiles_within_5_percent(median: float, sigma: float) -> None:
    assert worst_error(buckets.TTFB_BUCKETS, median, sigma) < 0.05


@pytest.mark.parametrize(("median", "sigma"), DURATION_WORKLOADS)
def test_duration_buckets_keep_quantiles_within_5_percent(median: float, sigma: float) -> None:
    assert worst_error(buckets.DURATION_BUCKETS, median, sigma) < 0.05


def test_semconv_buckets_fail_the_same_rule() -> None:
    """The check has teeth: HTTP semconv's boundaries miss long streams badly."""
    assert worst_error(HTTP_SEMCONV_BUCKETS, 60.0, 1.0) > 0.8


def test_bucket_lists_are_bounded_and_cover_their_range() -> None:
    for bounds, low, high in (
        (buckets.TTFB_BUCKETS, 0.005, 300),
        (buckets.DURATION_BUCKETS, 0.05, 7200),
        (buckets.GAP_BUCKETS, 0.001, 120),
    ):
        assert len(bounds) <= buckets.MAX_BOUNDARIES
        assert bounds[0] == low
        assert bounds[-1] == high
        assert list(bounds) == sorted(set(bounds))


def test_histograms_carry_the_bucket_advice(telemetry: Telemetry) -> None:
    app = StreamingMiddleware(starlette_app(count=2), **telemetry.providers)
    with serve(app) as url:
        httpx.get(url + "/stream/1")
        assert wait_until(lambda: telemetry.points("http.server.stream.duration"))
    (ttfb,) = telemetry.points("http.server.stream.time_to_first_byte")
    assert tuple(ttfb.explicit_bounds) == buckets.TTFB_BUCKETS
    (duration,) = telemetry.points("http.server.stream.duration")
    assert tuple(duration.explicit_bounds) == buckets.DURATION_BUCKETS
    (gap,) = telemetry.points("http.server.stream.max_chunk_gap")
    assert tuple(gap.explicit_bounds) == buckets.GAP_BUCKETS


def test_metric_attributes_are_low_cardinality(telemetry: Telemetry) -> None:
    app = StreamingMiddleware(starlette_app(count=2), **telemetry.providers)
    with serve(app) as url:
        for item in range(3):
            httpx.get(f"{url}/stream/{item}?user=alice{item}")
        httpx.get(url + "/nowhere")
        assert wait_until(
            lambda: sum(telemetry.counts("http.server.stream.terminations").values()) == 4
        )
    allowed = {
        "http.request.method",
        "http.route",
        "http.response.status_code",
        "url.scheme",
        "network.protocol.version",
        "http.stream.termination_reason",
        "http.stream.phase",
    }
    routes = set()
    for name in ("time_to_first_byte", "duration", "terminations", "chunks", "active"):
        for point in telemetry.points(f"http.server.stream.{name}"):
            assert set(point.attributes) <= allowed, point.attributes
            routes.add(point.attributes.get("http.route"))
    assert routes == {"/stream/{id}", None}  # the unmatched route carries no http.route


def test_active_counter_returns_to_zero_for_every_attribute_set(telemetry: Telemetry) -> None:
    # The first token comes late enough that a client closing right after the headers
    # always leaves while waiting, even on a loaded machine.
    app = StreamingMiddleware(
        starlette_app(first_after=0.3, count=50, pace=0.002), **telemetry.providers
    )
    with serve(app) as url:

        def complete(_: int) -> None:
            httpx.get(url + "/stream/1", timeout=10)

        def leave_early(_: int) -> None:
            sock = open_request(url + "/stream/2")
            read_until(sock, b"data: 1\n\n")
            abort(sock)

        def leave_waiting(_: int) -> None:
            sock = open_request(url + "/stream/3")
            read_until(sock, b"\r\n\r\n")
            abort(sock)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(complete, range(8)))
            list(pool.map(leave_early, range(8)))
            list(pool.map(leave_waiting, range(8)))
            list(pool.map(lambda _: httpx.get(url + "/plain"), range(8)))

        def all_ended() -> bool:
            return sum(telemetry.counts("http.server.stream.terminations").values()) == 32

        assert wait_until(all_ended, timeout=15)
    active = telemetry.points("http.server.stream.active")
    assert {point.attributes["http.stream.phase"] for point in active} == {"waiting", "streaming"}
    assert all(point.value == 0 for point in active), [(p.attributes, p.value) for p in active]
    by_reason = telemetry.counts(
        "http.server.stream.terminations", "http.stream.termination_reason", "http.stream.phase"
    )
    assert by_reason == {
        ("completed", "streaming"): 16,
        ("client_disconnect", "streaming"): 8,
        ("client_disconnect", "waiting"): 8,
    }
