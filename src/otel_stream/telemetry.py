"""Instruments, attribute names and the log-once guard for telemetry failures."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Final

from opentelemetry import metrics, trace
from opentelemetry.metrics import (
    CallbackOptions,
    Counter,
    Histogram,
    Meter,
    MeterProvider,
    Observation,
)
from opentelemetry.trace import Tracer, TracerProvider

from otel_stream.config import Settings
from otel_stream.version import __version__

logger = logging.getLogger("otel_stream")

SCOPE_NAME: Final = "otel_stream"
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.26.0"

# Attribute names (semantic conventions and ours).
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_ROUTE: Final = "http.route"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
URL_SCHEME: Final = "url.scheme"
NETWORK_PROTOCOL_VERSION: Final = "network.protocol.version"
ERROR_TYPE: Final = "error.type"
TERMINATION_REASON: Final = "http.stream.termination_reason"
PHASE: Final = "http.stream.phase"
STREAM_CHUNKS: Final = "http.stream.chunks"
STREAM_BYTES: Final = "http.stream.bytes"
STREAM_MAX_CHUNK_GAP: Final = "http.stream.max_chunk_gap"
STREAM_SEND_WAIT: Final = "http.stream.send_wait"
STREAM_TIME_TO_FIRST_BYTE: Final = "http.stream.time_to_first_byte"
STREAM_TIME_TO_FIRST_RAW_BYTE: Final = "http.stream.time_to_first_raw_byte"
STREAM_EVENTS: Final = "http.stream.events"
STREAM_TIME_TO_FIRST_TOKEN: Final = "http.stream.time_to_first_token"
GEN_AI_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_FINISH_REASON: Final = "gen_ai.response.finish_reason"
GEN_AI_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"


class ActiveRequests:
    """Requests in flight per attribute set, read by an asynchronous up-down counter.

    A synchronous ``add`` costs 5 to 7 µs in the SDK and runs two to four times per
    request; this is a dict update. Exporters see the same data: a non-monotonic sum.
    """

    name: Final = "http.server.stream.active"
    unit: Final = "{request}"

    def __init__(self) -> None:
        self.counts: dict[frozenset[tuple[str, Any]], int] = {}
        self.lock = threading.Lock()  # servers may run several event loops in threads

    def add(self, delta: int, attributes: Mapping[str, Any]) -> None:
        key = frozenset(attributes.items())
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + delta

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self.lock:
            counts = list(self.counts.items())
        return [Observation(count, dict(key)) for key, count in counts]


_active_by_meter: weakref.WeakKeyDictionary[Meter, ActiveRequests] = weakref.WeakKeyDictionary()
_active_lock = threading.Lock()


def active_requests(meter: Meter) -> ActiveRequests:
    """The one ActiveRequests of ``meter``: the SDK keeps only the first callback
    registered under an instrument name, so every middleware on a meter shares it."""
    with _active_lock:
        active = _active_by_meter.get(meter)
        if active is None:
            active = _active_by_meter[meter] = ActiveRequests()
            meter.create_observable_up_down_counter(
                ActiveRequests.name,
                callbacks=[active.observe],
                unit=ActiveRequests.unit,
                description="Requests in flight, by phase: waiting for the first byte, or "
                "streaming the body.",
            )
    return active


class Instruments:
    """Every instrument of DESIGN.md's metric table, created once per middleware."""

    def __init__(self, meter: Meter, settings: Settings) -> None:
        self.time_to_first_byte: Histogram = meter.create_histogram(
            "http.server.stream.time_to_first_byte",
            unit="s",
            description="Time from receiving the request to handing the first body byte "
            "to the server.",
            explicit_bucket_boundaries_advisory=list(settings.ttfb_buckets),
        )
        self.duration: Histogram = meter.create_histogram(
            "http.server.stream.duration",
            unit="s",
            description="Time from the first body byte to the end of the stream.",
            explicit_bucket_boundaries_advisory=list(settings.duration_buckets),
        )
        self.active = active_requests(meter)
        self.terminations: Counter = meter.create_counter(
            "http.server.stream.terminations",
            unit="{request}",
            description="Requests that ended, by termination reason and the phase they ended in.",
        )
        self.chunks: Histogram = meter.create_histogram(
            "http.server.stream.chunks",
            unit="{chunk}",
            description="Non-empty body messages per stream.",
            explicit_bucket_boundaries_advisory=list(settings.chunks_buckets),
        )
        self.body_size: Histogram = meter.create_histogram(
            "http.server.stream.body.size",
            unit="By",
            description="Body bytes per stream.",
            explicit_bucket_boundaries_advisory=list(settings.body_size_buckets),
        )
        self.max_chunk_gap: Histogram = meter.create_histogram(
            "http.server.stream.max_chunk_gap",
            unit="s",
            description="Longest pause between two body chunks of a stream.",
            explicit_bucket_boundaries_advisory=list(settings.gap_buckets),
        )
        self.send_wait: Histogram = meter.create_histogram(
            "http.server.stream.send_wait",
            unit="s",
            description="Time a stream spent awaiting the server's send (client backpressure).",
            explicit_bucket_boundaries_advisory=list(settings.gap_buckets),
        )
        self.time_to_first_token: Histogram = meter.create_histogram(
            "http.server.stream.time_to_first_token",
            unit="s",
            description="Time from receiving the request to the first event that "
            "carries generated content.",
            explicit_bucket_boundaries_advisory=list(settings.ttfb_buckets),
        )
        self.time_per_output_token: Histogram = meter.create_histogram(
            "http.server.stream.time_per_output_token",
            unit="s",
            description="(stream end - first token) / (output tokens - 1).",
            explicit_bucket_boundaries_advisory=list(settings.time_per_output_token_buckets),
        )


def get_tracer(provider: TracerProvider | None) -> Tracer:
    return trace.get_tracer(SCOPE_NAME, __version__, provider, schema_url=SCHEMA_URL)


def get_meter(provider: MeterProvider | None) -> Meter:
    return metrics.get_meter(SCOPE_NAME, __version__, provider, schema_url=SCHEMA_URL)


_logged: set[str] = set()


def log_failure(where: str, error: BaseException) -> None:
    """Log a failure of otel-stream's own telemetry code, once per place and error type."""
    key = f"{where}:{type(error).__qualname__}"
    if key in _logged:
        return
    _logged.add(key)
    logger.warning(
        "otel-stream: telemetry failed in %s and was skipped; the response is not affected",
        where,
        exc_info=error,
    )
