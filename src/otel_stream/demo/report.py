"""The demo's report: the exported metrics beside what the clients measured.

What is compared. For every timing the report sets the telemetry's quantile, computed
the way Prometheus' ``histogram_quantile`` does from the exported bucket counts (what a
dashboard shows), beside the **exact** quantile of the clients' own stopwatch readings:
nearest rank, the k-th smallest of n with k = ceil(q * n). The **error** is
``(telemetry - exact) / exact``.

The **tolerance**, and why it is a bound. Three things separate the two numbers.

1. Two clocks. A client starts its stopwatch just before it sends, and reads it when its
   event loop gets to the bytes; the server reads its own clock in its own event loop
   (another thread of the same process). Assume the two readings of any one request
   differ by at most ``epsilon`` (:data:`EPSILON`). Moving every value by at most
   ``epsilon`` moves every order statistic by at most ``epsilon``, so the k-th smallest
   server reading lies within ``epsilon`` of the exact value x.
2. The rank. With n samples, ``histogram_quantile`` looks for rank q * n and takes the
   first bucket whose cumulative count reaches it. Counts are whole numbers, so that is
   the bucket holding the k-th smallest server reading: the rank the exact quantile
   uses, provided both sides counted the same n requests. So the counts must be equal,
   or no quantile row of that timing passes.
3. The bucket. Inside that bucket (L, U] the estimate T is interpolated linearly, at the
   fraction (q * n - before) / c of the bucket, as if its c samples were spread evenly;
   the k-th reading itself may be anywhere in the bucket. With few samples a quantile's
   rank moves by a large step (p99 of 20 samples is the largest), and nothing says where
   the bucket's samples sit: only the bucket's edges bound it.

Together: L - epsilon <= x <= U + epsilon. When the telemetry is high (T >= x) the error
is at most ``(T - L + epsilon) / x``; when it is low, ``(U - T + epsilon) / x``: the
**bucket bound**. It never exceeds ``w + epsilon / x``, where ``w = (U - L) / x`` is the
bucket's width relative to the value, and is usually smaller because the estimate lands
inside the bucket.

The resolution the buckets owe. A bound that grows with the bucket would pass any bucket
list: with buckets 0.5, 5, 50 an estimate 600 % off is inside it. So the same argument
is also run on the default buckets (:mod:`otel_stream.buckets`, ratio about 1.33): the
k-th reading lies in the default bucket holding a value within ``epsilon`` of x, so an
estimate from the default buckets is at most ``U' - x`` above x, where U' is the upper
bound of the default bucket holding x + epsilon, and at most ``x - L'`` below, L' the
lower bound of the one holding x - epsilon: the **default bound**, about
33 % + epsilon / x.

The **tolerance** of a row is the smaller of the two. With the default buckets both are
bounds, so a correct run cannot exceed the tolerance however unlucky it is, and a ✗
means the telemetry got a measurement wrong by more than the clocks explain (a unit
slip, a duration cut short, the time to the response headers taken for the time to
first byte). With coarser buckets the default bound is the standard: ✗ means the
estimate is further from the truth than the default buckets could be, because the
buckets are too coarse at that value. A quantile whose rank falls in the overflow bucket
above the largest bound is always ✗: ``histogram_quantile`` reports it as that bound,
whatever the truth (how every long stream reads as "10 s" with buckets that end at
10 s), so it has no tolerance.

``epsilon`` = 0.1 s. Matched request by request (each request in its own trace), the
client's and the server's readings differed by 2 ms at the median and 48 ms at most
under 16 concurrent clients on a busy two-core machine; 0.1 s leaves room for a loaded
CI machine and is still far below any error that matters. It is absolute, so it weighs
most on the shortest values (a time to first byte of 0.3 s).

The long stream is one request, so it has no quantile: its telemetry is its stream span
(found by the trace id its client sent in ``traceparent``), which is not bucketed, and
its tolerance is ``epsilon`` over its duration. The row also says which duration bucket
it fell in, and is ✗ if that is the overflow bucket (a dashboard could not show it).

Counts are exact: the telemetry must count every request the clients made, by
termination reason and phase.

**Behind the relay** (``otel-stream demo --relay``). The clients call the relay, so the
rows above are the relay's server, held to its clients. Three more time to first byte
rows tell the model from the hop, and none has a client stopwatch of its own; the demo
has two other truths, read on one clock (``perf_counter``: the clients, the relay and
the model run in one process). The fake model's stopwatch notes when each request
reached its endpoint (m0) and when it handed its first body byte to its server (m1);
each request names itself to it with ``x-demo-request-id``. A client notes when it got
its first byte (c1).

* *Upstream, at the relay's client* (``http.client.stream.time_to_first_byte``)
  is held to the model's m1 - m0. The relay's client sends before the model's endpoint
  is called, and reads the first byte after the model sent it: its reading is at least
  m1 - m0, and at most two loopback transits more. Each transit is a hand-over between
  two event loops, bounded by ``epsilon`` as above, so the reading lies in
  [m1 - m0, m1 - m0 + 2 epsilon].
* *The model, at its own server* (the model's ``http.server.stream.time_to_first_byte``)
  is held to the same m1 - m0: its middleware starts before the endpoint and reads its
  clock after the endpoint's; in [m1 - m0, m1 - m0 + epsilon].
* *The hop* (``http.server.stream.hop.time_to_first_byte``: the relay's first byte minus
  its upstream's) is held to c1 - m1, the time from the model's first byte to the
  client's. That time is the hop plus the transit from the model to the relay and the
  one from the relay to its client, so the hop lies in [c1 - m1 - 2 epsilon, c1 - m1]:
  it can fall short of the truth, never exceed it.

The same order-statistic argument then bounds each quantile, with the slack one-sided:
a reading that can only lie above its truth by up to a (and below by up to b) gives the
bucket bound (T - L + a) / x when the estimate is high and (U - T + b) / x when it is
low. ``epsilon`` in the functions below is a number (a = b) or the pair (a, b).

The terminations behind the relay are counted exactly too: every client request is one
upstream call and one model exchange, and each client kind ends them in a known way
(``load.THROUGH_RELAY``): a client that leaves is ``consumer_closed`` on the relay's
call and ``client_disconnect`` at the model, a model error or a cut answer is
``server_disconnect`` on the call (and ``app_error`` or ``incomplete`` at the model),
the relay's deadline closes the call (``consumer_closed``), each in the phase the client
ended in.

Choices made on purpose:

* The tolerance is a worst-case bound, not a confidence interval: a demo run has tens
  of samples per timing, and a check that fails one run in twenty would teach users to
  ignore it. The project's 5 % fidelity target for the default buckets is a different
  claim, about many samples of a smooth distribution, where interpolating inside a
  bucket is accurate; here only the bucket's edges are certain.
* The exact side is the nearest rank, not an interpolated quantile: it is a value a
  client really measured, the same rank ``histogram_quantile`` looks for.
* The long stream is judged by its span, not the histogram: it shares the
  ``completed`` buckets with every other answer, and a span is the telemetry a user
  opens to look at one request.
* Behind the relay, the truths are the demo's own stopwatches (the clients' and the
  fake model's), never another telemetry number: holding the client side's time to
  first byte to the model server's would only show that two instruments agree.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

from otel_stream import buckets, termination
from otel_stream.demo.load import THROUGH_RELAY, UNEXPECTED, ClientResult
from otel_stream.demo.model import Timing

TTFB = "http.server.stream.time_to_first_byte"
TTFT = "http.server.stream.time_to_first_token"
DURATION = "http.server.stream.duration"
TERMINATIONS = "http.server.stream.terminations"
SEND_WAIT = "http.server.stream.send_wait"
HOP = "http.server.stream.hop.time_to_first_byte"
CLIENT_TTFB = "http.client.stream.time_to_first_byte"
CLIENT_TERMINATIONS = "http.client.stream.terminations"

#: A bound on how far one telemetry reading may be from its truth: seconds above it
#: and seconds below it, or one number for both.
Epsilon = float | tuple[float, float]

#: The default buckets of each timing: the resolution a row is held to (module docstring).
DEFAULT_BOUNDS: dict[str, tuple[float, ...]] = {
    TTFB: buckets.TTFB_BUCKETS,
    TTFT: buckets.TTFB_BUCKETS,
    DURATION: buckets.DURATION_BUCKETS,
    HOP: buckets.TTFB_BUCKETS,
    CLIENT_TTFB: buckets.TTFB_BUCKETS,
}
QUANTILES = (0.5, 0.9, 0.99)
#: Largest difference between one request's server-side and client-side timing (s).
EPSILON = 0.1
#: A stream that waited longer than this on ``send`` was held back by its client (s).
BACKPRESSURE_THRESHOLD = 0.1

LEGEND = (
    "telemetry: histogram_quantile over the exported buckets (the long stream: its stream "
    "span). exact: the clients' stopwatch, nearest rank. error: (telemetry - exact) / exact. "
    "tolerance: the largest error correct measurements allow: the estimate's distance to its "
    "bucket's edge on the error's side, plus ε = {epsilon:g} s of clock offset, over exact; "
    "never more than the default buckets allow (about 33 % + ε / exact). ✓: equal counts "
    "and |error| ≤ tolerance; a quantile beyond the largest bucket bound is ✗."
)


@dataclass(frozen=True)
class Estimate:
    """What ``histogram_quantile`` returned, and the bucket it interpolated in."""

    value: float
    lower: float
    upper: float  # math.inf: the overflow bucket; value is then the largest bound

    @property
    def in_overflow(self) -> bool:
        return math.isinf(self.upper)


def estimate_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> Estimate | None:
    """Prometheus' ``histogram_quantile`` with the bucket it used: ``counts`` has one more
    entry (+Inf) than ``bounds``; the first bucket starts at 0; a rank in the +Inf bucket
    returns the largest bound. None when there are no observations."""
    total = sum(counts)
    if total == 0 or not bounds:
        return None
    rank = q * total
    cumulative = 0
    for index, count in enumerate(counts):
        before = cumulative
        cumulative += count
        if cumulative >= rank and count:
            if index == len(bounds):
                return Estimate(bounds[-1], bounds[-1], math.inf)
            upper = bounds[index]
            lower = 0.0 if index == 0 else bounds[index - 1]
            if index == 0 and upper <= 0:
                return Estimate(upper, upper, upper)
            return Estimate(lower + (upper - lower) * (rank - before) / count, lower, upper)
    return Estimate(bounds[-1], bounds[-1], math.inf)


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """Prometheus' ``histogram_quantile`` (see :func:`estimate_quantile`)."""
    estimate = estimate_quantile(q, bounds, counts)
    return None if estimate is None else estimate.value


def exact_quantile(q: float, values: Sequence[float]) -> float | None:
    """Nearest rank: the ceil(q * n)-th smallest value."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def slack(epsilon: Epsilon) -> tuple[float, float]:
    """``epsilon`` as (how far a reading may lie above its truth, how far below)."""
    return (epsilon, epsilon) if isinstance(epsilon, (int, float)) else epsilon


def bucket_bound(estimate: Estimate, exact: float, epsilon: Epsilon = EPSILON) -> float | None:
    """The largest relative error an estimate in its bucket can have when every
    measurement is within ``epsilon`` of the truth (module docstring); None when the
    estimate came from the overflow bucket and nothing bounds it. With ``epsilon`` =
    (above, below), a reading lies at most ``above`` over its truth and ``below`` under."""
    if estimate.in_overflow:
        return None
    above, below = slack(epsilon)
    if estimate.value >= exact:
        allowed = estimate.value - estimate.lower + above
    else:
        allowed = estimate.upper - estimate.value + below
    return allowed / exact if exact > 0 else math.inf


def default_bound(
    high: bool, exact: float, bounds: Sequence[float], epsilon: Epsilon = EPSILON
) -> float:
    """The largest relative error, on the high or the low side, of an estimate computed
    from the buckets ``bounds`` when every measurement is within ``epsilon`` of the
    truth and the exact quantile is ``exact``."""
    if exact <= 0:
        return math.inf
    above, below = slack(epsilon)
    if high:
        index = bisect.bisect_left(bounds, exact + above)
        return (bounds[index] - exact) / exact if index < len(bounds) else math.inf
    index = bisect.bisect_left(bounds, exact - below)
    return (exact - (bounds[index - 1] if index else 0.0)) / exact


def tolerance(
    estimate: Estimate,
    exact: float,
    default_bounds: Sequence[float] | None = None,
    epsilon: Epsilon = EPSILON,
) -> tuple[float | None, str]:
    """The tolerance of one quantile, and which bound set it: ``bucket`` or ``default``
    (the smaller of the two, module docstring); None in the overflow bucket."""
    own = bucket_bound(estimate, exact, epsilon)
    if own is None:
        return None, "overflow"
    if default_bounds is None:
        return own, "bucket"
    reference = default_bound(estimate.value >= exact, exact, default_bounds, epsilon)
    return (own, "bucket") if own <= reference else (reference, "default")


def relative_error(telemetry: float, exact: float) -> float:
    """``(telemetry - exact) / exact`` (infinite when only the exact value is 0)."""
    if exact > 0:
        return (telemetry - exact) / exact
    return 0.0 if telemetry == exact else math.inf


def judge(
    telemetry: float | None, exact: float | None, allowed: float | None
) -> tuple[float | None, bool | None]:
    """The relative error and whether it is within ``allowed`` (None: nothing to judge)."""
    if telemetry is None and exact is None:
        return None, None
    if telemetry is None or exact is None:
        return None, False
    error = relative_error(telemetry, exact)
    return error, allowed is not None and abs(error) <= allowed + 1e-9


@dataclass
class Histogram:
    """Bucket counts of one histogram, summed over attribute sets."""

    bounds: tuple[float, ...]
    counts: list[int]

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(q, self.bounds, self.counts)

    def estimate(self, q: float) -> Estimate | None:
        return estimate_quantile(q, self.bounds, self.counts)

    def count_above(self, threshold: float) -> tuple[float, int]:
        """Observations above the largest bound ≤ ``threshold``, and that bound."""
        index = bisect.bisect_right(self.bounds, threshold)
        if index == 0:
            return 0.0, self.count
        return self.bounds[index - 1], sum(self.counts[index:])

    def add(self, point: HistogramDataPoint) -> None:
        for index, count in enumerate(point.bucket_counts):
            self.counts[index] += count


def bucketed(values: Sequence[float], bounds: Sequence[float]) -> Histogram:
    """``values`` counted in the buckets of ``bounds``, as the SDK counts them."""
    counts = [0] * (len(bounds) + 1)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    return Histogram(tuple(bounds), counts)


@dataclass
class Metrics:
    """The exported metrics the report needs."""

    terminations: dict[tuple[str, str], int] = field(default_factory=dict)
    durations: dict[str, Histogram] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    #: The HTTP client side (a relay's upstream calls), by reason and phase.
    client_terminations: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def total_terminations(self) -> int:
        return sum(self.terminations.values())

    @property
    def duration_bounds(self) -> tuple[float, ...] | None:
        return next((h.bounds for h in self.durations.values()), None)


def read_metrics(reader: InMemoryMetricReader, *, upstream_port: int | None = None) -> Metrics:
    """Collect the in-memory reader once and sum each metric over its attribute sets.
    With ``upstream_port``, the HTTP client metrics count only calls to that port."""
    metrics = Metrics()
    data = reader.get_metrics_data()
    if data is None:
        return metrics
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    if (
                        metric.name.startswith("http.client.")
                        and upstream_port is not None
                        and (point.attributes or {}).get("server.port") != upstream_port
                    ):
                        continue
                    _read_point(metrics, metric.name, point)
    return metrics


def _read_point(metrics: Metrics, name: str, point: Any) -> None:
    attributes = point.attributes or {}
    if name in (TERMINATIONS, CLIENT_TERMINATIONS) and isinstance(point, NumberDataPoint):
        key = (
            str(attributes.get("http.stream.termination_reason")),
            str(attributes.get("http.stream.phase")),
        )
        counts = metrics.terminations if name == TERMINATIONS else metrics.client_terminations
        counts[key] = counts.get(key, 0) + int(point.value)
        return
    if not isinstance(point, HistogramDataPoint):
        return
    if name == DURATION:
        reason = str(attributes.get("http.stream.termination_reason"))
        target = metrics.durations.setdefault(
            reason, Histogram(tuple(point.explicit_bounds), [0] * len(point.bucket_counts))
        )
    elif name in (TTFB, TTFT, SEND_WAIT, HOP, CLIENT_TTFB):
        target = metrics.histograms.setdefault(
            name, Histogram(tuple(point.explicit_bounds), [0] * len(point.bucket_counts))
        )
    else:
        return
    target.add(point)


def _label(q: float) -> str:
    return f"p{round(q * 100)}"


def quantile_row(
    q: float,
    histogram: Histogram | None,
    values: Sequence[float],
    *,
    counts_agree: bool,
    default_bounds: Sequence[float] | None = None,
    epsilon: Epsilon = EPSILON,
) -> dict[str, Any]:
    """One quantile: the telemetry's estimate, the exact value, the error, its tolerance
    (``held_to`` says which bound set it: ``bucket``, ``default`` or ``overflow``)."""
    estimate = histogram.estimate(q) if histogram is not None else None
    exact = exact_quantile(q, values)
    allowed, held_to = None, None
    if estimate is not None and exact is not None:
        allowed, held_to = tolerance(estimate, exact, default_bounds, epsilon)
    error, ok = judge(estimate.value if estimate else None, exact, allowed)
    return {
        "quantile": _label(q),
        "telemetry": estimate.value if estimate else None,
        "exact": exact,
        "error": error,
        "tolerance": allowed,
        "ok": None if ok is None else ok and counts_agree,
        "held_to": held_to,
        "bucket": [estimate.lower, None if estimate.in_overflow else estimate.upper]
        if estimate
        else None,
    }


def timing_row(
    metric: str,
    label: str,
    histogram: Histogram | None,
    values: list[float],
    *,
    epsilon: Epsilon = EPSILON,
) -> dict[str, Any]:
    """A timing's count and quantiles, telemetry beside the clients."""
    telemetry_count = histogram.count if histogram is not None else 0
    counts_agree = telemetry_count == len(values)
    return {
        "metric": metric,
        "label": label,
        "count": {"telemetry": telemetry_count, "clients": len(values), "ok": counts_agree},
        "quantiles": [
            quantile_row(
                q,
                histogram,
                values,
                counts_agree=counts_agree,
                default_bounds=DEFAULT_BOUNDS.get(metric),
                epsilon=epsilon,
            )
            for q in QUANTILES
        ],
        "bounds": list(histogram.bounds) if histogram is not None else None,
    }


def long_stream_row(
    result: ClientResult | None,
    span_seconds: float | None,
    bounds: Sequence[float] | None,
    *,
    epsilon: float = EPSILON,
) -> dict[str, Any] | None:
    """The one long stream: its stream span's duration beside the client's stopwatch."""
    if result is None:
        return None
    exact = result.duration
    allowed = epsilon / exact if exact else None
    error, ok = judge(span_seconds, exact, allowed)
    if ok is None:
        ok = False  # the long stream was sent and neither side timed a stream
    bucket: list[float | None] | None = None
    if bounds and span_seconds is not None:
        index = bisect.bisect_left(bounds, span_seconds)
        lower = 0.0 if index == 0 else bounds[index - 1]
        bucket = [lower, bounds[index] if index < len(bounds) else None]
        if index == len(bounds):
            ok = False  # the histogram reads it as its largest bound
    return {
        "label": "long stream",
        "reason": result.reason,
        "telemetry": span_seconds,
        "exact": exact,
        "error": error,
        "tolerance": allowed,
        "ok": ok,
        "bucket": bucket,
    }


def reconcile(metrics: Metrics) -> dict[str, Any]:
    """How the telemetry's counts add up: every request, those that sent a byte, those
    that streamed (the rest ended before the first byte or sent a single message)."""
    total = metrics.total_terminations
    waiting: dict[str, int] = {}
    single: dict[str, int] = {}
    for (reason, phase), count in metrics.terminations.items():
        if phase == termination.PHASE_WAITING:
            waiting[reason] = waiting.get(reason, 0) + count
        else:
            streamed = metrics.durations[reason].count if reason in metrics.durations else 0
            if count > streamed:
                single[reason] = single.get(reason, 0) + count - streamed
    ttfb = metrics.histograms.get(TTFB)
    return {
        "requests": total,
        "ended_before_first_byte": _ordered(waiting),
        "first_byte": total - sum(waiting.values()),
        "single_message": _ordered(single),
        "streamed": sum(h.count for h in metrics.durations.values()),
        "time_to_first_byte_count": ttfb.count if ttfb else 0,
    }


def _ordered(counts: dict[str, int]) -> dict[str, int]:
    return {reason: counts[reason] for reason in sorted(counts, key=_reason_order)}


def build_report(
    metrics: Metrics,
    results: Iterable[ClientResult],
    *,
    run: dict[str, Any],
    first_token_supported: bool,
    long_stream_seconds: float | None = None,
    epsilon: float = EPSILON,
    relay: RelayData | None = None,
) -> dict[str, Any]:
    """The report as plain data (what ``--json`` prints). ``long_stream_seconds`` is the
    duration of the long stream's span, when the telemetry has one. With ``relay`` the
    clients talked to the relay (``metrics`` are the relay's), and the report gains the
    rows that tell the model from the hop."""
    results = list(results)
    clients: dict[tuple[str, str], int] = {}
    for result in results:
        key = (result.reason, result.phase)
        clients[key] = clients.get(key, 0) + 1
    keys = sorted(
        set(metrics.terminations) | set(clients),
        key=lambda key: (_reason_order(key[0]), key[1] != termination.PHASE_WAITING),
    )
    terminations = [
        {
            "reason": reason,
            "phase": phase,
            "telemetry": metrics.terminations.get((reason, phase), 0),
            "clients": clients.get((reason, phase), 0),
        }
        for reason, phase in keys
    ]
    for row in terminations:
        row["ok"] = row["telemetry"] == row["clients"]

    timings = [
        timing_row(
            TTFB,
            "time to first byte",
            metrics.histograms.get(TTFB),
            [r.first_byte for r in results if r.first_byte is not None],
            epsilon=epsilon,
        ),
        timing_row(
            TTFT,
            "time to first token",
            metrics.histograms.get(TTFT),
            [r.first_token for r in results if r.first_token is not None],
            epsilon=epsilon,
        ),
    ]
    if not first_token_supported:
        timings[1]["count"]["ok"] = None
        for row in timings[1]["quantiles"]:
            row["ok"] = None
    reasons = sorted(
        set(metrics.durations) | {r.reason for r in results if r.duration is not None},
        key=_reason_order,
    )
    for reason in reasons:
        durations = [d for r in results if r.reason == reason and (d := r.duration) is not None]
        timings.append(
            timing_row(
                DURATION,
                f"stream duration, {reason}",
                metrics.durations.get(reason),
                durations,
                epsilon=epsilon,
            )
        )
    long_result = next((r for r in results if r.kind == "long_stream"), None)
    long_stream = long_stream_row(
        long_result, long_stream_seconds, metrics.duration_bounds, epsilon=epsilon
    )

    send_wait = metrics.histograms.get(SEND_WAIT)
    threshold, waited = (
        send_wait.count_above(BACKPRESSURE_THRESHOLD) if send_wait else (BACKPRESSURE_THRESHOLD, 0)
    )
    report = {
        **run,
        "epsilon": epsilon,
        "first_token_supported": first_token_supported,
        "counts": reconcile(metrics),
        "terminations": terminations,
        "timings": timings,
        "long_stream": long_stream,
        "backpressure": {
            "threshold": threshold,
            "streams_held_back": waited,
            "clients_stalled": sum(1 for r in results if r.kind == "slow_reader"),
        },
        "unexpected": [
            {"kind": r.kind, "observation": r.observation, "status": r.status, "error": r.error}
            for r in results
            if r.reason == UNEXPECTED
        ],
        "relay": relay_section(metrics, relay, results, epsilon=epsilon) if relay else None,
    }
    report["failed"] = failures(report)
    report["ok"] = not report["failed"]
    return report


@dataclass
class RelayData:
    """What a run through the relay adds: the model's own server metrics, the model's
    stopwatch (request id -> timing) and the URL the relay called."""

    model_metrics: Metrics
    stopwatch: dict[int, Timing]
    upstream: str


#: The layers behind the relay, in the report's order, and how the report names them.
UPSTREAM_CALL = "upstream_call"
MODEL_SERVER = "model_server"
LAYER_LABELS = {UPSTREAM_CALL: "relay's upstream call", MODEL_SERVER: "model's server"}


def hop_truths(results: Sequence[ClientResult], stopwatch: dict[int, Timing]) -> list[float]:
    """For each streamed answer that reached its client: the client's first byte minus
    the model's first byte, both on the process's ``perf_counter`` clock."""
    values = []
    for result in results:
        if not result.streamed or result.first_byte is None or result.request_id is None:
            continue
        timing = stopwatch.get(result.request_id)
        if timing is None or timing.first_byte_at is None:
            continue
        values.append(result.sent_at + result.first_byte - timing.first_byte_at)
    return values


def model_truths(stopwatch: dict[int, Timing]) -> list[float]:
    """The model's own time to first byte of each request: arrived to first byte sent."""
    return [
        t.first_byte_at - t.received_at for t in stopwatch.values() if t.first_byte_at is not None
    ]


def relay_terminations(
    metrics: Metrics, relay: RelayData, results: Sequence[ClientResult]
) -> list[dict[str, Any]]:
    """How the requests ended behind the relay, by layer, beside what the clients did:
    each client whose request ended as its kind should (``load.THROUGH_RELAY``) expects
    one upstream call and one model exchange to end that way, in the client's phase."""
    expected: dict[str, dict[tuple[str, str], int]] = {UPSTREAM_CALL: {}, MODEL_SERVER: {}}
    for result in results:
        if result.reason == UNEXPECTED or result.kind not in THROUGH_RELAY:
            continue
        upstream_reason, model_reason = THROUGH_RELAY[result.kind]
        for layer, reason in ((UPSTREAM_CALL, upstream_reason), (MODEL_SERVER, model_reason)):
            key = (reason, result.phase)
            expected[layer][key] = expected[layer].get(key, 0) + 1
    rows = []
    for layer, telemetry, metric in (
        (UPSTREAM_CALL, metrics.client_terminations, CLIENT_TERMINATIONS),
        (MODEL_SERVER, relay.model_metrics.terminations, TERMINATIONS),
    ):
        keys = sorted(
            set(telemetry) | set(expected[layer]),
            key=lambda key: (_reason_order(key[0]), key[1] != termination.PHASE_WAITING),
        )
        for reason, phase in keys:
            row = {
                "layer": layer,
                "metric": metric,
                "reason": reason,
                "phase": phase,
                "telemetry": telemetry.get((reason, phase), 0),
                "clients": expected[layer].get((reason, phase), 0),
            }
            row["ok"] = row["telemetry"] == row["clients"]
            rows.append(row)
    return rows


def relay_section(
    metrics: Metrics,
    relay: RelayData,
    results: Sequence[ClientResult],
    *,
    epsilon: float = EPSILON,
) -> dict[str, Any]:
    """The rows that tell the model from the hop, each held to a truth the demo has
    (module docstring, "Behind the relay")."""
    model_values = model_truths(relay.stopwatch)
    timings = [
        timing_row(
            CLIENT_TTFB,
            "upstream, at the relay's client",
            metrics.histograms.get(CLIENT_TTFB),
            model_values,
            epsilon=(2 * epsilon, 0.0),
        ),
        timing_row(
            TTFB,
            "model, at its own server",
            relay.model_metrics.histograms.get(TTFB),
            model_values,
            epsilon=(epsilon, 0.0),
        ),
        timing_row(
            HOP,
            "hop: the relay's own part",
            metrics.histograms.get(HOP),
            hop_truths(results, relay.stopwatch),
            epsilon=(0.0, 2 * epsilon),
        ),
    ]
    return {
        "upstream": relay.upstream,
        "terminations": relay_terminations(metrics, relay, results),
        "timings": timings,
    }


def failures(report: dict[str, Any]) -> list[str]:
    """Every mark of ``report`` that is ✗, in words."""
    failed = [
        f"terminations {row['reason']}/{row['phase']}: telemetry {row['telemetry']}, "
        f"clients {row['clients']}"
        for row in report["terminations"]
        if row["ok"] is False
    ]
    relay = report.get("relay")
    failed.extend(
        f"terminations at the {LAYER_LABELS[row['layer']]} {row['reason']}/{row['phase']}: "
        f"telemetry "
        f"{row['telemetry']}, clients {row['clients']}"
        for row in (relay["terminations"] if relay else ())
        if row["ok"] is False
    )
    for timing in [*report["timings"], *(relay["timings"] if relay else ())]:
        count = timing["count"]
        if count["ok"] is False:
            failed.append(
                f"{timing['label']}: n = {count['telemetry']} (telemetry), "
                f"{count['clients']} (clients)"
            )
        failed.extend(
            f"{timing['label']} {row['quantile']}: {_verdict(row)}"
            for row in timing["quantiles"]
            if row["ok"] is False and count["ok"] is not False
        )
    long_stream = report.get("long_stream")
    if long_stream is not None and long_stream["ok"] is False:
        failed.append(f"long stream: {_verdict(long_stream)}")
    return failed


def _verdict(row: dict[str, Any]) -> str:
    telemetry, exact = row["telemetry"], row["exact"]
    if telemetry is None or exact is None:
        return f"telemetry {_seconds(telemetry)}, exact {_seconds(exact)}"
    text = f"{_seconds(telemetry)} (telemetry) vs {_seconds(exact)} (exact), error "
    text += _percent(row["error"])
    bucket = row.get("bucket")
    if bucket is not None and bucket[1] is None:
        return text + f", beyond the largest bucket bound ({bucket[0]:g} s)"
    text += f" > tolerance {_percent(row['tolerance'], signed=False)}"
    if row.get("held_to") == "default" and bucket is not None:
        text += (
            f" (its bucket {bucket[0]:g} to {bucket[1]:g} s is coarser than the default buckets"
            " allow there)"
        )
    return text


def _reason_order(reason: str) -> int:
    order = (*termination.REASONS, UNEXPECTED)
    return order.index(reason) if reason in order else len(order)


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def _percent(value: float | None, *, signed: bool = True) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "∞"
    text = f"{value * 100:+.1f} %" if signed else f"{value * 100:.1f} %"
    return text


def _mark(value: bool | None) -> str:
    return {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]—[/]"}[value]


def _tolerance_cell(row: dict[str, Any]) -> str:
    bucket = row.get("bucket")
    if bucket is not None and bucket[1] is None:
        return f"> {bucket[0]:g} s"
    return _percent(row["tolerance"], signed=False)


def _breakdown(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in counts.items())


def counts_line(counts: dict[str, Any]) -> str:
    """One sentence that makes the counts of the two tables add up."""
    requests, first_byte, streamed = counts["requests"], counts["first_byte"], counts["streamed"]
    waiting, single = counts["ended_before_first_byte"], counts["single_message"]
    text = f"Counts: {requests} requests; "
    if waiting:
        text += f"{requests - first_byte} ended before the first byte ({_breakdown(waiting)}), so "
    text += f"{first_byte} have a time to first byte; "
    if single:
        text += (
            f"{first_byte - streamed} of those answered in a single message, not streamed "
            f"({_breakdown(single)}), so "
        )
    text += f"{streamed} have a stream duration (the sum of the stream duration rows' n)."
    return text


def _timings_table(title: str, timing_rows: Sequence[dict[str, Any]]) -> Any:
    """A table of timing sections: one line per quantile."""
    from rich import box
    from rich.table import Table

    timings = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    timings.add_column("")
    timings.add_column("")
    timings.add_column("n", justify="right")
    timings.add_column("telemetry", justify="right")
    timings.add_column("exact", justify="right")
    timings.add_column("error", justify="right")
    timings.add_column("tolerance", justify="right")
    timings.add_column("", justify="center")
    for timing in timing_rows:
        count = timing["count"]
        n = (
            str(count["clients"])
            if count["ok"] is not False
            else f"[red]{count['telemetry']}≠{count['clients']}[/]"
        )
        rows = timing["quantiles"]
        for index, row in enumerate(rows):
            timings.add_row(
                timing["label"] if index == 0 else "",
                row["quantile"],
                n if index == 0 else "",
                _seconds(row["telemetry"]),
                _seconds(row["exact"]),
                _percent(row["error"]),
                _tolerance_cell(row),
                _mark(row["ok"]),
                end_section=index == len(rows) - 1,
            )
    return timings


def _render_relay(report: dict[str, Any], relay: dict[str, Any], console: Any) -> None:
    from rich import box
    from rich.table import Table

    console.print()
    table = Table(
        title="Behind the relay: how its upstream calls (http.client.stream.terminations) "
        "and the model's exchanges (the model's http.server.stream.terminations) ended",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    table.add_column("")
    table.add_column("termination reason")
    table.add_column("phase at the end")
    table.add_column("telemetry", justify="right")
    table.add_column("clients", justify="right")
    table.add_column("", justify="center")
    previous = None
    for row in relay["terminations"]:
        table.add_row(
            LAYER_LABELS[row["layer"]] if row["layer"] != previous else "",
            row["reason"],
            row["phase"],
            str(row["telemetry"]),
            str(row["clients"]),
            _mark(row["ok"]),
        )
        previous = row["layer"]
    console.print(table)
    first_byte = [t for t in report["timings"] if t["metric"] == TTFB][:1]
    relay_row = [{**row, "label": "relay, as its clients waited"} for row in first_byte]
    console.print(
        _timings_table(
            "Is it the model or the hop? Time to first byte in seconds",
            [*relay_row, *relay["timings"]],
        )
    )
    console.print("[dim]" + RELAY_LEGEND + "[/]")


RELAY_LEGEND = (
    "Is it the model or the hop? The relay's time to first byte is held to its clients, "
    "as above. upstream and model: exact is the model's own stopwatch (request arrived to "
    "first byte sent); the relay's client sends before the model sees the request and "
    "reads after the model sent, so its reading may exceed that by two loopback "
    "transits (≤ 2ε), never fall below it; the model's server, by its own event loop's "
    "delay (≤ ε). hop: exact is a client's first byte minus the model's first byte "
    "(one clock: the same process); the relay's own part is that minus the two transits, "
    "so it may fall below it by up to 2ε, never exceed it."
)


def render(report: dict[str, Any], console: Any) -> None:
    """Print ``report`` on a rich console."""
    from rich import box
    from rich.table import Table

    relay = report.get("relay")
    console.print()
    served = (
        f"the relay at {report['url']} (uvicorn + StreamingMiddleware; its calls to the model "
        f"at {relay['upstream']} recorded by StreamingClientInstrumentor)"
        if relay
        else f"{report['url']} (uvicorn + StreamingMiddleware)"
    )
    console.print(
        f"[bold]otel-stream demo[/]: {report['requests']} requests in "
        f"{report['wall_seconds']:.1f} s, up to {report['concurrency']} at a time, "
        f"against {served}."
    )

    where = " at the relay" if relay else ""
    table = Table(
        title=f"How the requests ended{where} (http.server.stream.terminations)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    table.add_column("termination reason")
    table.add_column("phase at the end")
    table.add_column("telemetry", justify="right")
    table.add_column("clients", justify="right")
    table.add_column("", justify="center")
    for row in report["terminations"]:
        table.add_row(
            row["reason"],
            row["phase"],
            str(row["telemetry"]),
            str(row["clients"]),
            _mark(row["ok"]),
        )
    console.print(table)
    console.print(counts_line(report["counts"]))
    console.print()

    timings = _timings_table("Timings in seconds", report["timings"])
    long_stream = report.get("long_stream")
    if long_stream is not None:
        timings.add_row(
            "long stream (its stream span)",
            "",
            "1",
            _seconds(long_stream["telemetry"]),
            _seconds(long_stream["exact"]),
            _percent(long_stream["error"]),
            _tolerance_cell(long_stream),
            _mark(long_stream["ok"]),
        )
    console.print(timings)
    console.print("[dim]" + LEGEND.format(epsilon=report["epsilon"]) + "[/]")
    if relay:
        _render_relay(report, relay, console)

    backpressure = report["backpressure"]
    console.print(
        f"Backpressure: {backpressure['streams_held_back']} streams waited more than "
        f"{backpressure['threshold']:g} s on send (http.server.stream.send_wait); "
        f"{backpressure['clients_stalled']} clients stalled their reading."
    )
    if not report["first_token_supported"]:
        console.print(
            "[dim]Time to first token: not judged, payload reading is off "
            "(OTEL_STREAM_PAYLOADS=false).[/]"
        )
    for item in report["unexpected"]:
        console.print(
            f"[yellow]unexpected:[/] a {item['kind']} request ended as {item['observation']}"
            + (f" ({item['error']})" if item["error"] else "")
        )
    for line in report.get("exporters", []):
        console.print(f"[dim]Also exported: {line}.[/]")
    if report["ok"]:
        console.print("[green]✓ every mark passed.[/]")
    else:
        console.print(f"[red]✗ {len(report['failed'])} marks failed:[/]")
        for line in report["failed"]:
            console.print(f"[red]  ✗ {line}[/]")
