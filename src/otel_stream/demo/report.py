"""The demo's report: the exported metrics beside what the clients measured.

Quantiles of the telemetry are computed the way Prometheus' ``histogram_quantile``
does, from bucket counts with linear interpolation inside the bucket, because that is
what a dashboard shows. The clients' quantiles are exact (nearest rank) over their own
stopwatch readings.

When does the telemetry "agree"? If every server-side measurement is within ``epsilon``
of the client's measurement of the same request, the k-th smallest server value is
within ``epsilon`` of the k-th smallest client value, and ``histogram_quantile`` returns
a point of the bucket that holds the k-th smallest server value (k = ceil(q * n)). So
the telemetry's quantile must lie between the lower bound of the bucket holding
``client - epsilon`` and the upper bound of the bucket holding ``client + epsilon``.
Counts must be equal. ``epsilon`` covers the two clocks' offsets on loopback: the client
starts its stopwatch before connecting and reads after its event loop wakes, the server
runs its own loop in another thread of the same process.
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

from otel_stream import termination
from otel_stream.demo.load import UNEXPECTED, ClientResult

TTFB = "http.server.stream.time_to_first_byte"
TTFT = "http.server.stream.time_to_first_token"
DURATION = "http.server.stream.duration"
TERMINATIONS = "http.server.stream.terminations"
SEND_WAIT = "http.server.stream.send_wait"

QUANTILES = (0.5, 0.9, 0.99)
#: Allowed difference between one request's server-side and client-side timing (s).
EPSILON = 0.1
#: A stream that waited longer than this on ``send`` was held back by its client (s).
BACKPRESSURE_THRESHOLD = 0.1


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """Prometheus' ``histogram_quantile``: ``counts`` has one more entry (+Inf) than
    ``bounds``; the first bucket starts at 0; a rank in the +Inf bucket returns the
    largest bound. None when there are no observations."""
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
                return bounds[-1]
            upper = bounds[index]
            if index == 0 and upper <= 0:
                return upper
            lower = 0.0 if index == 0 else bounds[index - 1]
            return lower + (upper - lower) * (rank - before) / count
    return bounds[-1]


def exact_quantile(q: float, values: Sequence[float]) -> float | None:
    """Nearest rank: the ceil(q * n)-th smallest value."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def agreement_range(
    value: float, bounds: Sequence[float], epsilon: float = EPSILON
) -> tuple[float, float]:
    """Where ``histogram_quantile`` may land when the true quantile is ``value`` ± epsilon."""
    low_index = bisect.bisect_left(bounds, value - epsilon)
    high_index = bisect.bisect_left(bounds, value + epsilon)
    lower = 0.0 if low_index == 0 else bounds[low_index - 1]
    upper = bounds[high_index] if high_index < len(bounds) else math.inf
    return lower, upper


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

    def count_above(self, threshold: float) -> tuple[float, int]:
        """Observations above the largest bound ≤ ``threshold``, and that bound."""
        index = bisect.bisect_right(self.bounds, threshold)
        if index == 0:
            return 0.0, self.count
        return self.bounds[index - 1], sum(self.counts[index:])

    def add(self, point: HistogramDataPoint) -> None:
        for index, count in enumerate(point.bucket_counts):
            self.counts[index] += count


@dataclass
class Metrics:
    """The exported metrics the report needs."""

    terminations: dict[tuple[str, str], int] = field(default_factory=dict)
    durations: dict[str, Histogram] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)

    @property
    def total_terminations(self) -> int:
        return sum(self.terminations.values())


def read_metrics(reader: InMemoryMetricReader) -> Metrics:
    """Collect the in-memory reader once and sum each metric over its attribute sets."""
    metrics = Metrics()
    data = reader.get_metrics_data()
    if data is None:
        return metrics
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    _read_point(metrics, metric.name, point)
    return metrics


def _read_point(metrics: Metrics, name: str, point: Any) -> None:
    attributes = point.attributes or {}
    if name == TERMINATIONS and isinstance(point, NumberDataPoint):
        key = (
            str(attributes.get("http.stream.termination_reason")),
            str(attributes.get("http.stream.phase")),
        )
        metrics.terminations[key] = metrics.terminations.get(key, 0) + int(point.value)
        return
    if not isinstance(point, HistogramDataPoint):
        return
    if name == DURATION:
        reason = str(attributes.get("http.stream.termination_reason"))
        target = metrics.durations.setdefault(
            reason, Histogram(tuple(point.explicit_bounds), [0] * len(point.bucket_counts))
        )
    elif name in (TTFB, TTFT, SEND_WAIT):
        target = metrics.histograms.setdefault(
            name, Histogram(tuple(point.explicit_bounds), [0] * len(point.bucket_counts))
        )
    else:
        return
    target.add(point)


def _quantiles(values: Sequence[float]) -> dict[str, Any]:
    return {"count": len(values), **{_label(q): exact_quantile(q, values) for q in QUANTILES}}


def _histogram_quantiles(histogram: Histogram | None) -> dict[str, Any]:
    if histogram is None:
        return {"count": 0, **{_label(q): None for q in QUANTILES}}
    return {"count": histogram.count, **{_label(q): histogram.quantile(q) for q in QUANTILES}}


def _label(q: float) -> str:
    return f"p{round(q * 100)}"


def bucketed(values: Sequence[float], bounds: Sequence[float]) -> Histogram:
    """``values`` counted in the buckets of ``bounds``, as the SDK would count them."""
    counts = [0] * (len(bounds) + 1)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    return Histogram(tuple(bounds), counts)


def _timing_row(
    metric: str, label: str, histogram: Histogram | None, values: list[float]
) -> dict[str, Any]:
    telemetry = _histogram_quantiles(histogram)
    clients = _quantiles(values)
    clients_bucketed = (
        _histogram_quantiles(bucketed(values, histogram.bounds)) if histogram is not None else None
    )
    agrees: dict[str, bool | None] = {"count": telemetry["count"] == clients["count"]}
    for q in QUANTILES:
        key = _label(q)
        server_value, client_value = telemetry[key], clients[key]
        if server_value is None or client_value is None or histogram is None:
            agrees[key] = None if server_value is None and client_value is None else False
            continue
        lower, upper = agreement_range(client_value, histogram.bounds)
        agrees[key] = lower - 1e-9 <= server_value <= upper + 1e-9
    return {
        "metric": metric,
        "label": label,
        "telemetry": telemetry,
        "clients": clients,
        "clients_bucketed": clients_bucketed,
        "agrees": agrees,
        "bounds": list(histogram.bounds) if histogram is not None else None,
    }


def build_report(
    metrics: Metrics,
    results: Iterable[ClientResult],
    *,
    run: dict[str, Any],
    first_token_supported: bool,
) -> dict[str, Any]:
    """The report as plain data (what ``--json`` prints)."""
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
        row["agrees"] = row["telemetry"] == row["clients"]

    timings = [
        _timing_row(
            TTFB,
            "time to first byte",
            metrics.histograms.get(TTFB),
            [r.first_byte for r in results if r.first_byte is not None],
        ),
        _timing_row(
            TTFT,
            "time to first token",
            metrics.histograms.get(TTFT),
            [r.first_token for r in results if r.first_token is not None],
        ),
    ]
    if not first_token_supported:
        timings[1]["agrees"] = dict.fromkeys(timings[1]["agrees"])
    reasons = sorted(
        set(metrics.durations) | {r.reason for r in results if r.duration is not None},
        key=_reason_order,
    )
    for reason in reasons:
        durations = [d for r in results if r.reason == reason and (d := r.duration) is not None]
        timings.append(
            _timing_row(
                DURATION, f"stream duration, {reason}", metrics.durations.get(reason), durations
            )
        )

    send_wait = metrics.histograms.get(SEND_WAIT)
    threshold, waited = (
        send_wait.count_above(BACKPRESSURE_THRESHOLD) if send_wait else (BACKPRESSURE_THRESHOLD, 0)
    )
    return {
        **run,
        "epsilon": EPSILON,
        "first_token_supported": first_token_supported,
        "terminations": terminations,
        "timings": timings,
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
    }


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


def _delta(server: float | None, client: float | None) -> str:
    if server is None or client is None:
        return ""
    difference = server - client
    return f"{difference:+.3f}" if abs(difference) < 1 else f"{difference:+.2f}"


def _mark(value: bool | None) -> str:
    return {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]—[/]"}[value]


def render(report: dict[str, Any], console: Any) -> None:
    """Print ``report`` on a rich console."""
    from rich import box
    from rich.table import Table

    console.print()
    console.print(
        f"[bold]otel-stream demo[/]: {report['requests']} requests in "
        f"{report['wall_seconds']:.1f} s, up to {report['concurrency']} at a time, "
        f"against {report['url']} (uvicorn + StreamingMiddleware)."
    )
    console.print(
        "[dim]telemetry: the exported OpenTelemetry metrics (in-memory reader). "
        "clients: the httpx clients' own stopwatch.[/]"
    )

    table = Table(
        title="How the requests ended (http.server.stream.terminations)",
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
            _mark(row["agrees"]),
        )
    console.print(table)

    timings = Table(
        title="Timings in seconds",
        caption="telemetry: histogram_quantile over the exported buckets. clients: the same "
        "quantile of the clients' measurements put in the same buckets (Δ is the difference), "
        "and exact.",
        box=box.SIMPLE_HEAD,
        title_justify="left",
        caption_justify="left",
    )
    timings.add_column("")
    timings.add_column("")
    timings.add_column("n", justify="right")
    timings.add_column("telemetry", justify="right")
    timings.add_column("clients", justify="right")
    timings.add_column("Δ", justify="right")
    timings.add_column("exact", justify="right", style="dim")
    timings.add_column("", justify="center")
    for row in report["timings"]:
        server, client, agrees = row["telemetry"], row["clients"], row["agrees"]
        same_buckets = row["clients_bucketed"] or {}
        count = (
            str(client["count"])
            if server["count"] == client["count"]
            else f"{server['count']}/{client['count']}"
        )
        for index, q in enumerate(QUANTILES):
            key = _label(q)
            timings.add_row(
                row["label"] if index == 0 else "",
                key,
                count if index == 0 else "",
                _seconds(server[key]),
                _seconds(same_buckets.get(key)),
                _delta(server[key], same_buckets.get(key)),
                _seconds(client[key]),
                _mark(agrees[key] if server["count"] or client["count"] else None),
                end_section=index == len(QUANTILES) - 1,
            )
    console.print(timings)

    backpressure = report["backpressure"]
    console.print(
        f"Backpressure: {backpressure['streams_held_back']} streams waited more than "
        f"{backpressure['threshold']:g} s on send (http.server.stream.send_wait); "
        f"{backpressure['clients_stalled']} clients stalled their reading."
    )
    console.print(
        "[dim]Time to first byte and first token are recorded when they happen, before the "
        "end is known, so they carry no termination reason. ✓: the counts are equal, and the "
        "telemetry's quantile lies in the buckets around the clients' exact value "
        f"± {report['epsilon']:g} s (bucket resolution, plus the offset between the clients' "
        "and the server's clocks).[/]"
    )
    if not report["first_token_supported"]:
        console.print(
            "[dim]Time to first token: no http.server.stream.time_to_first_token data; this "
            "build of otel_stream does not read SSE payloads yet.[/]"
        )
    for item in report["unexpected"]:
        console.print(
            f"[yellow]unexpected:[/] a {item['kind']} request ended as {item['observation']}"
            + (f" ({item['error']})" if item["error"] else "")
        )
    for line in report.get("exporters", []):
        console.print(f"[dim]Also exported: {line}.[/]")
