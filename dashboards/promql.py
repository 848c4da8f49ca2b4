"""PromQL building blocks of the dashboards: the metric names, the variable filter, quantiles.

Every query of every panel is built here, so the rules the tests check hold by
construction: only the Prometheus names of otel-stream's metrics (docs/metrics.md),
every selector filtered by the ``job``, ``instance`` and ``route`` variables, every
``rate()``/``increase()`` over ``$__rate_interval``.
"""

from __future__ import annotations

from typing import Final

#: The Prometheus names of otel-stream's metrics (docs/metrics.md), as
#: opentelemetry-exporter-prometheus and the Collector's Prometheus exporter write them,
#: with their Prometheus type.
METRICS: Final[dict[str, str]] = {
    "http_server_stream_time_to_first_byte_seconds": "histogram",
    "http_server_stream_duration_seconds": "histogram",
    "http_server_stream_active": "gauge",
    "http_server_stream_terminations_total": "counter",
    "http_server_stream_chunks": "histogram",
    "http_server_stream_body_size_bytes": "histogram",
    "http_server_stream_max_chunk_gap_seconds": "histogram",
    "http_server_stream_send_wait_seconds": "histogram",
    "http_server_stream_hop_time_to_first_byte_seconds": "histogram",
    "http_server_stream_time_to_first_token_seconds": "histogram",
    "http_server_stream_time_per_output_token_seconds": "histogram",
}

#: The metrics of the hop row: the client side's time to first byte and first token and
#: how its streams ended, per upstream host, and the time a relaying server added to its
#: upstream's first byte (the one of them the server side records, also in METRICS).
#: The tests record them by their instrument names with the SDK and the Prometheus
#: exporter.
HOP_METRICS: Final[dict[str, str]] = {
    "http_client_stream_time_to_first_byte_seconds": "histogram",
    "http_client_stream_time_to_first_token_seconds": "histogram",
    "http_client_stream_terminations_total": "counter",
    "http_server_stream_hop_time_to_first_byte_seconds": "histogram",
}

#: Every metric a query may select.
ALL_METRICS: Final[dict[str, str]] = {**METRICS, **HOP_METRICS}

#: The series a classic (explicit-bucket) histogram is exposed as.
HISTOGRAM_SUFFIXES: Final = ("_bucket", "_sum", "_count")

#: Label names the queries may use: the metrics' attributes with dots made underscores,
#: Prometheus' target labels, and ``le``.
LABELS: Final = frozenset(
    {
        "job",
        "instance",
        "le",
        "http_request_method",
        "http_route",
        "http_response_status_code",
        "http_stream_termination_reason",
        "http_stream_phase",
        "gen_ai_response_finish_reason",
        "url_scheme",
        "network_protocol_version",
        "server_address",
        "server_port",
    }
)

TTFB: Final = "http_server_stream_time_to_first_byte_seconds"
DURATION: Final = "http_server_stream_duration_seconds"
ACTIVE: Final = "http_server_stream_active"
TERMINATIONS: Final = "http_server_stream_terminations_total"
CHUNKS: Final = "http_server_stream_chunks"
BODY_SIZE: Final = "http_server_stream_body_size_bytes"
MAX_CHUNK_GAP: Final = "http_server_stream_max_chunk_gap_seconds"
SEND_WAIT: Final = "http_server_stream_send_wait_seconds"
TTFT: Final = "http_server_stream_time_to_first_token_seconds"
TPOT: Final = "http_server_stream_time_per_output_token_seconds"
CLIENT_TTFB: Final = "http_client_stream_time_to_first_byte_seconds"
CLIENT_TTFT: Final = "http_client_stream_time_to_first_token_seconds"
CLIENT_TERMINATIONS: Final = "http_client_stream_terminations_total"
HOP_TTFB: Final = "http_server_stream_hop_time_to_first_byte_seconds"

#: The filter every selector carries. ``$route`` matches the empty route too when "All"
#: is picked (its all-value is ``.*``): requests still waiting for their first byte and
#: unmatched paths carry no ``http_route``.
FILTER: Final = 'job=~"$job", instance=~"$instance", http_route=~"$route"'
#: The filter of the client side's metrics: they carry the upstream's ``server.address``
#: and ``server.port``, never a route (a route filter would drop every one of them).
CLIENT_FILTER: Final = 'job=~"$job", instance=~"$instance"'
RATE_INTERVAL: Final = "$__rate_interval"

#: The series the variables read their values from: every request ends in exactly one
#: termination, so every job, instance and route that served a request is there.
VARIABLE_SOURCE: Final = TERMINATIONS


def base_name(metric: str) -> str:
    """The metric a series belongs to: ``metric`` without a histogram's series suffix."""
    for suffix in HISTOGRAM_SUFFIXES:
        if metric.endswith(suffix) and metric[: -len(suffix)] in ALL_METRICS:
            return metric[: -len(suffix)]
    return metric


def filter_of(metric: str) -> str:
    """The variable filter of ``metric``'s selectors: the client side's has no route."""
    return CLIENT_FILTER if base_name(metric).startswith("http_client_") else FILTER


def series(metric: str, *matchers: str) -> str:
    """A selector of ``metric`` (a name of :data:`ALL_METRICS`, or a histogram's series)."""
    if base_name(metric) not in ALL_METRICS:
        raise ValueError(f"{metric} is not one of otel-stream's metrics (docs/metrics.md)")
    return f"{metric}{{{', '.join((filter_of(metric), *matchers))}}}"


def rate(metric: str, *matchers: str) -> str:
    return f"rate({series(metric, *matchers)}[{RATE_INTERVAL}])"


def increase(metric: str, *matchers: str) -> str:
    return f"increase({series(metric, *matchers)}[{RATE_INTERVAL}])"


def by(labels: tuple[str, ...]) -> str:
    """`` by (a, b) `` before an aggregation's parenthesis, or nothing."""
    return f" by ({', '.join(labels)}) " if labels else ""


def sum_rate(metric: str, *matchers: str, labels: tuple[str, ...] = ()) -> str:
    return f"sum{by(labels)}({rate(metric, *matchers)})"


def quantile(q: float, histogram: str, *matchers: str, labels: tuple[str, ...] = ()) -> str:
    """The ``q`` quantile of a classic histogram over the last ``$__rate_interval``."""
    return (
        f"histogram_quantile({q}, sum{by(('le', *labels))}"
        f"({rate(histogram + '_bucket', *matchers)}))"
    )


def heatmap(histogram: str, *matchers: str) -> str:
    """Per-bucket counts of a classic histogram, for a heatmap panel (format: heatmap)."""
    return f"sum by (le) ({increase(histogram + '_bucket', *matchers)})"


def mean(histogram: str, *matchers: str, labels: tuple[str, ...] = ()) -> str:
    """The mean of a histogram's observations over the last ``$__rate_interval``."""
    return (
        f"{sum_rate(histogram + '_sum', *matchers, labels=labels)}"
        f" / {sum_rate(histogram + '_count', *matchers, labels=labels)}"
    )


def share(part: tuple[str, ...], metric: str = TERMINATIONS, labels: tuple[str, ...] = ()) -> str:
    """The share of ``metric``'s rate whose series match ``part``; 0, not "no data", when
    nothing matches but the metric has traffic."""
    whole = sum_rate(metric, labels=labels)
    return f"({sum_rate(metric, *part, labels=labels)} or 0 * {whole}) / {whole}"
