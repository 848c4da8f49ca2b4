"""The ASGI middleware: one request span up to the first body byte, one stream span after.

Choices made on purpose (read before "fixing"):

* **Where the first byte is.** ``http.response.start`` carries headers only; Starlette
  sends it before the first token exists, so it is not the first byte. The first byte is
  the first body message with a non-empty body. For ``text/event-stream`` a chunk that
  holds only comments (``: ping``) or no ``data`` line is not it either: sse-starlette
  pings while the model is still thinking. The time of the first raw byte is kept as
  ``http.stream.time_to_first_raw_byte`` on the request span.
* **How a disconnect is seen.** uvicorn's ``send`` returns silently after the client
  left, and Starlette's ``StreamingResponse`` then finishes normally, so ``send`` alone
  cannot tell a disconnect. Once the app has read the whole request body (or has started
  its response), a watcher task reads the server's ``receive`` on the app's behalf and
  hands every message it gets to the app, in order, on the app's next ``receive``:
  nothing is stolen (hypercorn delivers each message only once) and the app that never
  calls ``receive`` again is covered too. The watcher never holds more than one request
  body chunk, so uploads keep their backpressure. It needs asyncio; under trio the
  middleware asks ``receive`` once, waiting at most 10 ms, when the app returns early.
* **Nothing per chunk.** A 2,000-token answer is 2,000 body messages. Per message the
  middleware does a clock read, a few integer adds and the awaited ``send``; spans and
  metrics are touched at the first byte and at the end only.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter, time_ns
from typing import Any, cast

from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation._semconv import _StabilityMode
from opentelemetry.instrumentation.asgi import (
    asgi_getter,
    collect_custom_headers_attributes,
    collect_request_attributes,
    get_host_port_url_tuple,
)
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.http import (
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE,
    SanitizeValue,
    get_custom_headers,
    normalise_request_header_name,
    normalise_response_header_name,
    sanitize_method,
)

from otel_stream import shutdown, termination
from otel_stream import telemetry as t
from otel_stream.config import Settings
from otel_stream.payloads import PayloadReader, PayloadSummary, make_reader

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ServerRequestHook = Callable[[Span, Scope], None]

logger = logging.getLogger("otel_stream")

#: Set in the scope of an instrumented request, so an app is never instrumented twice.
SCOPE_KEY = "otel_stream.instrumented"

_BODY = "http.response.body"
_START = "http.response.start"
_TRAILERS = "http.response.trailers"
_ZEROCOPY = "http.response.zerocopysend"
_PATHSEND = "http.response.pathsend"
_DISCONNECT = "http.disconnect"
_STREAMING_TYPES = (
    b"text/event-stream",
    b"application/x-ndjson",
    b"application/jsonl",
    b"application/json-lines",
)
#: How long after the request body (or the response start) the disconnect watcher starts.
_WATCH_AFTER = 0.001


class StreamingMiddleware:
    """Trace and measure streaming HTTP responses, split at the first body byte.

    Args:
        app: The ASGI application to wrap.
        tracer_provider: Tracer provider to use; the global one if omitted.
        meter_provider: Meter provider to use; the global one if omitted.
        server_request_hook: Called with the request span and the scope when a request
            starts; an exception it raises is logged once and ignored.
        **options: The settings of docs/configuration.md (``enabled``,
            ``excluded_urls``, ``ttfb_buckets``, ``duration_buckets``, ``gap_buckets``,
            ``chunks_buckets``, ``body_size_buckets``,
            ``time_per_output_token_buckets``, ``payloads``,
            ``payload_max_event_bytes``, ``accel_buffering_header``,
            ``cancel_on_disconnect``); each falls back to its ``OTEL_STREAM_*``
            variable, then to its default.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        server_request_hook: ServerRequestHook | None = None,
        **options: Any,
    ) -> None:
        self.app = app
        self.settings = Settings.from_options(**options)
        self.has_excluded_urls = self.settings.has_excluded_urls
        self.server_request_hook = server_request_hook
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self._active = self.settings.enabled
        # Headers reach spans only when allowlisted by the standard OTel variables.
        self.request_headers = get_custom_headers(
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST
        )
        self.response_headers = get_custom_headers(
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE
        )
        self.sanitize_headers = SanitizeValue(
            get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS)
        )
        try:
            self.tracer = t.get_tracer(tracer_provider)
            self.instruments = t.Instruments(t.get_meter(meter_provider), self.settings)
        except Exception as error:
            t.log_failure("setup", error)
            self._active = False
        if self._active:
            shutdown.register(tracer_provider, meter_provider)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._active or SCOPE_KEY in scope:
            if scope["type"] == "lifespan" and self._active:
                send = self._flushing_lifespan_send(send)
            await self.app(scope, receive, send)
            return
        scope[SCOPE_KEY] = True
        try:
            excluded = False
            if self.has_excluded_urls:  # building the URL costs microseconds: only if needed
                url = get_host_port_url_tuple(scope)[2]  # type: ignore[no-untyped-call]
                excluded = self.settings.excluded_urls.url_disabled(url)
            exchange = None if excluded else _Exchange(self, scope, receive, send)
        except Exception as error:
            t.log_failure("request start", error)
            exchange = None
        if exchange is None:
            await self.app(scope, receive, send)
        else:
            await exchange.run()

    def _flushing_lifespan_send(self, send: Send) -> Send:
        """Flush telemetry when the app reports its lifespan shutdown complete."""

        async def lifespan_send(message: Message) -> None:
            if message.get("type") == "lifespan.shutdown.complete":
                try:
                    shutdown.flush()
                except Exception as error:
                    t.log_failure("shutdown flush", error)
            await send(message)

        return lifespan_send


def route_of(scope: Scope) -> str | None:
    """The route template of Starlette/FastAPI (``scope["route"]``) or Litestar.

    Starlette keeps only the innermost route in the scope; the mounts it went through are
    in ``root_path``, with the values of their path parameters. Their templates are read
    from the router's own route table instead; when that fails there is no route, never
    a route that holds a value of the request.
    """
    route = scope.get("route")
    if route is not None:
        path_format = getattr(route, "path_format", None)
        is_mount = type(route).__name__ == "Mount"
        if is_mount or isinstance(path_format, str):
            if "app_root_path" in scope and scope.get("root_path") != scope["app_root_path"]:
                prefix = _mounts_template(scope)  # mounts were matched: not literal
            else:
                prefix = str(scope.get("root_path") or "")  # the server's, if any
            if prefix is None:
                return None
            if is_mount:
                return prefix or "/"
            return prefix.rstrip("/") + str(path_format) or "/"
    template = scope.get("path_template")
    return template if isinstance(template, str) else None


_CONVERTOR = re.compile(r"{([^:{}]+):[^{}]+}")


def _mounts_template(scope: Scope) -> str | None:
    """The templates of the mounts a Starlette request went through, joined, or None.

    Matches the request against the router's route table again, as Starlette did,
    following only mounts and hosts; checks that it arrives where Starlette did.
    """
    try:
        from starlette.routing import Host, Match, Mount
    except ImportError:
        return None
    try:
        routes = getattr(scope.get("router"), "routes", None)
        app_root = str(scope["app_root_path"])
        probe: dict[str, Any] = {
            "type": scope.get("type", "http"),
            "path": scope.get("path", ""),
            "root_path": app_root,
            "method": scope.get("method", "GET"),
            "headers": scope.get("headers") or [],
            "path_params": {},
        }
        template = app_root.rstrip("/")
        for _ in range(32):  # nesting depth; a cycle of mounts cannot loop forever
            if probe["root_path"] == scope.get("root_path"):
                return template
            for candidate in routes or ():
                if isinstance(candidate, (Mount, Host)):
                    match, child = candidate.matches(probe)
                    if match is Match.FULL:
                        break
            else:
                return None
            probe.update(child)
            if isinstance(candidate, Mount):
                template += _CONVERTOR.sub(r"{\1}", candidate.path)
            routes = candidate.routes
        return None
    except Exception as error:
        t.log_failure("route template", error)
        return None


def sse_chunk_has_event(body: bytes) -> bool:
    """False when an SSE chunk holds only comments or fields other than ``data``."""
    if not body.endswith((b"\n", b"\r")):
        return True  # an unfinished line may be the start of a data field
    return any(line == b"data" or line.startswith(b"data:") for line in body.splitlines())


def _carries_context(scope: Scope) -> bool:
    """Whether any header the global propagator reads is present (one pass, no decoding).

    Extracting from a carrier without those headers returns the current context, so
    skipping it changes nothing but saves decoding every header once per field.
    """
    global _propagator_fields
    textmap = propagate.get_global_textmap()
    if _propagator_fields[0] is not textmap:
        names = frozenset(field.lower().encode("latin-1") for field in textmap.fields)
        _propagator_fields = (textmap, names)
    fields = _propagator_fields[1]
    if not fields:  # a propagator that does not declare its fields: always extract
        return True
    return any(name in fields for name, _ in scope.get("headers") or ())


_propagator_fields: tuple[object, frozenset[bytes]] = (None, frozenset())


def _is_disconnect_error(error: BaseException) -> bool:
    return type(error).__name__ in ("ClientDisconnect", "ClientDisconnected")


class _Exchange:
    """The state of one instrumented request, from receipt to the end of its body."""

    # Slots: faster attribute access on the per-chunk path, less memory per open stream.
    __slots__ = (
        "active_attributes",
        "active_open",
        "app",
        "app_receiving",
        "app_task",
        "body_complete",
        "bytes",
        "cancelled_on_disconnect",
        "chunks",
        "completing",
        "context",
        "disconnect_bytes",
        "disconnect_chunks",
        "disconnected_at",
        "ended_at",
        "finished",
        "first_byte_at",
        "first_raw_byte_at",
        "inbox",
        "inbox_changed",
        "instruments",
        "last_chunk_at",
        "max_chunk_gap",
        "method",
        "metric_attributes",
        "middleware",
        "reader",
        "request_body_complete",
        "request_span",
        "request_span_open",
        "response_complete",
        "route",
        "scope",
        "send_failed",
        "send_wait",
        "server_receive",
        "server_send",
        "span_name",
        "sse",
        "started_at",
        "started_at_ns",
        "status",
        "stream_span",
        "stream_span_open",
        "streaming",
        "trailers_expected",
        "watch_handle",
        "watcher",
    )

    def __init__(
        self, middleware: StreamingMiddleware, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.middleware = middleware
        self.app = middleware.app
        self.instruments = middleware.instruments
        self.scope = scope
        self.server_receive = receive
        self.server_send = send
        self.started_at = perf_counter()
        self.started_at_ns = time_ns()

        # Response state.
        self.status: int | None = None
        self.streaming = False  # the first byte went out with more_body=True
        self.sse = False
        self.trailers_expected = False
        self.body_complete = False
        self.response_complete = False
        self.first_byte_at: float | None = None
        self.first_raw_byte_at: float | None = None
        self.ended_at: float | None = None
        # Hot-path counters.
        self.chunks = 0
        self.bytes = 0
        self.last_chunk_at = 0.0
        self.max_chunk_gap = 0.0
        self.send_wait = 0.0
        self.reader: PayloadReader | None = None
        # Disconnect detection.
        self.disconnected_at: float | None = None
        self.disconnect_chunks = 0
        self.disconnect_bytes = 0
        self.send_failed = False
        self.request_body_complete = False
        self.app_receiving = 0
        self.watcher: asyncio.Task[None] | None = None
        self.inbox: collections.deque[Message] = collections.deque()
        self.inbox_changed: asyncio.Event | None = None
        self.app_task: asyncio.Task[Any] | None = None
        self.watch_handle: asyncio.TimerHandle | None = None
        self.completing = False  # the message that completes the response is being sent
        self.finished = False
        self.cancelled_on_disconnect = False

        attributes: dict[str, Any] = collect_request_attributes(  # type: ignore[no-untyped-call]
            scope, _StabilityMode.HTTP
        )
        raw_method = scope.get("method")
        method = attributes.get(t.HTTP_REQUEST_METHOD)  # sanitized by the helper above
        if not method or not isinstance(raw_method, str) or raw_method != raw_method.strip():
            method = sanitize_method(str(raw_method or "").strip()) or "_OTHER"
            attributes[t.HTTP_REQUEST_METHOD] = method
        self.method = "HTTP" if method == "_OTHER" else method
        self.route: str | None = None
        self.metric_attributes: dict[str, Any] = {t.HTTP_REQUEST_METHOD: method}
        if scope.get("scheme"):
            self.metric_attributes[t.URL_SCHEME] = scope["scheme"]
        if scope.get("http_version"):
            self.metric_attributes[t.NETWORK_PROTOCOL_VERSION] = scope["http_version"]
        self.active_attributes: dict[str, Any] = {
            t.HTTP_REQUEST_METHOD: method,
            t.PHASE: termination.PHASE_WAITING,
        }

        attributes.pop("url.query", None)  # query values never reach telemetry
        server_address = attributes.get("server.address")
        if isinstance(server_address, str) and server_address.count(":") == 1:
            attributes["server.address"] = server_address.rsplit(":", 1)[0]
        if middleware.request_headers:
            attributes.update(
                collect_custom_headers_attributes(
                    cast(dict[str, Any], scope),
                    middleware.sanitize_headers,
                    middleware.request_headers,
                    normalise_request_header_name,
                )
            )

        parent = context.get_current()
        kind = SpanKind.SERVER
        current = trace.get_current_span(parent)
        if current.get_span_context().is_valid:
            # Already in a trace: stay in it, as a SERVER span only under a span that is
            # not a server span and is the local root (no server span can be above it).
            # INTERNAL otherwise: under another instrumentation's server span, under a
            # span of unknown kind (not recording, as an unsampled outer server span) or
            # under a local child span, which may have a server span above it.
            parent_context = getattr(current, "parent", None)
            if (
                not current.is_recording()
                or getattr(current, "kind", None) in (SpanKind.SERVER, None)
                or (parent_context is not None and not parent_context.is_remote)
            ):
                kind = SpanKind.INTERNAL
        elif _carries_context(scope):
            parent = propagate.extract(scope, getter=asgi_getter)  # type: ignore[misc]
        self.span_name = self.method
        self.request_span = middleware.tracer.start_span(
            self.span_name,
            context=parent,
            kind=kind,
            attributes=attributes,
            start_time=self.started_at_ns,
        )
        self.stream_span: Span | None = None
        self.request_span_open = True
        self.stream_span_open = False
        self.active_open = False
        self.context = trace.set_span_in_context(self.request_span, parent)
        try:
            self.instruments.active.add(1, self.active_attributes)
            self.active_open = True
        except Exception as error:
            t.log_failure("active counter", error)
        hook = middleware.server_request_hook
        if hook is not None:
            try:
                hook(self.request_span, scope)
            except Exception as error:
                t.log_failure("server_request_hook", error)

    # The app's view of the connection ------------------------------------------------

    async def run(self) -> None:
        token = context.attach(self.context)
        try:
            self.app_task = asyncio.current_task()
        except RuntimeError:  # not asyncio (trio): no watcher, see the module docstring
            self.app_task = None
        try:
            await self.app(self.scope, self.receive, self.send)
        except BaseException as error:
            self.finished = True
            self.stop_watcher()
            if self.cancelled_on_disconnect and termination.is_cancellation(error):
                uncancel = getattr(self.app_task, "uncancel", None)  # Python 3.11+
                if uncancel is None or uncancel() == 0:
                    # Our own cancellation: the client is gone and the app has stopped.
                    self.finish(None)
                    return
            self.finish(error)
            raise
        else:
            self.finished = True
            self.stop_watcher()
            if not self.response_complete and self.disconnected_at is None:
                await self.poll_disconnect()
            self.finish(None)
        finally:
            context.detach(token)

    async def send(self, message: Message) -> None:
        if self.streaming and message["type"] == _BODY:
            # The hot path: one clock read before and one after the awaited send.
            body = message.get("body", b"")
            size = len(body)
            now = perf_counter()
            if size:
                gap = now - self.last_chunk_at
                if gap > self.max_chunk_gap:
                    self.max_chunk_gap = gap
                self.last_chunk_at = now
                self.chunks += 1
                self.bytes += size
                if self.reader is not None:
                    try:
                        self.reader.feed(body)
                    except Exception as error:  # readers never raise; a second line of defence
                        self.reader_failed(error)
            more_body = message.get("more_body", False)
            if not more_body:
                self.completing = not self.trailers_expected
            try:
                await self.server_send(message)
            except BaseException as error:
                self.send_raised(error)
                raise
            self.send_wait += perf_counter() - now
            if not more_body:
                self.body_ended()
            return
        await self.send_other(message)

    async def send_other(self, message: Message) -> None:
        """Every message but a streaming body chunk: headers, first byte, trailers."""
        kind = message.get("type")
        now = perf_counter()
        first_byte = False
        timed = False  # the first byte, or a zero-copy/path-send chunk of a stream
        final = False
        if kind == _START:
            message = self.response_started(message)
            self.watch_for_disconnect()
        elif kind in (_BODY, _ZEROCOPY, _PATHSEND) and not self.body_complete:
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
                if size and self.reader is not None and self.disconnected_at is None:
                    try:
                        self.reader.feed(body)
                    except Exception as error:
                        self.reader_failed(error)
            waiting = self.first_byte_at is None
            if size:
                if self.first_raw_byte_at is None:
                    self.first_raw_byte_at = now
                self.chunks += 1
                self.bytes += counted
                if waiting:
                    # An SSE chunk of comments only (": ping") is not the first byte; a
                    # file sent zero-copy cannot be read, so it counts as data.
                    first_byte = final or not self.sse or kind != _BODY or sse_chunk_has_event(body)
                else:  # a zero-copy/path-send message of a stream: a chunk like any other
                    gap = now - self.last_chunk_at
                    if gap > self.max_chunk_gap:
                        self.max_chunk_gap = gap
                    timed = True
                self.last_chunk_at = now
            elif final and waiting:
                first_byte = True  # an empty response: complete is as good as first byte
            if first_byte and self.disconnected_at is not None:
                # The client left while waiting: nobody receives this first byte, so the
                # exchange stays in the waiting phase and gets no stream span.
                first_byte = False
            timed = timed or first_byte
        trailers_done = kind == _TRAILERS and not message.get("more_trailers", False)
        if (final and not self.trailers_expected) or trailers_done:
            self.completing = True
        try:
            await self.server_send(message)
        except BaseException as error:
            self.send_raised(error)
            raise
        if timed:
            self.send_wait += perf_counter() - now
        if first_byte:
            self.first_byte(now, final)
        if trailers_done:
            self.response_complete = True
            self.ended_at = perf_counter()
        elif final:
            self.body_ended()

    def reader_failed(self, error: Exception) -> None:
        t.log_failure("payload reader", error)
        self.reader = None

    def send_raised(self, error: BaseException) -> None:
        """``send`` raised: the client is gone if it is an OSError or a server's disconnect."""
        if isinstance(error, OSError) or _is_disconnect_error(error):
            self.send_failed = True
            self.disconnected()

    async def receive(self) -> Message:
        if self.watcher is not None:
            return await self.receive_from_watcher()
        self.app_receiving += 1
        try:
            message = await self.server_receive()
        finally:
            self.app_receiving -= 1
        self.observe(message)
        if self.request_body_complete:
            self.watch_for_disconnect()
        return message

    # Disconnect detection ------------------------------------------------------------

    def observe(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "http.request":
            if not message.get("more_body", False):
                self.request_body_complete = True
        elif kind == _DISCONNECT:
            self.disconnected()

    def disconnected(self) -> None:
        """The client left; it matters only before the final message was handed over.

        A server may close the connection while it sends the final message (hypercorn
        with ``Connection: close``) and report a disconnect before that send returns.
        """
        if self.disconnected_at is None and not self.response_complete and not self.completing:
            self.disconnected_at = perf_counter()
            self.disconnect_chunks = self.chunks
            self.disconnect_bytes = self.bytes

    def watch_for_disconnect(self) -> None:
        """Start the watcher at the app's first pause after ``_WATCH_AFTER``.

        Deferred with ``call_later``: a response that completes within that time (most
        non-streaming responses, even those that yield to the event loop) is over before
        the callback runs, and never pays for a task. A disconnect in that time is still
        seen: the watcher's first ``receive`` returns it.
        """
        if self.watch_handle is not None or self.watcher is not None or self.app_task is None:
            return
        try:
            self.watch_handle = self.app_task.get_loop().call_later(
                _WATCH_AFTER, self.start_watcher
            )
        except Exception as error:
            t.log_failure("disconnect watcher", error)

    def start_watcher(self) -> None:
        self.watch_handle = None
        if (
            self.watcher is not None
            or self.finished
            or self.app_receiving  # the app reads receive itself: it will see the disconnect
            or self.disconnected_at is not None
            or self.response_complete
        ):
            return
        try:
            self.inbox_changed = asyncio.Event()
            self.watcher = asyncio.get_running_loop().create_task(self.watch())
        except Exception as error:
            t.log_failure("disconnect watcher", error)

    async def watch(self) -> None:
        assert self.inbox_changed is not None
        try:
            while True:
                message = await self.server_receive()
                self.inbox.append(message)
                self.inbox_changed.set()
                kind = message.get("type")
                if kind == _DISCONNECT:
                    self.disconnected()
                    settings = self.middleware.settings
                    if (
                        settings.cancel_on_disconnect
                        and self.app_task
                        and not self.response_complete
                    ):
                        self.cancelled_on_disconnect = True
                        self.app_task.cancel()
                    return
                if kind == "http.request" and message.get("more_body", False):
                    while self.inbox:  # hold at most one body chunk: keep upload backpressure
                        self.inbox_changed.clear()
                        await self.inbox_changed.wait()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            t.log_failure("disconnect watcher", error)

    async def receive_from_watcher(self) -> Message:
        event = self.inbox_changed
        assert event is not None
        while not self.inbox:
            if self.watcher is None or self.watcher.done():
                if self.disconnected_at is not None or self.response_complete:
                    return {"type": _DISCONNECT}
                return await self.server_receive()
            event.clear()
            await event.wait()
        message = self.inbox.popleft()
        event.set()
        if message.get("type") == "http.request" and not message.get("more_body", False):
            self.request_body_complete = True
        return message

    def stop_watcher(self) -> None:
        if self.watch_handle is not None:
            self.watch_handle.cancel()  # not started yet: it never will be
            self.watch_handle = None
        watcher = self.watcher
        if watcher is not None and not watcher.done():
            watcher.cancel()
        self.watcher = None  # its cancelled frame refers to self: no reference cycle

    async def poll_disconnect(self) -> None:
        """The app returned without finishing its response: did the client leave?

        Also when the watcher ran: a disconnect that arrives in the loop iteration in
        which the app returns has not reached it yet. At most 10 ms, and only for a
        response that is incomplete anyway.
        """
        try:
            if self.app_task is not None:
                message = await asyncio.wait_for(self.server_receive(), 0.01)
            else:
                try:
                    import anyio
                except ImportError:
                    return
                message = None
                with anyio.move_on_after(0.01):
                    message = await self.server_receive()
            if message is not None:
                self.observe(message)
        except (asyncio.TimeoutError, TimeoutError):
            pass
        except Exception as error:
            t.log_failure("disconnect poll", error)

    # Span and metric updates, each at most once per exchange --------------------------

    def response_started(self, message: Message) -> Message:
        if self.status is not None or self.first_byte_at is not None:
            return message  # a second start (a protocol violation): the server will refuse it
        try:
            self.status = int(message.get("status", 200))
            content_type = b""
            has_accel = False
            for name, value in message.get("headers") or ():
                lowered = bytes(name).lower()
                if lowered == b"content-type":
                    content_type = bytes(value).lower()
                elif lowered == b"x-accel-buffering":
                    has_accel = True
            self.sse = content_type.startswith(b"text/event-stream")
            self.trailers_expected = bool(message.get("trailers", False))
            settings = self.middleware.settings
            if settings.payloads:
                self.reader = make_reader(
                    content_type, settings.payload_max_event_bytes, perf_counter
                )
            span = self.request_span
            self.learn_route()
            self.metric_attributes[t.HTTP_RESPONSE_STATUS_CODE] = self.status
            span.set_attribute(t.HTTP_RESPONSE_STATUS_CODE, self.status)
            if self.middleware.response_headers:
                span.set_attributes(
                    collect_custom_headers_attributes(
                        cast(dict[str, Any], message),
                        self.middleware.sanitize_headers,
                        self.middleware.response_headers,
                        normalise_response_header_name,
                    )
                )
            if self.status >= 500:
                span.set_attribute(t.ERROR_TYPE, str(self.status))
                span.set_status(Status(StatusCode.ERROR))
            if (
                settings.accel_buffering_header
                and not has_accel
                and content_type.startswith(_STREAMING_TYPES)
            ):
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), (b"x-accel-buffering", b"no")]
        except Exception as error:
            t.log_failure("response start", error)
        return message

    def learn_route(self) -> None:
        """Read the route template once the app has routed the request."""
        if self.route is not None:
            return
        self.route = route_of(self.scope)
        if self.route:
            self.metric_attributes[t.HTTP_ROUTE] = self.route
            self.span_name = f"{self.method} {self.route}"
            self.request_span.update_name(self.span_name)
            self.request_span.set_attribute(t.HTTP_ROUTE, self.route)

    def first_byte(self, at: float, final: bool) -> None:
        """The first body byte reached the server: end the request span, start the stream's."""
        self.first_byte_at = at
        self.last_chunk_at = at
        self.streaming = not final
        ttfb = at - self.started_at
        try:
            self.learn_route()
            span = self.request_span
            span.set_attribute(t.STREAM_TIME_TO_FIRST_BYTE, ttfb)
            reader = self.reader
            if reader is not None and reader.first_token_at is not None:
                # The first byte carried the first token: the request span can hold it too.
                span.set_attribute(
                    t.STREAM_TIME_TO_FIRST_TOKEN, reader.first_token_at - self.started_at
                )
            if self.first_raw_byte_at is not None and self.first_raw_byte_at < at:
                span.set_attribute(
                    t.STREAM_TIME_TO_FIRST_RAW_BYTE, self.first_raw_byte_at - self.started_at
                )
            if not final:
                first_byte_ns = self.started_at_ns + int(ttfb * 1e9)
                stream_attributes: dict[str, Any] = {t.HTTP_REQUEST_METHOD: self.method}
                if self.route:
                    stream_attributes[t.HTTP_ROUTE] = self.route
                self.stream_span = self.middleware.tracer.start_span(
                    f"{self.span_name} stream",
                    context=self.context,
                    kind=SpanKind.INTERNAL,
                    start_time=first_byte_ns,
                    attributes=stream_attributes,
                )
                self.stream_span_open = True
                self.request_span_open = False
                span.end(end_time=first_byte_ns)
        except Exception as error:
            t.log_failure("first byte spans", error)
        try:
            self.instruments.time_to_first_byte.record(ttfb, self.metric_attributes)
            if not final:
                active = self.instruments.active
                if self.active_open:
                    self.active_open = False
                    active.add(-1, self.active_attributes)
                self.active_attributes = self.method_and_route()
                self.active_attributes[t.PHASE] = termination.PHASE_STREAMING
                active.add(1, self.active_attributes)
                self.active_open = True
        except Exception as error:
            t.log_failure("first byte metrics", error)

    def method_and_route(self) -> dict[str, Any]:
        """The low-cardinality attributes of the smaller metrics (a new dict each call)."""
        attributes: dict[str, Any] = {
            t.HTTP_REQUEST_METHOD: self.metric_attributes[t.HTTP_REQUEST_METHOD]
        }
        if self.route:
            attributes[t.HTTP_ROUTE] = self.route
        return attributes

    def body_ended(self) -> None:
        self.body_complete = True
        if not self.trailers_expected:
            self.response_complete = True
            self.ended_at = perf_counter()

    def record_payload(
        self,
        summary: PayloadSummary,
        span: Span,
        termination_attributes: dict[str, Any],
        ended_at: float,
    ) -> None:
        """Attributes and metrics of an LLM-aware stream (SSE or NDJSON)."""
        span.set_attribute(t.STREAM_EVENTS, summary.events)
        if summary.finish_reasons:
            span.set_attribute(t.GEN_AI_FINISH_REASONS, list(summary.finish_reasons))
            termination_attributes[t.GEN_AI_FINISH_REASON] = summary.finish_reasons[0]
        if summary.input_tokens is not None:
            span.set_attribute(t.GEN_AI_INPUT_TOKENS, summary.input_tokens)
        if summary.output_tokens is not None:
            span.set_attribute(t.GEN_AI_OUTPUT_TOKENS, summary.output_tokens)
        first_token_at = summary.first_token_at
        if first_token_at is None:
            return
        ttft = first_token_at - self.started_at
        span.set_attribute(t.STREAM_TIME_TO_FIRST_TOKEN, ttft)
        small = self.method_and_route()
        self.instruments.time_to_first_token.record(ttft, small)
        output_tokens = summary.output_tokens
        if output_tokens is not None and output_tokens > 1 and ended_at > first_token_at:
            self.instruments.time_per_output_token.record(
                (ended_at - first_token_at) / (output_tokens - 1), small
            )

    def finish(self, error: BaseException | None) -> None:
        """The app returned or raised: decide the reason, end spans, record metrics."""
        try:
            self.record_end(error)
        except Exception as failure:
            t.log_failure("request end", failure)
        try:  # whatever failed above, every span ends and the counter is balanced
            if self.stream_span_open and self.stream_span is not None:
                self.stream_span_open = False
                self.stream_span.end()
            if self.request_span_open:
                self.request_span_open = False
                self.request_span.end()
        except Exception as failure:
            t.log_failure("span end", failure)
        if self.active_open:
            self.active_open = False
            try:
                self.instruments.active.add(-1, self.active_attributes)
            except Exception as failure:
                t.log_failure("active counter", failure)

    def record_end(self, error: BaseException | None) -> None:
        now = perf_counter()
        if error is not None and _is_disconnect_error(error):
            self.send_failed = True
            error = None
        reader_summary = None
        if self.reader is not None:
            try:
                reader_summary = self.reader.finish()
            except Exception as failure:
                t.log_failure("payload reader", failure)
        reason = termination.classify(
            error=error,
            response_complete=self.response_complete,
            disconnected=self.disconnected_at is not None,
            send_failed=self.send_failed,
            payload_truncated=reader_summary is not None and reader_summary.truncated,
        )
        chunks, size = self.chunks, self.bytes
        ended_at = self.ended_at if self.ended_at is not None else now
        if self.disconnected_at is not None:
            ended_at = self.disconnected_at
            chunks, size = self.disconnect_chunks, self.disconnect_bytes
        ended_ns = self.started_at_ns + int((ended_at - self.started_at) * 1e9)

        self.learn_route()
        stream_span = self.stream_span
        span = stream_span if stream_span is not None else self.request_span
        span.set_attribute(t.TERMINATION_REASON, reason)
        if reason == termination.APP_ERROR and error is not None:
            span.set_attribute(t.ERROR_TYPE, type(error).__qualname__)
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
        elif reason == termination.CANCELLED:
            span.set_attribute(t.ERROR_TYPE, type(error).__qualname__ if error else "cancelled")
            span.set_status(Status(StatusCode.ERROR, "cancelled"))
        elif reason == termination.INCOMPLETE:
            span.set_attribute(t.ERROR_TYPE, termination.INCOMPLETE)
            span.set_status(Status(StatusCode.ERROR, "response incomplete"))

        attributes: dict[str, Any] = dict(self.metric_attributes)
        attributes[t.TERMINATION_REASON] = reason
        phase = (
            termination.PHASE_WAITING if self.first_byte_at is None else termination.PHASE_STREAMING
        )
        termination_attributes: dict[str, Any] = {
            key: attributes[key]
            for key in (
                t.HTTP_REQUEST_METHOD,
                t.HTTP_ROUTE,
                t.HTTP_RESPONSE_STATUS_CODE,
                t.TERMINATION_REASON,
            )
            if key in attributes
        }
        termination_attributes[t.PHASE] = phase
        if reader_summary is not None:
            try:
                self.record_payload(reader_summary, span, termination_attributes, ended_at)
            except Exception as failure:
                t.log_failure("payload telemetry", failure)

        if stream_span is not None and self.first_byte_at is not None:
            duration = max(0.0, ended_at - self.first_byte_at)
            stream_span.set_attributes(
                {
                    t.STREAM_CHUNKS: chunks,
                    t.STREAM_BYTES: size,
                    t.STREAM_MAX_CHUNK_GAP: self.max_chunk_gap,
                    t.STREAM_SEND_WAIT: self.send_wait,
                    t.STREAM_TIME_TO_FIRST_BYTE: self.first_byte_at - self.started_at,
                }
            )
            if self.status is not None:
                stream_span.set_attribute(t.HTTP_RESPONSE_STATUS_CODE, self.status)
            self.stream_span_open = False
            stream_span.end(end_time=ended_ns)
            small = self.method_and_route()
            with_reason: dict[str, Any] = {**small, t.TERMINATION_REASON: reason}
            instruments = self.instruments
            instruments.duration.record(duration, attributes)
            instruments.chunks.record(chunks, with_reason)
            instruments.body_size.record(size, with_reason)
            instruments.max_chunk_gap.record(self.max_chunk_gap, small)
            instruments.send_wait.record(self.send_wait, small)
        else:
            self.request_span_open = False
            self.request_span.end(end_time=ended_ns)
        if self.active_open:
            self.active_open = False
            self.instruments.active.add(-1, self.active_attributes)
        self.instruments.terminations.add(1, termination_attributes)
