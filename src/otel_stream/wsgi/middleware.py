"""The WSGI middleware: the split, reasons and metrics of ASGI, for Flask, Django, any WSGI app.

The adapter between WSGI and the transport-agnostic core: it wraps ``start_response``
and the response iterable, forwards every chunk, and tells the
:class:`~otel_stream.exchange.Exchange` and its :class:`~otel_stream.recorder.Record`
what happened. A WSGI server writes each item of the iterable to the client, then asks
for the next one; it calls ``close()`` when it is done, early if writing failed.

Choices made on purpose (read before "fixing"):

* **Forward first.** Each item the app yields is handed to the server at once; it is
  counted, read and (for the first one) turned into spans when the server asks for the
  next item, or calls ``close()``. The time between handing an item over and that next
  request is the server's blocking write: the send wait (client backpressure).
* **Where the first byte is.** ``start_response`` sends nothing: the first byte is the
  first non-empty item (for ``text/event-stream``, the first with a data event, as on
  ASGI). A response known to be whole with its first item (an iterable of length one, a
  ``Content-Length`` reached, Django's non-streaming ``HttpResponse``) is not a stream:
  it gets the request span only.
* **How it ends.** The iterable exhausted: ``completed`` (``incomplete`` when an LLM
  format's end marker is missing). The app raising: ``app_error``. The server calling
  ``close()`` before the end (it does when writing to a vanished client fails):
  ``client_disconnect``, unless a ``Content-Length`` was reached; the item whose write
  failed is not counted (a first byte that never arrived leaves the exchange waiting).
  A WSGI server learns that its client left only when a write fails, so the stream span
  ends at the first failed write after the client left (docs/wsgi.md measures how long
  that is).
* **One context per exchange.** The app, each ``next()`` of its iterable and its
  ``close()`` run inside one :class:`contextvars.Context` in which the request span is
  current. Spans the app makes while its body streams belong to the trace, as children
  of the request span (as on ASGI, where the app's task keeps the request's context).
  Context changes the app makes between two items (a span opened around its loop)
  stay in place for the next item, as they would without the middleware; the server's
  own context is never touched. ``Context.run`` costs a few tens of nanoseconds, a
  tenth of an attach and detach per item.
* **``close()`` exactly once.** The app iterable's ``close()`` runs when the server
  calls ``close()`` on the middleware's iterable, once, whatever happened before; a
  ``wsgi.file_wrapper`` response is handed to the server untouched (so it can use
  ``sendfile``) and counts as one chunk sent when the app returned it.
* **Route templates** are read where the framework left them after routing: Flask's
  ``request.url_rule`` (its request object is in the environ), Django's
  ``resolver_match.route`` (recorded into the environ by a hook on Django's
  ``BaseHandler.resolve_request``, installed when a middleware wraps an app in a
  process that has loaded Django). No second resolution; no route, never the raw path.
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from time import perf_counter, time_ns
from typing import Any
from wsgiref.util import request_uri

from opentelemetry import context, propagate
from opentelemetry.instrumentation._semconv import _StabilityMode
from opentelemetry.instrumentation.wsgi import collect_request_attributes, wsgi_getter
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, TracerProvider
from opentelemetry.util.http import (
    normalise_request_header_name,
    normalise_response_header_name,
)

from otel_stream import attributes as a
from otel_stream.config import Settings, explain_unknown_options, given_settings
from otel_stream.exchange import Exchange, Phase, current_exchange
from otel_stream.guard import failsafe
from otel_stream.payloads import PayloadReader, make_reader
from otel_stream.payloads.events import sse_chunk_has_event
from otel_stream.recorder import Record, server_parent
from otel_stream.server import (
    INSTRUMENTED_KEY,
    ServerExchange,
    ServerMiddleware,
    finish_request_attributes,
    hashable,
    wants_accel_buffering_header,
)
from otel_stream.wsgi.routes import install_django_route_hook, route_of

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
ServerRequestHook = Callable[[Span, Environ], None]

#: Set in the environ of an instrumented request, so an app is never instrumented twice.
ENVIRON_KEY = INSTRUMENTED_KEY

_WAITING = Phase.WAITING
_STREAMING = Phase.STREAMING


class StreamingWSGIMiddleware(ServerMiddleware):
    """Trace and measure streaming WSGI responses, split at the first body byte.

    Args:
        app: The WSGI application to wrap.
        tracer_provider: Tracer provider to use; the global one if omitted.
        meter_provider: Meter provider to use; the global one if omitted.
        server_request_hook: Called with the request span and the environ when a
            request starts; an exception it raises is logged once and ignored.
        enabled, excluded_urls, ttfb_buckets, duration_buckets, gap_buckets,
        chunks_buckets, body_size_buckets, time_per_output_token_buckets, payloads,
        payload_max_event_bytes, accel_buffering_header, cancel_on_disconnect: The
            settings of docs/configuration.md, as for ``StreamingMiddleware``; each
            omitted one falls back to its ``OTEL_STREAM_*`` variable, then to its
            default. ``cancel_on_disconnect`` changes nothing on WSGI: a server stops
            the app itself, by closing its iterable, when its client has gone.
    """

    @explain_unknown_options
    def __init__(
        self,
        app: WSGIApp,
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
        if self._active and "django.core.handlers.base" in sys.modules:
            with failsafe("Django route hook"):
                install_django_route_hook()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not self._active or ENVIRON_KEY in environ:
            return self.app(environ, start_response)
        environ[ENVIRON_KEY] = True
        exchange = None
        with failsafe("request start"):
            settings = self.settings
            excluded = False
            if self.has_excluded_urls:  # building the URL costs microseconds: only if needed
                excluded = settings.excluded_urls.url_disabled(request_uri(environ))
            if not excluded:
                exchange = _WSGIExchange(self, environ)
        if exchange is None:
            return self.app(environ, start_response)
        return exchange.run(start_response)


def _request_attributes(
    middleware: StreamingWSGIMiddleware, environ: Environ
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The sanitized method, the request span's attributes and the metrics' attributes."""
    key = _attributes_key(environ)
    kept = middleware.kept_attributes
    answer = kept.get(key)
    if answer is None:
        attributes: dict[str, Any] = collect_request_attributes(environ, _StabilityMode.HTTP)
        method, metric_attributes = finish_request_attributes(
            attributes,
            environ.get("REQUEST_METHOD"),
            environ.get("wsgi.url_scheme"),
            attributes.get(a.NETWORK_PROTOCOL_VERSION),
        )
        answer = method, attributes, metric_attributes
        kept.keep(key, answer)
    method, attributes, metric_attributes = answer
    if middleware.request_headers:
        headers = {
            key[5:].replace("_", "-"): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        attributes.update(
            middleware.sanitize_headers.sanitize_header_values(
                headers, middleware.request_headers, normalise_request_header_name
            )
        )
    return method, attributes, metric_attributes


#: The environ keys contrib's WSGI request attributes read, but the query string (its only
#: attribute, ``url.query``, is dropped) and the two targets (whether one is set is read).
_ATTRIBUTE_KEYS = (
    "REQUEST_METHOD",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "wsgi.url_scheme",
    "HTTP_HOST",
    "HTTP_USER_AGENT",
    "PATH_INFO",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "REMOTE_HOST",
)


def _attributes_key(environ: Environ) -> tuple[Any, ...] | None:
    """Everything of ``environ`` contrib's request attributes depend on (see
    :class:`~otel_stream.server.KeptAttributes`), or None when it cannot be hashed."""
    get = environ.get
    target = get("RAW_URI")
    if target is None:
        target = get("REQUEST_URI")
    return hashable((bool(target), *map(get, _ATTRIBUTE_KEYS)))


def _propagation_headers(environ: Environ) -> list[tuple[bytes, bytes]]:
    """The request headers the global propagator reads, as raw (name, value) pairs.

    Only those: the environ holds every header under its CGI name, and building all of
    them per request would cost more than the check they feed.
    """
    global _propagator_keys
    textmap = propagate.get_global_textmap()
    if _propagator_keys[0] is not textmap:
        keys = tuple(
            ("HTTP_" + name.upper().replace("-", "_"), name.lower().encode("latin-1"))
            for name in textmap.fields
        )
        _propagator_keys = (textmap, keys)
    return [
        (name, str(environ[key]).encode("latin-1"))
        for key, name in _propagator_keys[1]
        if key in environ
    ]


_propagator_keys: tuple[object, tuple[tuple[str, bytes], ...]] = (None, ())


class _WSGIExchange(ServerExchange):
    """One instrumented request: the app's ``start_response`` and iterable, and what they
    tell the core."""

    __slots__ = (
        "app",
        "content_length",
        "context",
        "environ",
        "middleware",
        "one_item",
        "server_start_response",
        "server_write",
        "sse",
        "started",
    )

    def __init__(self, middleware: StreamingWSGIMiddleware, environ: Environ) -> None:
        started_at = perf_counter()
        start_ns = time_ns()
        self.middleware = middleware
        self.app = middleware.app
        self.environ = environ
        self.state = state = Exchange(started_at)
        self.started = False  # start_response was called (a second call may follow)
        self.sse = False
        self.content_length: int | None = None
        self.one_item = False
        self.reader: PayloadReader | None = None
        self.server_start_response: StartResponse | None = None
        self.server_write: Callable[[bytes], object] | None = None
        method, span_attributes, metric_attributes = _request_attributes(middleware, environ)
        parent, kind = server_parent(environ, wsgi_getter, _propagation_headers(environ))
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
                hook(self.record.request_span, environ)
        # The app's context: the server's, with the request span current (see the docstring).
        self.context = contextvars.copy_context()
        self.context.run(self._enter)

    def _enter(self) -> None:
        context.attach(self.record.context)
        current_exchange.set(self.state)

    # The app's view of the server ----------------------------------------------------

    def run(self, start_response: StartResponse) -> Iterable[bytes]:
        self.server_start_response = start_response
        try:
            result = self.context.run(self.app, self.environ, self.start_response)
        except BaseException as error:
            self.end(error)
            raise
        file_wrapper = self.environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            self.file_sent()
            return result
        # Django's HttpResponse (not its StreamingHttpResponse) holds its whole body
        self.one_item = getattr(result, "streaming", None) is False
        try:
            sized = len(result)  # type: ignore[arg-type]
        except Exception:
            return _Body(self, result)
        self.one_item = self.one_item or sized == 1
        return _SizedBody(self, result)

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        with failsafe("response start"):
            headers = self.response_started(status, headers)
        assert self.server_start_response is not None
        if exc_info is None:
            self.server_write = self.server_start_response(status, headers)
        else:
            self.server_write = self.server_start_response(status, headers, exc_info)
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write`` callable: forwarded, then counted like an item."""
        assert self.server_write is not None
        at = perf_counter()
        try:
            self.server_write(data)
        except BaseException as error:
            if isinstance(error, OSError):
                self.state.failed_send(at)
            raise
        self.sent(data, at, perf_counter())

    def iterate(self, iterable: Iterable[bytes]) -> Generator[bytes, None, None]:
        """The items of the app's iterable, forwarded one by one (the server's for loop)."""
        run = self.context.run
        state = self.state
        try:
            next_item = run(iter, iterable).__next__
        except BaseException as error:
            self.end(error)
            raise
        while state.phase is _WAITING:
            try:
                item = run(next_item)
            except StopIteration:
                self.exhausted()
                return
            except BaseException as error:
                self.end(error)
                raise
            at = perf_counter()
            try:
                yield item
            except GeneratorExit:
                self.closed_early(item, at)
                raise
            self.sent(item, at, perf_counter())
        if state.streamed and state.phase is _STREAMING:
            # The per-chunk path: forward, then count and read.
            reader = self.reader
            while True:
                try:
                    item = run(next_item)
                except StopIteration:
                    self.exhausted()
                    return
                except BaseException as error:
                    self.end(error)
                    raise
                at = perf_counter()
                try:
                    yield item
                except GeneratorExit:
                    self.closed_early(item, at)
                    raise
                sent_at = perf_counter()
                if item:
                    state.chunk(at, sent_at, len(item))
                    if reader is not None:
                        reader.feed(item)
                else:
                    state.empty_send(at, sent_at)
        # Complete with the first item: forward whatever else comes, uncounted.
        while True:
            try:
                item = run(next_item)
            except StopIteration:
                self.exhausted()
                return
            except BaseException as error:
                self.end(error)
                raise
            yield item

    def closed(self, iterable: Iterable[bytes]) -> None:
        """The server closed the middleware's iterable: close the app's, exactly once."""
        try:
            if self.state.phase is not Phase.ENDED:
                # Not exhausted, and not stopped at an item (then closed_early ran).
                now = perf_counter()
                self.state.left(now)
                self.end(None)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                self.context.run(close)

    # What the items mean (after they were sent) --------------------------------------

    def response_started(
        self, status: str, headers: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        if self.state.phase is not _WAITING:
            return headers
        code = int(status.split(" ", 1)[0])
        content_type = ""
        content_length = None
        has_accel = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == "content-type":
                content_type = value.lower()
            elif lowered == "content-length":
                content_length = _length(value)
            elif lowered == "x-accel-buffering":
                has_accel = True
        first = not self.started
        self.started = True
        self.sse = content_type.startswith("text/event-stream")
        self.content_length = content_length
        settings = self.middleware.settings
        if settings.payloads and first:
            self.reader = make_reader(
                content_type.encode("latin-1"), settings.payload_max_event_bytes, self.chunk_clock
            )
        record = self.record
        self.learn_route()
        span_headers = None
        middleware = self.middleware
        if middleware.response_headers:
            joined: dict[str, str] = {}
            for name, value in headers:
                lowered = name.lower()
                joined[lowered] = f"{joined[lowered]},{value}" if lowered in joined else value
            span_headers = middleware.sanitize_headers.sanitize_header_values(
                joined, middleware.response_headers, normalise_response_header_name
            )
        record.response_started(code, span_headers)
        if settings.accel_buffering_header and wants_accel_buffering_header(
            content_type, has_accel
        ):
            headers = [*headers, ("X-Accel-Buffering", "no")]
        return headers

    def sent(self, item: bytes, at: float, sent_at: float) -> None:
        """An item reached the server while waiting for the first byte (or by ``write``)."""
        state = self.state
        if state.phase is _STREAMING and state.streamed:
            if item:
                state.chunk(at, sent_at, len(item))
                if self.reader is not None:
                    self.reader.feed(item)
            return
        if state.phase is not _WAITING or not item:
            return
        with failsafe("first byte"):
            size = len(item)
            final = self.one_item or self.whole(state.bytes + size)
            first_byte = final or not self.sse or sse_chunk_has_event(item)
            if first_byte:
                state.first_byte(at, sent_at, size, more=not final)
                if final:
                    state.complete(at, sent_at)
            else:
                state.raw_chunk(at, size)
            reader = self.reader
            if reader is not None:
                reader.feed(item)
            if first_byte:
                self.reached_first_byte()

    def whole(self, size: int) -> bool:
        """True when ``size`` body bytes complete the response (its ``Content-Length``)."""
        length = self.content_length
        return length is not None and size >= length

    def file_sent(self) -> None:
        """A ``wsgi.file_wrapper`` response: one chunk, handed over now."""
        state = self.state
        now = perf_counter()
        with failsafe("first byte"):
            state.first_byte(now, now, self.content_length or 0, more=False)
            state.complete(now, now)
            self.reached_first_byte()
        self.end(None)

    def exhausted(self) -> None:
        """The iterable ended: the response is complete."""
        state = self.state
        now = perf_counter()
        if state.phase is _WAITING:
            # An empty body: complete is as good as a first byte.
            state.first_byte(now, now, 0, more=False, empty=True)
            with failsafe("first byte"):
                self.reached_first_byte()
        if state.phase is not Phase.COMPLETE:
            state.complete(now, now)
        self.end(None)

    def closed_early(self, item: bytes, at: float) -> None:
        """The server closed the iterable instead of asking for the item after ``item``.

        It stopped because the body was whole (its ``Content-Length`` reached): ``item``
        went out and the response is complete. Otherwise writing ``item`` failed (or the
        server gave up): the client is gone, and ``item`` is not counted; if it was to be
        the first byte, nobody received it and the exchange ends in the waiting phase.
        """
        now = perf_counter()
        with failsafe("close"):
            state = self.state
            if not _complete(state):
                if self.whole(state.bytes + len(item)):
                    self.sent(item, at, now)
                    if not _complete(state):  # sent() may have completed it
                        state.complete(at, now)
                else:
                    state.left(now)
        self.end(None)

    def route(self) -> str | None:
        return route_of(self.environ)

    # The end -------------------------------------------------------------------------

    def end(self, error: BaseException | None) -> None:
        """Decide the reason, then record (once)."""
        if self.state.phase is not Phase.ENDED:
            self.finish(error)


def _length(value: str) -> int | None:
    """A ``Content-Length`` value, or None when it is not a number (never raises)."""
    try:
        return int(value)
    except ValueError:
        return None


def _complete(state: Exchange) -> bool:
    return state.phase is Phase.COMPLETE


class _Body:
    """The iterable the server gets: the app's items, and a ``close()`` that ends the
    exchange and closes the app's iterable once."""

    __slots__ = ("closed", "exchange", "items", "iterable")

    def __init__(self, exchange: _WSGIExchange, iterable: Iterable[bytes]) -> None:
        self.exchange = exchange
        self.iterable = iterable
        self.items: Generator[bytes, None, None] | None = None
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        if self.items is None:
            self.items = self.exchange.iterate(self.iterable)
        return self.items

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            items = self.items
            if items is not None:
                items.close()  # stopped at an item: the exchange ends there
        finally:
            self.exchange.closed(self.iterable)


class _SizedBody(_Body):
    """A body whose app iterable has a length (a list): servers may read it (waitress
    sets ``Content-Length`` from a one-item list), so it is passed on."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self.iterable)  # type: ignore[arg-type]
