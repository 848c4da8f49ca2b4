"""One outgoing call, from the request to the end of the body its caller reads.

The HTTP client adapters (``httpx.py``, ``aiohttp.py``) know how a library sends a
request and hands its body to the caller; this module knows what a call is: it feeds
the shared :class:`~otel_stream.exchange.Exchange` and records the spans and metrics.

Choices made on purpose (read before "fixing"):

* **Where the first byte is.** The first non-empty body chunk the *caller's read*
  returns, not the response headers: contrib's HTTP client instrumentations end their
  span there, which is the moment an LLM gateway has learned nothing yet. For an
  upstream that streams tokens the wait for the first chunk is the model's time to
  first token.
* **Forward first.** Each chunk goes to the caller before otel-stream counts it or
  reads its payload. Only the first chunk's clock value is noted before it is handed
  over (two stores into the exchange), so that a relay's server exchange knows its
  upstream's first byte when it forwards that chunk (the hop).
* **Which responses are streams.** SSE and NDJSON, a body without a
  ``Content-Length`` (chunked or until-close), or a body the caller asked to stream
  (httpx's ``stream=True``, ``Client.stream()``, every SDK's streaming call). Those get
  the request span up to the first byte and a stream span after it. Any other response
  (a JSON answer read whole) gets the request span only, ended when its body has been
  read, and no stream metrics.
* **The end.** The caller read the end of the body (``completed``, or ``incomplete``
  when an LLM format's end marker is missing); closed or dropped the response first
  (``consumer_closed`` -- but ``completed`` once an LLM format's end marker was read:
  the OpenAI SDK closes its response at ``data: [DONE]`` without draining it); the
  connection ended before the body did (``server_disconnect``); any other read error
  (``error``, with ``error.type``).
* **One CLIENT span.** Under another instrumentation's CLIENT span (the anthropic
  SDK's call span) or above one (contrib's httpx and aiohttp instrumentations start
  theirs inside, one per attempt), otel-stream's request span is INTERNAL and leaves
  the trace headers to the owner of the CLIENT span; alone, it is the CLIENT span and
  injects the trace context with the global propagator, as contrib does.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter, time_ns
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.http import sanitize_method

from otel_stream import attributes as a
from otel_stream import termination
from otel_stream.clients.telemetry import ClientTelemetry
from otel_stream.exchange import Exchange, Phase, current_exchange
from otel_stream.payloads import PayloadReader, PayloadSummary, make_reader

#: Media types whose bodies are streams, whatever else the response says.
STREAMING_TYPES = (
    b"text/event-stream",
    b"application/x-ndjson",
    b"application/jsonl",
    b"application/json-lines",
)

HeaderGetter = Callable[[str], "str | None"]


def url_without_query(scheme: str, host: str, port: int | None, path: str) -> str:
    """``url.full`` without the query, the fragment or any user info."""
    default = {"http": 80, "https": 443}.get(scheme)
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != default:
        netloc = f"{netloc}:{port}"
    return f"{scheme}://{netloc}{path}"


def is_client_span(span: Span) -> bool:
    """True when ``span`` is a recording CLIENT span (another instrumentation's)."""
    return getattr(span, "kind", None) is SpanKind.CLIENT and span.is_recording()


class ClientCall:
    """The telemetry of one outgoing call: its exchange, spans, payload reader.

    Args:
        telemetry: The instrumentor's tracer, instruments and settings.
        method: The request method, as sent.
        scheme, host, port, path: The parts of the URL that may reach telemetry (the
            query, the fragment and any user info never do).
        caller_streams: The caller asked for the body as a stream.
        nested: Another instrumentation's CLIENT span is around or inside this call.
    """

    __slots__ = (
        "active_attributes",
        "caller_streams",
        "context",
        "ended",
        "exchange",
        "first_byte_done",
        "method",
        "metric_attributes",
        "nested",
        "pending",
        "pending_at",
        "reader",
        "request_span",
        "started_at_ns",
        "status",
        "stream_span",
        "streamed",
        "telemetry",
        "upstream_of",
    )

    def __init__(
        self,
        telemetry: ClientTelemetry,
        method: str,
        scheme: str,
        host: str,
        port: int | None,
        path: str,
        *,
        caller_streams: bool,
        nested: bool,
    ) -> None:
        self.telemetry = telemetry
        self.exchange = Exchange(perf_counter())
        self.started_at_ns = time_ns()
        self.method = sanitize_method(method)
        self.caller_streams = caller_streams
        self.streamed = caller_streams
        self.nested = nested or is_client_span(trace.get_current_span())
        self.status: int | None = None
        self.reader: PayloadReader | None = None
        self.stream_span: Span | None = None
        self.ended = False
        self.pending: bytes | None = None
        self.pending_at = 0.0
        self.first_byte_done = False
        #: The server exchange this call runs in (a relay), told of its first byte.
        self.upstream_of: Exchange | None = current_exchange.get()
        self.metric_attributes: dict[str, Any] = {
            a.HTTP_REQUEST_METHOD: self.method,
            a.SERVER_ADDRESS: host,
        }
        if port is not None:
            self.metric_attributes[a.SERVER_PORT] = port
        span_attributes: dict[str, Any] = {
            **self.metric_attributes,
            a.URL_FULL: url_without_query(scheme, host, port, path),
        }
        self.request_span = telemetry.tracer.start_span(
            self.method,
            kind=SpanKind.INTERNAL if self.nested else SpanKind.CLIENT,
            attributes=span_attributes,
            start_time=self.started_at_ns,
        )
        self.context: Context = trace.set_span_in_context(self.request_span)
        #: The active counter's attributes: no status (it is not known while waiting).
        self.active_attributes = {**self.metric_attributes, a.PHASE: termination.PHASE_WAITING}
        telemetry.active.add(1, self.active_attributes)

    # Events, in the order they happen ----------------------------------------------

    def inject(self, headers: Any) -> None:
        """Write the trace context into the outgoing ``headers`` if this is the CLIENT span."""
        if not self.nested:
            with self.telemetry.guard("client trace context"):
                propagate.inject(headers, context=self.context)

    def response(
        self,
        status: int,
        header: HeaderGetter,
        http_version: str | None,
        *,
        decoded: bool = False,
    ) -> None:
        """The response headers arrived: decide whether the body is a stream.

        ``decoded`` is true when the chunks the caller reads are already content-decoded
        (aiohttp), so a compressed SSE body can still be read.
        """
        with self.telemetry.guard("client response"):
            self.status = status
            self.metric_attributes[a.HTTP_RESPONSE_STATUS_CODE] = status
            span = self.request_span
            span.set_attribute(a.HTTP_RESPONSE_STATUS_CODE, status)
            if http_version:
                span.set_attribute(a.NETWORK_PROTOCOL_VERSION, http_version.rsplit("/", 1)[-1])
            if status >= 400:
                span.set_attribute(a.ERROR_TYPE, str(status))
                span.set_status(Status(StatusCode.ERROR))
            content_type = (header("content-type") or "").lower().encode("latin-1", "replace")
            media_type = content_type.split(b";", 1)[0].strip()
            if media_type in STREAMING_TYPES or header("content-length") is None:
                self.streamed = True
            settings = self.telemetry.settings
            encoding = (header("content-encoding") or "identity").strip().lower()
            if settings.payloads and (decoded or encoding == "identity"):
                self.reader = make_reader(
                    content_type, settings.payload_max_event_bytes, perf_counter
                )

    def arrived(self, chunk: bytes, at: float) -> None:
        """A non-empty chunk is about to be handed to the caller: note it, count it later.

        Only stores, so the caller gets the chunk at once; :meth:`settle` counts it once
        the caller has it. The first chunk's time also goes to the exchange (and to a
        relay's server exchange, for the hop) here, before the relay can forward it.
        """
        if self.pending is not None:
            self.settle()
        self.pending = chunk
        self.pending_at = at
        exchange = self.exchange
        if exchange.first_byte_at is None:
            exchange.first_byte(at, at, 0, final=False)
            upstream_of = self.upstream_of
            if upstream_of is not None and self.streamed:
                upstream_of.upstream_first_byte(at, at - exchange.started_at)

    def settle(self) -> None:
        """Count the chunk the caller now has (the per-chunk path).

        An adapter may note a later chunk itself (``pending_at``, then ``pending``)
        instead of calling :meth:`arrived`: only the first chunk needs more.
        """
        chunk = self.pending
        if chunk is None:
            return
        self.pending = None
        at = self.pending_at
        self.exchange.chunk(at, at, len(chunk))
        reader = self.reader
        if reader is not None:
            reader.feed(chunk)
        if not self.first_byte_done:
            self.first_byte_done = True
            self.first_byte(at)

    def first_byte(self, at: float) -> None:
        """The caller has the first chunk: end the request span, start the stream's."""
        with self.telemetry.guard("client first byte"):
            ttfb = at - self.exchange.started_at
            span = self.request_span
            span.set_attribute(a.STREAM_TIME_TO_FIRST_BYTE, ttfb)
            self.telemetry.instruments.time_to_first_byte.record(ttfb, self.metric_attributes)
            if not self.streamed:
                return
            at_ns = self.started_at_ns + int(ttfb * 1e9)
            self.stream_span = self.telemetry.tracer.start_span(
                f"{self.method} stream",
                context=self.context,
                kind=SpanKind.INTERNAL,
                start_time=at_ns,
                attributes=dict(self.metric_attributes),
            )
            span.end(end_time=at_ns)
            active = self.telemetry.active
            active.add(-1, self.active_attributes)
            self.active_attributes = {
                **self.active_attributes,
                a.PHASE: termination.PHASE_STREAMING,
            }
            active.add(1, self.active_attributes)

    def end(self, *, error: BaseException | None = None, body_complete: bool = False) -> None:
        """The call is over: the body ended, the caller closed it, or a read failed.

        Runs once; later calls (a close after the end) do nothing. Never raises.
        """
        if self.ended:
            return
        self.ended = True
        with self.telemetry.guard("client end"):
            self.settle()
            now = perf_counter()
            exchange = self.exchange
            if body_complete:
                exchange.complete(now, now)
            summary: PayloadSummary | None = None
            if self.reader is not None:
                summary = self.reader.finish()
            reason = termination.classify_client(
                error=error,
                body_complete=exchange.phase is Phase.COMPLETE,
                payload_truncated=summary is not None and summary.truncated,
                payload_whole=summary is not None
                and summary.format is not None
                and not summary.truncated,
            )
            exchange.end(now)
            self.telemetry.record_end(self, reason, error, summary)
        with self.telemetry.guard("client span end"):
            span = self.stream_span if self.stream_span is not None else self.request_span
            if span.is_recording():
                ended = self.exchange.ended_at - self.exchange.started_at
                span.end(end_time=self.started_at_ns + int(ended * 1e9))
        with self.telemetry.guard("client active counter"):
            self.telemetry.active.add(-1, self.active_attributes)
