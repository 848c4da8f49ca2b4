"""One outgoing call, from the request to the end of the body its caller reads.

The HTTP client adapters (``httpx.py``, ``aiohttp.py``) know how a library sends a
request and hands its body to the caller. :class:`ClientCall` is what they share: it
feeds the core's :class:`~otel_stream.exchange.Exchange` the events they report and
tells the exchange's :class:`~otel_stream.recorder.Record` (the client side of the
recorder) when the response started, when the first byte came and how the call ended.

Choices made on purpose (read before "fixing"):

* **Where the first byte is.** The first non-empty body chunk the *caller's read*
  returns, not the response headers: contrib's HTTP client instrumentations end their
  span there, which is the moment an LLM gateway has learned nothing yet. For SSE, a
  chunk of comments only (``: ping``) is not it, as on the server side.
* **Forward first.** Each chunk goes to the caller before otel-stream counts it or
  reads its payload: an adapter notes the chunk (:meth:`arrived`, or two stores on the
  per-chunk path) before handing it over and calls :meth:`settle` once the caller has
  it. Only up to the first byte is the exchange told before the hand-over, so that a
  relay's server exchange knows its upstream's first byte when it forwards that chunk
  (the hop); spans and metrics still come after.
* **Which responses are streams.** SSE and NDJSON, a body without a
  ``Content-Length`` (chunked or until-close), or a body the caller asked to stream
  (httpx's ``stream=True``, ``Client.stream()``, every SDK's streaming call). Those get
  the request span up to the first byte and a stream span after it. Any other response
  (a JSON answer read whole) gets the request span only, ended when its body has been
  read, and no stream metrics.
* **The end.** The caller read the end of the body (``completed``, or ``incomplete``
  when an LLM format's end marker is missing); closed or dropped the response first,
  or was cancelled in a read (``consumer_closed``, but ``completed`` once an LLM
  format's end marker was read: the OpenAI SDK closes its response at ``data: [DONE]``
  without draining it, and a relay passing that on is cancelled when its own caller
  leaves, often while it waits for the end of the upstream's body); the connection
  ended before the body did (``server_disconnect``); any other failure (``error``,
  with ``error.type``).
* **One CLIENT span.** Under another instrumentation's CLIENT span (the anthropic
  SDK's call span) or above one (contrib's httpx and aiohttp instrumentations start
  theirs inside, once per attempt), otel-stream's request span is INTERNAL and leaves
  the trace headers to the owner of the CLIENT span; alone, it is the CLIENT span and
  injects the trace context with the global propagator, as contrib does.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter, time_ns
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.http import sanitize_method

from otel_stream import attributes as a
from otel_stream import termination
from otel_stream.exchange import Exchange, Phase, current_exchange
from otel_stream.guard import guarded, log_failure
from otel_stream.payloads import PayloadReader, PayloadSummary, make_reader
from otel_stream.payloads.events import sse_chunk_has_event
from otel_stream.recorder import Record, Recorder

#: Media types whose bodies are streams, whatever else the response says.
STREAMING_TYPES = (
    b"text/event-stream",
    b"application/x-ndjson",
    b"application/jsonl",
    b"application/json-lines",
)
_SSE = b"text/event-stream"
#: The HTTP conventions' attribute; here without the query, the fragment or user info.
URL_FULL = "url.full"

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
    """The exchange, record and payload reader of one outgoing call.

    Args:
        recorder: The instrumentor's client-side recorder.
        method: The request method, as sent.
        scheme, host, port, path: The parts of the URL that may reach telemetry (the
            query, the fragment and any user info never do).
        streams: The caller asked for the body as a stream (the response may still say so).
        nested: Another instrumentation's CLIENT span will be inside this call.
    """

    __slots__ = (
        "ended",
        "exchange",
        "first_byte_recorded",
        "nested",
        "pending",
        "pending_at",
        "pending_counted",
        "reader",
        "record",
        "sse",
        "streams",
        "upstream_of",
    )

    def __init__(
        self,
        recorder: Recorder,
        method: str,
        scheme: str,
        host: str,
        port: int | None,
        path: str,
        *,
        streams: bool,
        nested: bool,
    ) -> None:
        self.exchange = Exchange(perf_counter())
        start_ns = time_ns()
        #: The body is a stream: it gets a stream span.
        self.streams = streams
        self.nested = nested or is_client_span(trace.get_current_span())
        self.reader: PayloadReader | None = None
        self.sse = False
        self.ended = False
        #: The chunk handed to the caller and not counted yet, and when it arrived.
        self.pending: bytes | None = None
        self.pending_at = 0.0
        #: The pending chunk was counted before the hand-over (up to the first byte).
        self.pending_counted = False
        self.first_byte_recorded = False
        #: The server exchange this call runs in (a relay), told of its first byte.
        self.upstream_of: Exchange | None = current_exchange.get()
        method = sanitize_method(method)
        metric_attributes: dict[str, Any] = {a.HTTP_REQUEST_METHOD: method, a.SERVER_ADDRESS: host}
        if port is not None:
            metric_attributes[a.SERVER_PORT] = port
        span_attributes = {
            **metric_attributes,
            URL_FULL: url_without_query(scheme, host, port, path),
        }
        self.record: Record = recorder.start(
            self.exchange,
            method=method,
            start_ns=start_ns,
            parent=otel_context.get_current(),
            kind=SpanKind.INTERNAL if self.nested else SpanKind.CLIENT,
            span_attributes=span_attributes,
            metric_attributes=metric_attributes,
        )

    @property
    def context(self) -> otel_context.Context:
        """The context with the request span current (for the request being sent)."""
        return self.record.context

    # Events, in the order they happen ----------------------------------------------

    @guarded("client trace context")
    def inject(self, headers: Any) -> None:
        """Write the trace context into the outgoing ``headers`` if this is the CLIENT span."""
        if not self.nested:
            propagate.inject(headers, context=self.record.context)

    @guarded("client response")
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
        content_type = (header("content-type") or "").lower().encode("latin-1", "replace")
        media_type = content_type.split(b";", 1)[0].strip()
        self.sse = media_type == _SSE
        if media_type in STREAMING_TYPES or header("content-length") is None:
            self.streams = True
        settings = self.record.recorder.settings
        encoding = (header("content-encoding") or "identity").strip().lower()
        if settings.payloads and (decoded or encoding == "identity"):
            self.reader = make_reader(
                content_type, settings.payload_max_event_bytes, self.chunk_clock
            )
        version = http_version.rsplit("/", 1)[-1] if http_version else None
        self.record.response_started(
            status, {a.NETWORK_PROTOCOL_VERSION: version} if version else None
        )

    def arrived(self, chunk: bytes, at: float) -> None:
        """A non-empty chunk is about to be handed to the caller: note it, count it later.

        Up to the first byte the exchange is told now (the first byte, or an SSE chunk
        of comments before it), and a relay's server exchange learns the first byte's
        time, before the relay can forward it.
        """
        if self.pending is not None:
            self.settle()
        self.pending = chunk
        self.pending_at = at
        exchange = self.exchange
        if exchange.phase is not Phase.WAITING:
            return
        self.pending_counted = True
        if self.sse and not sse_chunk_has_event(chunk):
            exchange.raw_chunk(at, len(chunk))
            return
        exchange.first_byte(at, at, len(chunk), more=self.streams)
        upstream_of = self.upstream_of
        if upstream_of is not None and self.streams:
            upstream_of.upstream_first_byte(at, at - exchange.started_at)

    def settle(self) -> None:
        """Count the chunk the caller now has (the per-chunk path).

        An adapter may note a chunk after the first byte itself (``pending_at``, then
        ``pending``) instead of calling :meth:`arrived`.
        """
        chunk = self.pending
        if chunk is None:
            return
        self.pending = None
        if self.pending_counted:
            self.pending_counted = False
        else:
            at = self.pending_at
            self.exchange.chunk(at, at, len(chunk))
        reader = self.reader
        if reader is not None:
            reader.feed(chunk)
        if not self.first_byte_recorded and self.exchange.first_byte_at is not None:
            self.first_byte_recorded = True
            self.record.first_byte(
                self.exchange, reader.first_token_at if reader is not None else None
            )

    def chunk_clock(self) -> float:
        """The payload reader's clock: when the chunk being read arrived."""
        return self.exchange.last_chunk_at

    def body_ended(self, at: float) -> None:
        """The caller got the end of the body at ``at``; :meth:`end` records it later."""
        self.exchange.complete(at, at)

    def end(self, *, error: BaseException | None = None, body_complete: bool = False) -> None:
        """The call is over: the body ended, the caller closed it, or a read failed.

        Runs once; later calls (a close after the end) do nothing. Never raises.
        """
        if self.ended:
            return
        self.ended = True
        now = perf_counter()
        decided = self._outcome(error, body_complete, now)
        reason, summary = decided if decided is not None else (termination.ERROR, None)
        self.exchange.end(now)
        self.record.end(self.exchange, reason, error, summary)

    @guarded("client end")
    def _outcome(
        self, error: BaseException | None, body_complete: bool, now: float
    ) -> tuple[str, PayloadSummary | None]:
        """The reason and the payload summary, once the last chunk is counted."""
        self.settle()
        exchange = self.exchange
        if body_complete and exchange.phase is not Phase.COMPLETE:
            exchange.complete(now, now)
        reader = self.reader
        summary = reader.finish() if reader is not None else None
        recognised = summary is not None and summary.format is not None
        truncated = summary is not None and summary.truncated
        failure = reader.error if reader is not None else None
        if failure is not None:
            log_failure("payload reader", failure)
        # A reader that failed cannot tell whether the end marker came: not whole.
        whole = recognised and not truncated and failure is None
        reason = exchange.client_outcome(error, payload_truncated=truncated, payload_whole=whole)
        return reason, summary
