"""The client side's tracer, instruments and end-of-call recording.

Every instrument is a row of one table (:data:`CLIENT_HISTOGRAMS`, :data:`GEN_AI_HISTOGRAMS`);
the GenAI rows are created only when ``OTEL_SEMCONV_STABILITY_OPT_IN`` contains
``gen_ai_latest_experimental`` (those conventions are still in development).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider
from opentelemetry.trace import Span, Status, StatusCode, TracerProvider

from otel_stream import attributes as a
from otel_stream import telemetry as t
from otel_stream import termination
from otel_stream.config import Settings
from otel_stream.guard import failsafe
from otel_stream.payloads import PayloadSummary

if TYPE_CHECKING:
    from otel_stream.clients.call import ClientCall

GEN_AI_OPT_IN = "gen_ai_latest_experimental"

#: ``gen_ai.operation.name`` of each payload format whose operation is certain. Ollama's
#: NDJSON is the same for its chat and generate endpoints: no operation, no GenAI metrics.
OPERATION_OF_FORMAT = {
    "openai.chat_completions": "chat",
    "openai.responses": "chat",
    "anthropic.messages": "chat",
}

#: The GenAI conventions' advice for token counts (powers of four).
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))


@dataclass(frozen=True)
class HistogramRow:
    """One histogram: its name, unit, description and where its boundaries come from."""

    attribute: str
    name: str
    unit: str
    description: str
    boundaries: Callable[[Settings], Sequence[float]]


CLIENT_HISTOGRAMS = (
    HistogramRow(
        "time_to_first_byte",
        "http.client.stream.time_to_first_byte",
        "s",
        "Time from sending the request to the caller reading the first body byte.",
        lambda s: s.ttfb_buckets,
    ),
    HistogramRow(
        "duration",
        "http.client.stream.duration",
        "s",
        "Time from the first body byte to the end of the stream the caller read.",
        lambda s: s.duration_buckets,
    ),
    HistogramRow(
        "chunks",
        "http.client.stream.chunks",
        "{chunk}",
        "Non-empty body chunks per stream.",
        lambda s: s.chunks_buckets,
    ),
    HistogramRow(
        "body_size",
        "http.client.stream.body.size",
        "By",
        "Body bytes per stream (after transfer decoding, before content decoding).",
        lambda s: s.body_size_buckets,
    ),
    HistogramRow(
        "max_chunk_gap",
        "http.client.stream.max_chunk_gap",
        "s",
        "Longest pause between two body chunks of a stream.",
        lambda s: s.gap_buckets,
    ),
    HistogramRow(
        "time_to_first_token",
        "http.client.stream.time_to_first_token",
        "s",
        "Time from sending the request to the first event that carries generated content.",
        lambda s: s.ttfb_buckets,
    ),
)

GEN_AI_HISTOGRAMS = (
    HistogramRow(
        "time_to_first_chunk",
        "gen_ai.client.operation.time_to_first_chunk",
        "s",
        "Time from issuing the generation request to receiving the first chunk of its stream.",
        lambda s: s.ttfb_buckets,
    ),
    HistogramRow(
        "operation_duration",
        "gen_ai.client.operation.duration",
        "s",
        "GenAI operation duration.",
        lambda s: s.duration_buckets,
    ),
    HistogramRow(
        "token_usage",
        "gen_ai.client.token.usage",
        "{token}",
        "Number of input and output tokens used.",
        lambda s: TOKEN_BUCKETS,
    ),
)


_active_by_meter: weakref.WeakKeyDictionary[Meter, t.ActiveRequests] = weakref.WeakKeyDictionary()
_active_lock = threading.Lock()


def client_active(meter: Meter) -> t.ActiveRequests:
    """The one ``http.client.stream.active`` of ``meter`` (the SDK keeps the first callback)."""
    with _active_lock:
        active = _active_by_meter.get(meter)
        if active is None:
            active = _active_by_meter[meter] = t.ActiveRequests()
            meter.create_observable_up_down_counter(
                "http.client.stream.active",
                callbacks=[active.observe],
                unit="{request}",
                description="Outgoing calls in flight, by phase: waiting for the first "
                "byte, or reading the stream.",
            )
    return active


def gen_ai_opted_in() -> bool:
    """Whether ``OTEL_SEMCONV_STABILITY_OPT_IN`` asks for the GenAI conventions."""
    names = os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "")
    return GEN_AI_OPT_IN in {name.strip() for name in names.split(",")}


class ClientInstruments:
    """The client instruments, one attribute per row of the tables above."""

    def __init__(self, meter: Meter, settings: Settings, *, gen_ai: bool) -> None:
        rows = CLIENT_HISTOGRAMS + (GEN_AI_HISTOGRAMS if gen_ai else ())
        self.gen_ai = gen_ai
        for row in rows:
            setattr(
                self,
                row.attribute,
                meter.create_histogram(
                    row.name,
                    unit=row.unit,
                    description=row.description,
                    explicit_bucket_boundaries_advisory=list(row.boundaries(settings)),
                ),
            )
        self.terminations: Counter = meter.create_counter(
            "http.client.stream.terminations",
            unit="{request}",
            description="Outgoing calls that ended, by termination reason and phase.",
        )

    time_to_first_byte: Histogram
    duration: Histogram
    chunks: Histogram
    body_size: Histogram
    max_chunk_gap: Histogram
    time_to_first_token: Histogram
    time_to_first_chunk: Histogram
    operation_duration: Histogram
    token_usage: Histogram


class ClientTelemetry:
    """What every outgoing call of one instrumentor records with.

    Args:
        settings: Buckets and payload reading (the server's settings).
        tracer_provider: Tracer provider to use; the global one if omitted.
        meter_provider: Meter provider to use; the global one if omitted.
        provider_name: ``gen_ai.provider.name`` of every recognised LLM stream, when the
            caller knows it for certain (``openai``, ``anthropic``); never guessed.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        provider_name: str | None = None,
    ) -> None:
        self.settings = settings
        self.provider_name = provider_name
        self.tracer = t.get_tracer(tracer_provider)
        meter = t.get_meter(meter_provider)
        self.instruments = ClientInstruments(meter, settings, gen_ai=gen_ai_opted_in())
        self.active = client_active(meter)

    guard = staticmethod(failsafe)

    def record_end(
        self,
        call: ClientCall,
        reason: str,
        error: BaseException | None,
        summary: PayloadSummary | None,
    ) -> None:
        """Set the end attributes on the open span and record the end-of-call metrics."""
        exchange = call.exchange
        stream_span = call.stream_span
        span = stream_span if stream_span is not None else call.request_span
        span.set_attribute(a.TERMINATION_REASON, reason)
        error_type = _error_type(reason, error)
        if error_type is not None:
            span.set_attribute(a.ERROR_TYPE, error_type)
            if error is not None and not termination.is_cancellation(error):
                span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, error_type))
        base = call.metric_attributes
        with_reason = {**base, a.TERMINATION_REASON: reason}
        terminations = {**with_reason, a.PHASE: exchange.reported_phase}
        instruments = self.instruments
        if stream_span is not None:
            stream_span.set_attributes(
                {
                    a.STREAM_CHUNKS: exchange.chunks,
                    a.STREAM_BYTES: exchange.bytes,
                    a.STREAM_MAX_CHUNK_GAP: exchange.max_chunk_gap,
                    a.STREAM_TIME_TO_FIRST_BYTE: exchange.time_to_first_byte or 0.0,
                }
            )
            instruments.duration.record(exchange.stream_duration, with_reason)
            instruments.chunks.record(exchange.chunks, with_reason)
            instruments.body_size.record(exchange.bytes, with_reason)
            instruments.max_chunk_gap.record(exchange.max_chunk_gap, base)
        if summary is not None and summary.format is not None:
            self.record_payload(call, span, summary, terminations, error_type)
        instruments.terminations.add(1, terminations)

    def record_payload(
        self,
        call: ClientCall,
        span: Span,
        summary: PayloadSummary,
        terminations: dict[str, Any],
        error_type: str | None,
    ) -> None:
        """The LLM-aware attributes and metrics of a stream whose format was recognised."""
        exchange = call.exchange
        started_at = exchange.started_at
        span.set_attribute(a.STREAM_EVENTS, summary.events)
        span.set_attribute(a.GEN_AI_REQUEST_STREAM, True)
        if exchange.first_byte_at is not None:
            span.set_attribute(a.GEN_AI_TIME_TO_FIRST_CHUNK, exchange.first_byte_at - started_at)
        model = getattr(summary, "model", None)
        if model:
            span.set_attribute(a.GEN_AI_RESPONSE_MODEL, model)
        if summary.finish_reasons:
            span.set_attribute(a.GEN_AI_FINISH_REASONS, list(summary.finish_reasons))
            terminations[a.GEN_AI_FINISH_REASON] = summary.finish_reasons[0]
        if summary.input_tokens is not None:
            span.set_attribute(a.GEN_AI_INPUT_TOKENS, summary.input_tokens)
        if summary.output_tokens is not None:
            span.set_attribute(a.GEN_AI_OUTPUT_TOKENS, summary.output_tokens)
        instruments = self.instruments
        if summary.first_token_at is not None:
            ttft = summary.first_token_at - started_at
            span.set_attribute(a.STREAM_TIME_TO_FIRST_TOKEN, ttft)
            instruments.time_to_first_token.record(ttft, call.metric_attributes)
        operation = OPERATION_OF_FORMAT.get(summary.format or "")
        if not instruments.gen_ai or operation is None:
            return
        gen_ai: dict[str, Any] = {a.GEN_AI_OPERATION_NAME: operation}
        if self.provider_name:
            gen_ai[a.GEN_AI_PROVIDER_NAME] = self.provider_name
        if model:
            gen_ai[a.GEN_AI_RESPONSE_MODEL] = model
        for key in (a.SERVER_ADDRESS, a.SERVER_PORT):
            if key in call.metric_attributes:
                gen_ai[key] = call.metric_attributes[key]
        if exchange.first_byte_at is not None:
            instruments.time_to_first_chunk.record(exchange.first_byte_at - started_at, gen_ai)
        duration = {**gen_ai, a.ERROR_TYPE: error_type} if error_type else gen_ai
        instruments.operation_duration.record(exchange.ended_at - started_at, duration)
        for token_type, count in (
            ("input", summary.input_tokens),
            ("output", summary.output_tokens),
        ):
            if count is not None:
                instruments.token_usage.record(count, {**gen_ai, a.GEN_AI_TOKEN_TYPE: token_type})


def _error_type(reason: str, error: BaseException | None) -> str | None:
    """``error.type``: the class of the error that ended the call, or ``incomplete``."""
    if reason in (termination.ERROR, termination.SERVER_DISCONNECT) and error is not None:
        return type(error).__qualname__
    if reason == termination.INCOMPLETE:
        return termination.INCOMPLETE
    return None
