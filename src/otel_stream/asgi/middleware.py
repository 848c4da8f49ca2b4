"""The ASGI middleware: one request span up to the first body byte, one stream span after.

The adapter between ASGI and the transport-agnostic core: it reads the scope, forwards
every message, and tells the :class:`~otel_stream.exchange.Exchange` and its
:class:`~otel_stream.recorder.Record` what happened.

Choices made on purpose (read before "fixing"):

* **Forward first.** For each message the app sends, the clock is read, the message is
  handed to the server's ``send`` and awaited (that await is the client's
  backpressure), and only then does the middleware count it, decide whether it was the
  first byte, open or close spans and read its payload. The bytes are immutable, so
  reading them after the send is safe; the payload reader's clock returns the time the
  chunk was handed over, so the first token is timed as if read before.
* **Where the first byte is.** ``http.response.start`` carries headers only; Starlette
  sends it before the first token exists, so it is not the first byte. The first byte
  is the first body message with a non-empty body. For ``text/event-stream`` a chunk
  that holds only comments (``: ping``) or no ``data`` line is not it either:
  sse-starlette pings while the model is still thinking. The time of the first raw
  byte is kept as ``http.stream.time_to_first_raw_byte`` on the request span.
* **After the client left** nothing more is counted or read: chunks, bytes, events,
  tokens and finish reasons describe what the client received. A client that left
  while waiting keeps the exchange in the waiting phase: nobody receives a later first
  byte, so there is no stream span.
* **Nothing per chunk.** A 2,000-token answer is 2,000 body messages. Per message the
  middleware does two clock reads, a few integer adds and the awaited ``send``; spans and
  metrics are touched at the first byte and at the end only.
* **Given a Starlette or FastAPI app** (``app = StreamingMiddleware(app)``), the
  middleware does its work inside the app's middleware stack, where ``add_middleware``
  would put it: FastAPI's built-in telemetry starts its SERVER span from the request
  headers whatever span is current, so wrapping from outside would make two traces.
* **Disconnects** are seen by a watcher that reads ``receive`` on the app's behalf
  without stealing messages: see :mod:`otel_stream.asgi.disconnect`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from time import perf_counter, time_ns
from typing import Any, cast

from opentelemetry import context
from opentelemetry.instrumentation._semconv import _StabilityMode
from opentelemetry.instrumentation.asgi import (
    asgi_getter,
    collect_custom_headers_attributes,
    collect_request_attributes,
    get_host_port_url_tuple,
)
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, TracerProvider
from opentelemetry.util.http import (
    normalise_request_header_name,
    normalise_response_header_name,
)

from otel_stream import shutdown, termination
from otel_stream.asgi.disconnect import DisconnectWatcher
from otel_stream.asgi.routes import route_of
from otel_stream.asgi.types import ASGIApp, Message, Receive, Scope, Send
from otel_stream.config import Settings, explain_unknown_options, given_settings
from otel_stream.exchange import Exchange, Phase, current_exchange
from otel_stream.guard import failsafe, guarded
from otel_stream.payloads import PayloadReader, make_reader
from otel_stream.payloads.events import sse_chunk_has_event
from otel_stream.recorder import Record, server_parent
from otel_stream.server import (
    INSTRUMENTED_KEY,
    RequestAttributes,
    ServerExchange,
    ServerMiddleware,
    finish_request_attributes,
    hashable,
    wants_accel_buffering_header,
)

ServerRequestHook = Callable[[Span, Scope], None]

#: Set in the scope of an instrumented request, so an app is never instrumented twice.
SCOPE_KEY = INSTRUMENTED_KEY

_BODY = "http.response.body"
_START = "http.response.start"
_TRAILERS = "http.response.trailers"
_ZEROCOPY = "http.response.zerocopysend"
_PATHSEND = "http.response.pathsend"
_BODY_KINDS = frozenset({_BODY, _ZEROCOPY, _PATHSEND})
_STREAMING = Phase.STREAMING
_WAITING = Phase.WAITING
_ACCEL_BUFFERING = b"x-accel-buffering"


class StreamingMiddleware(ServerMiddleware):
    """Trace and measure streaming HTTP responses, split at the first body byte.

    Args:
        app: The ASGI application to wrap.
        tracer_provider: Tracer provider to use; the global one if omitted.
        meter_provider: Meter provider to use; the global one if omitted.
        server_request_hook: Called with the request span and the scope when a request
            starts; an exception it raises is logged once and ignored.
        enabled, excluded_urls, ttfb_buckets, duration_buckets, gap_buckets,
        chunks_buckets, body_size_buckets, time_per_output_token_buckets, payloads,
        payload_max_event_bytes, accel_buffering_header, cancel_on_disconnect: The
            settings of docs/configuration.md; each omitted one falls back to its
            ``OTEL_STREAM_*`` variable, then to its default.
    """

    @explain_unknown_options
    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        server_request_hook: ServerRequestHook | None = None,
        enabled: bool | None = None,
        excluded_urls: str | Sequence[str] | None = None,
        ttfb_buckets: Sequence[float] | None = None,
        duration_buckets: Sequence[float] | None = None,
        gap_buckets: Sequence[float] | None = None,
        chunks_buckets: Sequence[float] | None = None,
        body_size_buckets: Sequence[float] | None = None,
        time_per_output_token_buckets: Sequence[float] | None = None,
        payloads: bool | None = None,
        payload_max_event_bytes: int | None = None,
        accel_buffering_header: bool | None = None,
        cancel_on_disconnect: bool | None = None,
    ) -> None:
        self.app = app
        self.set_up(
            Settings.from_options(**given_settings(locals())),
            tracer_provider,
            meter_provider,
            server_request_hook,
        )
        #: Given a Starlette or FastAPI app, the work is done inside its stack.
        self.moved_inside = self._active and _move_inside(app, self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.moved_inside and scope["type"] == "http":
            await self.app(scope, receive, send)  # the app's stack calls `serve`
            return
        await self.serve(self.app, scope, receive, send)

    async def serve(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Instrument one exchange of ``app``."""
        if scope["type"] != "http" or not self._active or SCOPE_KEY in scope:
            if scope["type"] == "lifespan" and self._active:
                send = _flushing_lifespan_send(send)
            await app(scope, receive, send)
            return
        scope[SCOPE_KEY] = True
        responder = self._responder(app, scope, receive, send)
        if responder is None:
            await app(scope, receive, send)
        else:
            await responder.run()

    @guarded("request start")
    def _responder(
        self, app: ASGIApp, scope: Scope, receive: Receive, send: Send
    ) -> _Responder | None:
        """The instrumented exchange of this request, or None when its URL is excluded."""
        if self.has_excluded_urls:  # building the URL costs microseconds: only if needed
            url = get_host_port_url_tuple(scope)[2]  # type: ignore[no-untyped-call]
            if self.settings.excluded_urls.url_disabled(url):
                return None
        return _Responder(self, app, scope, receive, send)


class _InsideStack:
    """Where a ``StreamingMiddleware`` given a Starlette app does its work: in the stack."""

    def __init__(self, app: ASGIApp, outer: StreamingMiddleware) -> None:
        self.app = app
        self.outer = outer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.outer.serve(self.app, scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _move_inside(app: ASGIApp, middleware: StreamingMiddleware) -> bool:
    """Put ``middleware``'s work inside a Starlette or FastAPI app's middleware stack.

    FastAPI's built-in telemetry (and Starlette's ``OpenTelemetryMiddleware``) start
    their SERVER span from the request headers whatever span is current, so a
    middleware wrapped around the app from outside would start a second trace. Inside
    the stack, directly below ``ServerErrorMiddleware`` (where ``add_middleware`` puts
    it), the request span is their INTERNAL child, or the SERVER span when they are off.
    Returns False, leaving the app wrapped from outside, for any other app.
    """
    starlette = sys.modules.get("starlette.applications")
    if starlette is None or not isinstance(app, starlette.Starlette):
        return False
    with failsafe("placing the middleware in the app's stack"):
        stack = app.middleware_stack
        if stack is None:
            from starlette.middleware import Middleware

            app.user_middleware.insert(0, Middleware(_InsideStack, outer=middleware))
            return True
        if type(stack).__name__ == "ServerErrorMiddleware" and callable(
            getattr(stack, "app", None)
        ):
            stack.app = _InsideStack(stack.app, middleware)  # built already: insert in place
            return True
    return False


def _flushing_lifespan_send(send: Send) -> Send:
    """Flush telemetry when the app reports its lifespan shutdown complete."""

    async def lifespan_send(message: Message) -> None:
        if message.get("type") == "lifespan.shutdown.complete":
            with failsafe("shutdown flush"):
                shutdown.flush()
        await send(message)

    return lifespan_send


def _is_disconnect_error(error: BaseException) -> bool:
    return type(error).__name__ in ("ClientDisconnect", "ClientDisconnected")


def _request_attributes(middleware: StreamingMiddleware, scope: Scope) -> RequestAttributes:
    """The sanitized method, the request span's attributes and the metrics' attributes."""
    key = _attributes_key(scope)
    kept = middleware.kept_attributes
    answer = kept.get(key)
    if answer is None:
        # Without its query: its only attribute is dropped, and a query that is not UTF-8
        # would make contrib raise where a kept answer would not.
        attributes: dict[str, Any] = collect_request_attributes(  # type: ignore[no-untyped-call]
            {**scope, "query_string": b""}, _StabilityMode.HTTP
        )
        method, metric_attributes = finish_request_attributes(
            attributes, scope.get("method"), scope.get("scheme"), scope.get("http_version")
        )
        answer = method, attributes, metric_attributes
        kept.keep(key, answer)
    if middleware.request_headers:
        answer[1].update(
            collect_custom_headers_attributes(
                cast(dict[str, Any], scope),
                middleware.sanitize_headers,
                middleware.request_headers,
                normalise_request_header_name,
            )
        )
    return answer


def _attributes_key(scope: Scope) -> tuple[Any, ...] | None:
    """Everything of ``scope`` contrib's request attributes depend on, or None.

    That is the method, path, scheme, HTTP version, server and client address (a
    connection), and the first ``host`` and ``user-agent`` headers. The query string is
    left out: its only attribute, ``url.query``, is dropped (query values never reach
    telemetry). None (not kept) for a request with a second ``host`` or ``user-agent``
    header, a header name that is not ``bytes``, or a part that cannot be hashed.
    """
    host = agent = None
    for name, value in scope.get("headers") or ():
        if type(name) is not bytes:
            return None  # not as ASGI says: contrib decodes it, a key would not match
        lowered = name.lower()
        if lowered == b"host":
            if host is not None:
                return None
            host = value
        elif lowered == b"user-agent":
            if agent is not None:
                return None
            agent = value
    return hashable(
        (
            scope.get("method"),
            scope.get("path"),
            scope.get("scheme"),
            scope.get("http_version"),
            scope.get("server"),
            scope.get("client"),
            host,
            agent,
        )
    )


class _Responder(ServerExchange):
    """One instrumented request: the app's ``send``, and what it tells the core."""

    __slots__ = (
        "app",
        "body_complete",
        "headers_sent",
        "middleware",
        "scope",
        "server_send",
        "sse",
        "trailers_expected",
        "watcher",
    )

    def __init__(
        self,
        middleware: StreamingMiddleware,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        started_at = perf_counter()
        start_ns = time_ns()
        self.middleware = middleware
        self.app = app
        self.scope = scope
        self.server_send = send
        self.state = state = Exchange(started_at)
        # Response state (ASGI's own: the exchange knows no headers or trailers).
        self.sse = False
        self.trailers_expected = False
        self.body_complete = False
        self.headers_sent = False
        #: Fed every chunk after it was sent, until the client leaves.
        self.reader: PayloadReader | None = None
        settings = middleware.settings
        self.watcher = DisconnectWatcher(receive, state, settings.cancel_on_disconnect)
        method, span_attributes, metric_attributes = _request_attributes(middleware, scope)
        parent, kind = server_parent(scope, asgi_getter, scope.get("headers") or ())
        recorder = middleware.recorder
        assert recorder is not None
        self.record: Record = recorder.start(
            state,
            method=method,
            start_ns=start_ns,
            parent=parent,
            kind=kind,
            span_attributes=span_attributes,
            metric_attributes=metric_attributes,
        )
        hook = middleware.server_request_hook
        if hook is not None:
            with failsafe("server_request_hook"):
                hook(self.record.request_span, scope)

    # The app's view of the connection ------------------------------------------------

    async def run(self) -> None:
        token = context.attach(self.record.context)
        exchange_token = current_exchange.set(self.state)
        watcher = self.watcher
        try:
            await self.app(self.scope, watcher.receive, self.send)
        except BaseException as error:
            watcher.stop()
            if watcher.cancelled_app and termination.is_cancellation(error):
                uncancel = getattr(watcher.app_task, "uncancel", None)  # Python 3.11+
                if uncancel is None or uncancel() == 0:
                    # Our own cancellation: the client is gone and the app has stopped.
                    self.end(None)
                    return
            self.end(error)
            raise
        else:
            watcher.stop()
            if not self.response_complete() and not self.state.peer_left:
                await watcher.poll()
            self.end(None)
        finally:
            current_exchange.reset(exchange_token)
            context.detach(token)

    async def send(self, message: Message) -> None:
        state = self.state
        if state.phase is _STREAMING and message["type"] == _BODY:
            # The per-chunk path: forward, then count and read.
            at = perf_counter()
            try:
                await self.server_send(message)
            except BaseException as error:
                self.send_raised(error, at, message)
                raise
            sent_at = perf_counter()
            body = message.get("body")
            if body:
                state.chunk(at, sent_at, len(body))
            else:
                state.empty_send(at, sent_at)
            if not message.get("more_body"):
                self.body_ended(at, sent_at)  # before reading: it may forgive a late leave
            if body:
                reader = self.reader
                if reader is not None and not state.peer_left:
                    reader.feed(body)
            return
        await self.send_other(message)

    async def send_other(self, message: Message) -> None:
        """Every message but a body chunk of a stream: headers, first byte, trailers."""
        kind = message.get("type")
        if kind == _START:
            if self.middleware.settings.accel_buffering_header:
                message = _with_accel_buffering(message)
            await self.forward(message, perf_counter())
            self.response_started(message)
            self.watcher.watch_soon()
            return
        at = perf_counter()
        await self.forward(message, at)
        sent_at = perf_counter()
        if kind in _BODY_KINDS and not self.body_complete:
            self.body_message(kind, message, at, sent_at)
        elif kind == _TRAILERS and not message.get("more_trailers", False):
            self.state.complete(at, sent_at)

    async def forward(self, message: Message, at: float) -> None:
        try:
            await self.server_send(message)
        except BaseException as error:
            self.send_raised(error, at)
            raise

    # What the messages mean (after they were sent) -------------------------------------

    @guarded("response start")
    def response_started(self, message: Message) -> None:
        if self.headers_sent or self.state.phase is not _WAITING:
            return  # a second start (a protocol violation): the server refuses it
        self.headers_sent = True
        status = int(message.get("status", 200))
        content_type = b""
        for name, value in message.get("headers") or ():
            if bytes(name).lower() == b"content-type":
                content_type = bytes(value).lower()
                break
        self.sse = content_type.startswith(b"text/event-stream")
        self.trailers_expected = bool(message.get("trailers", False))
        settings = self.middleware.settings
        if settings.payloads:
            self.reader = make_reader(
                content_type, settings.payload_max_event_bytes, self.chunk_clock
            )
        record = self.record
        self.learn_route()
        headers = None
        middleware = self.middleware
        if middleware.response_headers:
            headers = collect_custom_headers_attributes(
                cast(dict[str, Any], message),
                middleware.sanitize_headers,
                middleware.response_headers,
                normalise_response_header_name,
            )
        record.response_started(status, headers)

    @guarded("first byte")
    def body_message(self, kind: str, message: Message, at: float, sent_at: float) -> None:
        """A body (or zero-copy, or path-send) message that is not a chunk of a stream."""
        body = b""
        if kind == _PATHSEND:  # a whole file: its size is not known without I/O
            size, counted, final = 1, 0, True
        elif kind == _ZEROCOPY:
            counted = int(message.get("count") or 0)
            size = counted or 1
            final = not message.get("more_body", False)
        else:
            body = message.get("body", b"")
            size = counted = len(body)
            final = not message.get("more_body", False)
        state = self.state
        if state.phase is _STREAMING:  # a zero-copy/path-send message of a stream
            state.chunk(at, sent_at, counted)
            if final:
                self.body_ended(at, sent_at)
            return
        if size:
            # An SSE chunk of comments only (": ping") is not the first byte; a file sent
            # zero-copy cannot be read, so it counts as data.
            first_byte = final or not self.sse or kind != _BODY or sse_chunk_has_event(body)
        else:
            first_byte = final  # an empty response: complete is as good as a first byte
        if first_byte and state.peer_left:
            first_byte = False  # the client left while waiting: see the module docstring
        if first_byte:
            state.first_byte(at, sent_at, counted, more=not final, empty=not size)
        elif size:
            state.raw_chunk(at, counted)
        if final:
            self.body_ended(at, sent_at)
        reader = self.reader
        if body and reader is not None and not state.peer_left:
            reader.feed(body)
        if first_byte:
            self.reached_first_byte()

    def body_ended(self, at: float, sent_at: float) -> None:
        self.body_complete = True
        if not self.trailers_expected:
            self.state.complete(at, sent_at)

    def route(self) -> str | None:
        return route_of(self.scope)

    def response_complete(self) -> bool:
        return self.state.phase is Phase.COMPLETE

    def send_raised(self, error: BaseException, at: float, chunk: Message | None = None) -> None:
        """``send`` raised: the client is gone if it is an OSError or a server's disconnect.

        The chunk whose send failed counts: the server may have written part of it.
        """
        if isinstance(error, OSError) or _is_disconnect_error(error):
            now = perf_counter()
            state = self.state
            if chunk is not None and not state.peer_left:
                body = chunk.get("body", b"")
                if body:
                    state.chunk(at, now, len(body))
            state.failed_send(now)

    # The end -------------------------------------------------------------------------

    def end(self, error: BaseException | None) -> None:
        """The app returned or raised: decide the reason, then record."""
        if error is not None and _is_disconnect_error(error):
            self.state.failed_send(perf_counter())  # the server's "client disconnected"
            error = None
        self.finish(error)


def _with_accel_buffering(message: Message) -> Message:
    """``X-Accel-Buffering: no`` added to a streaming response that lacks it."""
    content_type = ""
    has_header = False
    for name, value in message.get("headers") or ():
        lowered = bytes(name).lower()
        if lowered == _ACCEL_BUFFERING:
            has_header = True
        elif lowered == b"content-type":
            content_type = bytes(value).decode("latin-1").lower()
    if not wants_accel_buffering_header(content_type, has_header):
        return message
    message = dict(message)
    message["headers"] = [*message.get("headers", ()), (_ACCEL_BUFFERING, b"no")]
    return message
