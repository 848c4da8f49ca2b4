"""The spans and instruments of streamed exchanges, whatever the transport.

A :class:`Recorder` belongs to one middleware (or client instrumentation): its tracer,
its instruments, its settings. For each exchange it starts a :class:`Record`, which owns
that exchange's spans and attribute sets. Adapters tell the record three things: the
response started (status, headers), the first byte went out, the exchange ended (with
its reason). Everything OpenTelemetry is done here, guarded by one ``failsafe``.

Choices made on purpose (read before "fixing"):

* **One place per span and per counter.** The request span of a stream ends where the
  stream span starts (``_first_byte_spans``); every other end is ``_end_spans``, which
  ends whatever is still open: a span that already ended is not recording, so no flag
  tracks which spans are open, and it runs even when recording the end failed halfway.
  ``_move_active`` is the only call that touches the active counter.
* **Guards at method boundaries.** Each group of telemetry calls that may fail alone
  (the first byte's spans, its metrics, the end's metrics, the spans' end, the active
  counter) is a method decorated ``@guarded``: a failure is logged once and skips that
  group only.
* **The request span's attributes wait for its end.** What it learns after it started
  (status, allowlisted response headers, route, time to first byte, the end's reason) is
  kept in ``pending`` and set in one call when it ends: at the first byte of a stream,
  else with the end's own attributes. Each ``set_attributes`` costs about a microsecond
  in the SDK, and a single-message response made four.
* **Nothing per chunk.** The record is touched at the start, the first byte and the end;
  chunks only move counters of the pure :class:`~otel_stream.exchange.Exchange`.
* **Instruments from one table.** Every histogram is a row of ``_HISTOGRAMS``: its name
  after the side's prefix (``http.server.stream.`` or ``http.client.stream.``), unit,
  description and the setting that holds its bucket advice.
* **The active counter is a dict.** A synchronous up-down counter ``add`` costs 5 to 7 µs
  in the SDK and runs two to four times per request; the counter is asynchronous and its
  callback reads counts kept here. Exporters see the same non-monotonic sum.
* **No SDK, one word.** With the API's no-op providers every call here does nothing:
  the first exchange a middleware serves that way logs one warning per process saying
  what to install or configure.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import (
    CallbackOptions,
    Counter,
    Histogram,
    Meter,
    MeterProvider,
    Observation,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

from otel_stream import attributes as a
from otel_stream import termination
from otel_stream.config import Settings
from otel_stream.exchange import Exchange
from otel_stream.guard import guarded
from otel_stream.payloads import PayloadSummary
from otel_stream.version import __version__

logger = logging.getLogger("otel_stream")

SCOPE_NAME: Final = "otel_stream"
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.26.0"
#: ``OTEL_SEMCONV_STABILITY_OPT_IN`` value that turns on the GenAI metric names.
GEN_AI_OPT_IN: Final = "gen_ai_latest_experimental"


@dataclass(frozen=True)
class Side:
    """Server or client: the prefix of the instrument names and the span kind.

    ``error_status``: the lowest HTTP status that marks the request span as an error
    (5xx for a server, 4xx too for a client, as the HTTP conventions say).
    """

    prefix: str
    kind: SpanKind
    gen_ai_prefix: str
    error_status: int = 500


SERVER: Final = Side("http.server.stream", SpanKind.SERVER, "gen_ai.server")
CLIENT: Final = Side("http.client.stream", SpanKind.CLIENT, "gen_ai.client", error_status=400)
#: A client's upstream: on its smaller metrics beside the method (a server has none).
_UPSTREAM: Final = (a.SERVER_ADDRESS, a.SERVER_PORT)
#: Reasons whose span carries the error's class (``error.type``) and the exception.
_ERROR_REASONS: Final = frozenset(
    {termination.APP_ERROR, termination.ERROR, termination.SERVER_DISCONNECT}
)

#: The histograms only a server records: the send wait (the time the peer held the
#: adapter back: a server awaits its ``send``, a client's caller reads at will) and the
#: hop (a relay's server exchange measures it).
_SERVER_ONLY: Final = frozenset({"send_wait", "hop_time_to_first_byte"})

#: (attribute of Instruments, name after the side's prefix, unit, description, buckets setting)
_HISTOGRAMS: Final = (
    (
        "time_to_first_byte",
        "time_to_first_byte",
        "s",
        "Time from the start of the request to its first body byte.",
        "ttfb_buckets",
    ),
    (
        "duration",
        "duration",
        "s",
        "Time from the first body byte to the end of the stream.",
        "duration_buckets",
    ),
    ("chunks", "chunks", "{chunk}", "Non-empty body messages per stream.", "chunks_buckets"),
    ("body_size", "body.size", "By", "Body bytes per stream.", "body_size_buckets"),
    (
        "max_chunk_gap",
        "max_chunk_gap",
        "s",
        "Longest pause between two body chunks of a stream.",
        "gap_buckets",
    ),
    (
        "send_wait",
        "send_wait",
        "s",
        "Time a stream spent awaiting the server's send (client backpressure).",
        "gap_buckets",
    ),
    (
        "time_to_first_token",
        "time_to_first_token",
        "s",
        "Time from the start of the request to the first event that carries generated content.",
        "ttfb_buckets",
    ),
    (
        "time_per_output_token",
        "time_per_output_token",
        "s",
        "(stream end - first token) / (output tokens - 1).",
        "time_per_output_token_buckets",
    ),
    (
        "hop_time_to_first_byte",
        "hop.time_to_first_byte",
        "s",
        "The server's first byte minus the first byte of the upstream stream it relays: "
        "the time the hop itself added.",
        "ttfb_buckets",
    ),
)

#: Token counts: the GenAI conventions' advice (powers of 4), not a setting.
_TOKEN_BUCKETS: Final = tuple(float(4**i) for i in range(14))

#: (attribute of Instruments, server name, client name, unit, description, buckets setting;
#: None: the token counts')
_GEN_AI_HISTOGRAMS: Final = (
    (
        "time_to_first_token",
        "time_to_first_token",
        "operation.time_to_first_chunk",
        "s",
        "Time to the first generated token or chunk (GenAI semantic conventions).",
        "ttfb_buckets",
    ),
    (
        "time_per_output_token",
        "time_per_output_token",
        None,
        "s",
        "Time per output token after the first (GenAI semantic conventions).",
        "time_per_output_token_buckets",
    ),
    (
        "duration",
        "request.duration",
        "operation.duration",
        "s",
        "Duration of the GenAI request (GenAI semantic conventions).",
        "duration_buckets",
    ),
    (
        "token_usage",
        None,
        "token.usage",
        "{token}",
        "Number of input and output tokens used (GenAI semantic conventions).",
        None,
    ),
)


def gen_ai_opted_in(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``OTEL_SEMCONV_STABILITY_OPT_IN`` asks for the GenAI metric names."""
    value = (os.environ if environ is None else environ).get("OTEL_SEMCONV_STABILITY_OPT_IN", "")
    return GEN_AI_OPT_IN in {part.strip() for part in value.split(",")}


class ActiveRequests:
    """Exchanges in flight per attribute set, read by an asynchronous up-down counter."""

    unit: Final = "{request}"

    def __init__(self, name: str) -> None:
        self.name = name
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


_active_by_meter: weakref.WeakKeyDictionary[Meter, dict[str, ActiveRequests]] = (
    weakref.WeakKeyDictionary()
)
_active_lock = threading.Lock()


def active_requests(meter: Meter, name: str) -> ActiveRequests:
    """The one ActiveRequests named ``name`` of ``meter``: the SDK keeps only the first
    callback registered under an instrument name, so every middleware on a meter shares it."""
    with _active_lock:
        by_name = _active_by_meter.setdefault(meter, {})
        active = by_name.get(name)
        if active is None:
            active = by_name[name] = ActiveRequests(name)
            meter.create_observable_up_down_counter(
                name,
                callbacks=[active.observe],
                unit=ActiveRequests.unit,
                description="Exchanges in flight, by phase: waiting for the first byte, or "
                "streaming the body.",
            )
    return active


class Instruments:
    """Every instrument of one side, created once per middleware from the tables above."""

    time_to_first_byte: Histogram
    duration: Histogram
    chunks: Histogram
    body_size: Histogram
    max_chunk_gap: Histogram
    send_wait: Histogram | None
    time_to_first_token: Histogram
    time_per_output_token: Histogram
    hop_time_to_first_byte: Histogram | None

    def __init__(self, meter: Meter, settings: Settings, side: Side = SERVER) -> None:
        for attribute, name, unit, description, bounds in _HISTOGRAMS:
            if side is not SERVER and attribute in _SERVER_ONLY:
                setattr(self, attribute, None)
                continue
            histogram = meter.create_histogram(
                f"{side.prefix}.{name}",
                unit=unit,
                description=description,
                explicit_bucket_boundaries_advisory=list(getattr(settings, bounds)),
            )
            setattr(self, attribute, histogram)
        self.terminations: Counter = meter.create_counter(
            f"{side.prefix}.terminations",
            unit="{request}",
            description="Exchanges that ended, by termination reason and the phase they ended in.",
        )
        self.active = active_requests(meter, f"{side.prefix}.active")


class GenAiInstruments:
    """The GenAI semantic conventions' metrics of one side (only when opted in)."""

    time_to_first_token: Histogram
    time_per_output_token: Histogram | None
    duration: Histogram
    token_usage: Histogram | None

    def __init__(self, meter: Meter, settings: Settings, side: Side = SERVER) -> None:
        for attribute, server_name, client_name, unit, description, bounds in _GEN_AI_HISTOGRAMS:
            name = server_name if side is SERVER else client_name
            instrument = None
            if name is not None:
                boundaries = _TOKEN_BUCKETS if bounds is None else getattr(settings, bounds)
                instrument = meter.create_histogram(
                    f"{side.gen_ai_prefix}.{name}",
                    unit=unit,
                    description=description,
                    explicit_bucket_boundaries_advisory=list(boundaries),
                )
            setattr(self, attribute, instrument)


def get_tracer(provider: TracerProvider | None) -> Tracer:
    return trace.get_tracer(SCOPE_NAME, __version__, provider, schema_url=SCHEMA_URL)


def get_meter(provider: MeterProvider | None) -> Meter:
    return metrics.get_meter(SCOPE_NAME, __version__, provider, schema_url=SCHEMA_URL)


_NO_SDK = frozenset(
    {
        ("opentelemetry.trace", "ProxyTracerProvider"),
        ("opentelemetry.trace", "NoOpTracerProvider"),
        ("opentelemetry.metrics._internal", "_ProxyMeterProvider"),
        ("opentelemetry.metrics._internal", "NoOpMeterProvider"),
    }
)
_sdk_checked = False


def _no_op(provider: object) -> bool:
    cls = type(provider)
    return (cls.__module__, cls.__qualname__) in _NO_SDK


def check_sdk(tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None) -> None:
    """Warn once per process when telemetry would go to the API's no-op providers."""
    global _sdk_checked
    if _sdk_checked:
        return
    _sdk_checked = True
    tracing = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    meters = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    missing = [signal for signal, p in (("traces", tracing), ("metrics", meters)) if _no_op(p)]
    if missing:
        logger.warning(
            "otel-stream: no OpenTelemetry SDK is configured for %s, so this telemetry goes "
            "nowhere. Install the SDK and an exporter (pip install 'otel-stream[otlp]') and "
            "configure it in code, or start the app with opentelemetry-instrument or "
            "OTEL_STREAM_ENABLED=true.",
            " and ".join(missing),
        )


def server_parent(
    carrier: Any, getter: Any, headers: Iterable[tuple[bytes, bytes]]
) -> tuple[Context, SpanKind]:
    """The parent context and kind of a server request span.

    Already in a trace: stay in it, as a SERVER span only under a span that is not a
    server span and is the local root (no server span can be above it); INTERNAL under
    another instrumentation's server span, under a span of unknown kind (not recording,
    as an unsampled outer server span) or under a local child span, which may have a
    server span above it. Not in a trace: the context of the incoming headers
    (``carrier`` read with ``getter``; ``headers`` as raw pairs, to skip extracting when
    no header the propagator reads is there).
    """
    parent = otel_context.get_current()
    current = trace.get_current_span(parent)
    if current.get_span_context().is_valid:
        parent_context = getattr(current, "parent", None)
        if (
            not current.is_recording()
            or getattr(current, "kind", None) in (SpanKind.SERVER, None)
            or (parent_context is not None and not parent_context.is_remote)
        ):
            return parent, SpanKind.INTERNAL
        return parent, SpanKind.SERVER
    extracted = extract_context(carrier, getter, headers)
    return (parent if extracted is None else extracted), SpanKind.SERVER


def extract_context(carrier: Any, getter: Any, headers: Iterable[tuple[bytes, bytes]]) -> Any:
    """``propagate.extract`` when a header the global propagator reads is present.

    Extracting from a carrier without those headers returns the current context, so
    skipping it changes nothing but saves decoding every header once per field.
    """
    global _propagator_fields
    textmap = propagate.get_global_textmap()
    if _propagator_fields[0] is not textmap:
        names = frozenset(field.lower().encode("latin-1") for field in textmap.fields)
        _propagator_fields = (textmap, names)
    fields = _propagator_fields[1]
    if fields and not any(name in fields for name, _ in headers):
        return None
    return propagate.extract(carrier, getter=getter)


_propagator_fields: tuple[object, frozenset[bytes]] = (None, frozenset())


class Recorder:
    """The tracer, instruments and settings of one middleware.

    Args:
        settings: The resolved settings (bucket advice, payload reading).
        tracer_provider: Tracer provider to use; the global one if None.
        meter_provider: Meter provider to use; the global one if None.
        side: ``SERVER`` or ``CLIENT``.
        provider_name: ``gen_ai.provider.name`` of the GenAI metrics, when known for
            certain (a keyword of the user's); never guessed from a payload.
    """

    def __init__(
        self,
        settings: Settings,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        side: Side = SERVER,
        provider_name: str | None = None,
    ) -> None:
        self.settings = settings
        self.side = side
        self.provider_name = provider_name
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.tracer = get_tracer(tracer_provider)
        meter = get_meter(meter_provider)
        self.instruments = Instruments(meter, settings, side)
        self.gen_ai = GenAiInstruments(meter, settings, side) if gen_ai_opted_in() else None

    def start(
        self,
        exchange: Exchange,
        *,
        method: str,
        start_ns: int,
        parent: Context,
        kind: SpanKind,
        span_attributes: dict[str, Any],
        metric_attributes: dict[str, Any],
    ) -> Record:
        """Start the request span of ``exchange`` and count it as waiting."""
        if not _sdk_checked:
            check_sdk(self.tracer_provider, self.meter_provider)
        return Record(
            self, exchange, method, start_ns, parent, kind, span_attributes, metric_attributes
        )


class Record:
    """The spans and attribute sets of one exchange (made by :meth:`Recorder.start`)."""

    __slots__ = (
        "active_attributes",
        "context",
        "instruments",
        "method",
        "metric_attributes",
        "pending",
        "recorder",
        "request_span",
        "route",
        "span_name",
        "start_ns",
        "started_at",
        "stream_span",
    )

    def __init__(
        self,
        recorder: Recorder,
        exchange: Exchange,
        method: str,
        start_ns: int,
        parent: Context,
        kind: SpanKind,
        span_attributes: dict[str, Any],
        metric_attributes: dict[str, Any],
    ) -> None:
        self.recorder = recorder
        self.instruments = recorder.instruments
        self.started_at = exchange.started_at
        self.start_ns = start_ns
        #: Span name's method: ``HTTP`` for a method outside the known set.
        self.method = "HTTP" if method == "_OTHER" else method
        self.route: str | None = None
        self.span_name = self.method
        self.metric_attributes = metric_attributes
        self.active_attributes: dict[str, Any] | None = None
        #: The request span's attributes learned since it started, set when it ends.
        self.pending: dict[str, Any] = {}
        self.stream_span: Span | None = None
        self.request_span: Span = recorder.tracer.start_span(
            self.span_name,
            context=parent,
            kind=kind,
            attributes=span_attributes,
            start_time=start_ns,
        )
        self.context = trace.set_span_in_context(self.request_span, parent)
        self._move_active(termination.PHASE_WAITING)

    # What adapters report ------------------------------------------------------------

    @guarded("route")
    def found_route(self, route: str | None) -> None:
        """The route template, once the app has routed the request (first call wins)."""
        if self.route is not None or not route:
            return
        self.route = route
        self.metric_attributes[a.HTTP_ROUTE] = route
        self.span_name = f"{self.method} {route}"
        self.request_span.update_name(self.span_name)
        self.pending[a.HTTP_ROUTE] = route

    @guarded("response start")
    def response_started(self, status: int, span_attributes: Mapping[str, Any] | None) -> None:
        """The status (and allowlisted response headers) are known."""
        self.metric_attributes[a.HTTP_RESPONSE_STATUS_CODE] = status
        attributes = self.pending
        attributes[a.HTTP_RESPONSE_STATUS_CODE] = status
        if span_attributes:
            attributes.update(span_attributes)
        if status >= self.recorder.side.error_status:
            attributes[a.ERROR_TYPE] = str(status)
            self.request_span.set_status(Status(StatusCode.ERROR))

    def first_byte(self, exchange: Exchange, first_token_at: float | None) -> None:
        """The first body byte went out: end the request span, start the stream's."""
        if exchange.first_byte_at is None:
            return
        self._first_byte_spans(exchange, first_token_at)
        self._first_byte_metrics(exchange)

    def end(
        self,
        exchange: Exchange,
        reason: str,
        error: BaseException | None,
        summary: PayloadSummary | None,
    ) -> None:
        """The exchange ended (``exchange.end`` was called): metrics first, then the spans end."""
        try:
            self._record_end(exchange, reason, error, summary)
        finally:
            self._end_spans(self._ns(exchange.ended_at))
            self._move_active(None)

    # Inside ---------------------------------------------------------------------------

    @guarded("first byte spans")
    def _first_byte_spans(self, exchange: Exchange, first_token_at: float | None) -> None:
        at = exchange.first_byte_at
        assert at is not None
        started_at = self.started_at
        attributes = self.pending
        attributes[a.STREAM_TIME_TO_FIRST_BYTE] = at - started_at
        if first_token_at is not None:
            # The first byte carried the first token: the request span can hold it too.
            attributes[a.STREAM_TIME_TO_FIRST_TOKEN] = first_token_at - started_at
        raw = exchange.first_raw_byte_at
        if raw is not None and raw < at:
            attributes[a.STREAM_TIME_TO_FIRST_RAW_BYTE] = raw - started_at
        upstream = exchange.upstream_time_to_first_byte
        if upstream is not None:
            attributes[a.STREAM_UPSTREAM_TIME_TO_FIRST_BYTE] = upstream
        if exchange.streamed:
            try:
                self._flush_pending()
            finally:  # the stream span starts even when the attributes were refused
                first_byte_ns = self._ns(at)
                stream_attributes = self._method_and_route()
                stream_attributes[a.HTTP_REQUEST_METHOD] = self.method
                self.stream_span = self.recorder.tracer.start_span(
                    f"{self.span_name} stream",
                    context=self.context,
                    kind=SpanKind.INTERNAL,
                    start_time=first_byte_ns,
                    attributes=stream_attributes,
                )
                self.request_span.end(end_time=first_byte_ns)

    @guarded("first byte metrics")
    def _first_byte_metrics(self, exchange: Exchange) -> None:
        at = exchange.first_byte_at
        assert at is not None
        instruments = self.instruments
        instruments.time_to_first_byte.record(at - self.started_at, self.metric_attributes)
        upstream_at = exchange.upstream_first_byte_at
        if upstream_at is not None and instruments.hop_time_to_first_byte is not None:
            instruments.hop_time_to_first_byte.record(
                max(0.0, at - upstream_at), self._method_and_route()
            )
        if exchange.streamed:
            self._move_active(termination.PHASE_STREAMING)

    @guarded("span end")
    def _end_spans(self, end_ns: int) -> None:
        """End whatever span is still open: the one place the spans end at the end."""
        if self.stream_span is not None and self.stream_span.is_recording():
            self.stream_span.end(end_time=end_ns)
        if self.request_span.is_recording():
            try:
                self._flush_pending()  # recording the end failed before it set them
            finally:
                self.request_span.end(end_time=end_ns)

    def _flush_pending(self) -> None:
        """Set the request span's pending attributes (once, before it ends)."""
        pending = self.pending
        if pending:
            self.pending = {}
            self.request_span.set_attributes(pending)

    # Inside ---------------------------------------------------------------------------

    @guarded("request end")
    def _record_end(
        self,
        exchange: Exchange,
        reason: str,
        error: BaseException | None,
        summary: PayloadSummary | None,
    ) -> None:
        stream_span = self.stream_span
        span = stream_span if stream_span is not None else self.request_span
        # The span's attributes are gathered and set at once: one call into the SDK (the
        # request span's, with those it learned since it started).
        span_attributes: dict[str, Any] = self.pending if stream_span is None else {}
        span_attributes[a.TERMINATION_REASON] = reason
        if reason in _ERROR_REASONS and error is not None:
            span_attributes[a.ERROR_TYPE] = type(error).__qualname__
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
        elif reason == termination.CANCELLED:
            span_attributes[a.ERROR_TYPE] = type(error).__qualname__ if error else "cancelled"
            span.set_status(Status(StatusCode.ERROR, "cancelled"))
        elif reason == termination.INCOMPLETE:
            span_attributes[a.ERROR_TYPE] = termination.INCOMPLETE
            span.set_status(Status(StatusCode.ERROR, "response incomplete"))

        metric_attributes = self.metric_attributes
        termination_attributes: dict[str, Any] = {
            key: metric_attributes[key]
            for key in (
                a.HTTP_REQUEST_METHOD,
                a.HTTP_ROUTE,
                a.SERVER_ADDRESS,
                a.SERVER_PORT,
                a.HTTP_RESPONSE_STATUS_CODE,
            )
            if key in metric_attributes
        }
        termination_attributes[a.TERMINATION_REASON] = reason
        termination_attributes[a.PHASE] = exchange.reported_phase
        if summary is not None:
            self._record_payload(
                exchange, summary, span_attributes, termination_attributes, reason, error
            )

        instruments = self.instruments
        if stream_span is not None:
            span_attributes[a.STREAM_CHUNKS] = exchange.chunks
            span_attributes[a.STREAM_BYTES] = exchange.bytes
            span_attributes[a.STREAM_MAX_CHUNK_GAP] = exchange.max_chunk_gap
            if instruments.send_wait is not None:  # a server's: see _SERVER_ONLY
                span_attributes[a.STREAM_SEND_WAIT] = exchange.send_wait
            span_attributes[a.STREAM_TIME_TO_FIRST_BYTE] = exchange.time_to_first_byte or 0.0
            status = metric_attributes.get(a.HTTP_RESPONSE_STATUS_CODE)
            if status is not None:
                span_attributes[a.HTTP_RESPONSE_STATUS_CODE] = status
        span.set_attributes(span_attributes)
        if stream_span is None:
            self.pending = {}
        if stream_span is not None:
            small = self._method_and_route()
            with_reason = {**small, a.TERMINATION_REASON: reason}
            instruments.duration.record(
                exchange.stream_duration, {**metric_attributes, **with_reason}
            )
            instruments.chunks.record(exchange.chunks, with_reason)
            instruments.body_size.record(exchange.bytes, with_reason)
            instruments.max_chunk_gap.record(exchange.max_chunk_gap, small)
            if instruments.send_wait is not None:
                instruments.send_wait.record(exchange.send_wait, small)
        instruments.terminations.add(1, termination_attributes)

    @guarded("payload telemetry")
    def _record_payload(
        self,
        exchange: Exchange,
        summary: PayloadSummary,
        span_attributes: dict[str, Any],
        termination_attributes: dict[str, Any],
        reason: str,
        error: BaseException | None,
    ) -> None:
        """Attributes and metrics of an LLM-aware stream (SSE or NDJSON)."""
        span_attributes[a.STREAM_EVENTS] = summary.events
        if summary.finish_reasons:
            span_attributes[a.GEN_AI_FINISH_REASONS] = list(summary.finish_reasons)
            termination_attributes[a.GEN_AI_FINISH_REASON] = summary.finish_reasons[0]
        if summary.input_tokens is not None:
            span_attributes[a.GEN_AI_INPUT_TOKENS] = summary.input_tokens
        if summary.output_tokens is not None:
            span_attributes[a.GEN_AI_OUTPUT_TOKENS] = summary.output_tokens
        recognised = summary.format is not None
        if recognised and exchange.first_byte_at is not None:
            span_attributes[a.GEN_AI_REQUEST_STREAM] = True
            span_attributes[a.GEN_AI_TIME_TO_FIRST_CHUNK] = exchange.first_byte_at - self.started_at
        model = summary.model
        if recognised and model:
            span_attributes[a.GEN_AI_RESPONSE_MODEL] = model
        instruments = self.instruments
        gen_ai = self.recorder.gen_ai if recognised else None
        gen_ai_attributes: dict[str, Any] = {}
        client = self.recorder.side is CLIENT
        if gen_ai is not None:
            gen_ai_attributes[a.GEN_AI_OPERATION_NAME] = _operation_name(summary)
            if self.recorder.provider_name:
                gen_ai_attributes[a.GEN_AI_PROVIDER_NAME] = self.recorder.provider_name
            if model:
                gen_ai_attributes[a.GEN_AI_RESPONSE_MODEL] = model
            for key in _UPSTREAM:
                if key in self.metric_attributes:
                    gen_ai_attributes[key] = self.metric_attributes[key]
            duration_attributes = gen_ai_attributes
            if reason in _ERROR_REASONS and error is not None:
                duration_attributes = {**gen_ai_attributes, a.ERROR_TYPE: type(error).__qualname__}
            gen_ai.duration.record(exchange.ended_at - self.started_at, duration_attributes)
            if client and exchange.first_byte_at is not None:
                # The client conventions time the first chunk of the stream, not the first token.
                gen_ai.time_to_first_token.record(
                    exchange.first_byte_at - self.started_at, gen_ai_attributes
                )
            if gen_ai.token_usage is not None:
                tokens = (("input", summary.input_tokens), ("output", summary.output_tokens))
                for token_type, count in tokens:
                    if count is not None:
                        gen_ai.token_usage.record(
                            count, {**gen_ai_attributes, a.GEN_AI_TOKEN_TYPE: token_type}
                        )
        first_token_at = summary.first_token_at
        if first_token_at is None:
            return
        ttft = first_token_at - self.started_at
        span_attributes[a.STREAM_TIME_TO_FIRST_TOKEN] = ttft
        small = self._method_and_route()
        instruments.time_to_first_token.record(ttft, small)
        if gen_ai is not None and not client:
            gen_ai.time_to_first_token.record(ttft, gen_ai_attributes)
        output_tokens = summary.output_tokens
        ended_at = exchange.ended_at
        if output_tokens is not None and output_tokens > 1 and ended_at > first_token_at:
            per_token = (ended_at - first_token_at) / (output_tokens - 1)
            instruments.time_per_output_token.record(per_token, small)
            if gen_ai is not None and gen_ai.time_per_output_token is not None:
                gen_ai.time_per_output_token.record(per_token, gen_ai_attributes)

    def _method_and_route(self) -> dict[str, Any]:
        """The low-cardinality attributes of the smaller metrics (a new dict each call)."""
        attributes: dict[str, Any] = {
            a.HTTP_REQUEST_METHOD: self.metric_attributes[a.HTTP_REQUEST_METHOD]
        }
        if self.route:
            attributes[a.HTTP_ROUTE] = self.route
        for key in _UPSTREAM:
            if key in self.metric_attributes:
                attributes[key] = self.metric_attributes[key]
        return attributes

    @guarded("active counter")
    def _move_active(self, phase: str | None) -> None:
        """Count this exchange under ``phase`` (None: no longer in flight)."""
        active = self.instruments.active
        if self.active_attributes is not None:
            active.add(-1, self.active_attributes)
            self.active_attributes = None
        if phase is not None:
            # While waiting the route is not known yet: the method (and a client's upstream).
            if phase == termination.PHASE_WAITING:
                metric_attributes = self.metric_attributes
                attributes = {a.HTTP_REQUEST_METHOD: metric_attributes[a.HTTP_REQUEST_METHOD]}
                for key in _UPSTREAM:
                    if key in metric_attributes:
                        attributes[key] = metric_attributes[key]
            else:
                attributes = self._method_and_route()
            attributes[a.PHASE] = phase
            active.add(1, attributes)
            self.active_attributes = attributes

    def _ns(self, at: float) -> int:
        """A clock value as span time (ns since the epoch)."""
        return self.start_ns + int((at - self.started_at) * 1e9)


def _operation_name(summary: PayloadSummary) -> str:
    """``gen_ai.operation.name`` of a recognised format."""
    return summary.operation or "chat"
