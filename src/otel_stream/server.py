"""What the server adapters share, whatever their transport.

``StreamingMiddleware`` (ASGI) and ``StreamingWSGIMiddleware`` take the same explicit
keyword options; both hand them to :meth:`ServerMiddleware.set_up`. Their per-request
objects are :class:`ServerExchange`: the route, the first byte and the end are written
once, here; only how each transport reads a request and forwards a response differs.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider
from opentelemetry.util.http import (
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE,
    SanitizeValue,
    get_custom_headers,
    sanitize_method,
)

from otel_stream import attributes as a
from otel_stream import shutdown, termination
from otel_stream.config import Settings
from otel_stream.exchange import Exchange
from otel_stream.guard import guarded, log_failure
from otel_stream.payloads import PayloadReader, PayloadSummary
from otel_stream.recorder import Record, Recorder

#: Request attributes kept per middleware, at most (a full cache is emptied and refilled).
KEPT_ATTRIBUTES = 512

#: A request's sanitized method, its span's attributes and its metrics' attributes.
RequestAttributes = tuple[str, dict[str, Any], dict[str, Any]]


class KeptAttributes:
    """Contrib's request attributes, kept by everything of the request they depend on.

    Contrib's ``collect_request_attributes`` (ASGI or WSGI) costs about 9 µs a request,
    and answers the same for every request a keep-alive connection sends to one path:
    each adapter builds a key of exactly what that answer depends on (None when it
    cannot), and every request gets copies of the kept dictionaries.
    """

    __slots__ = ("answers",)

    def __init__(self) -> None:
        self.answers: dict[tuple[Any, ...], RequestAttributes] = {}

    def get(self, key: tuple[Any, ...] | None) -> RequestAttributes | None:
        """Copies of the answer kept under ``key``, or None."""
        if key is None:
            return None
        known = self.answers.get(key)
        if known is None:
            return None
        method, attributes, metric_attributes = known
        return method, dict(attributes), dict(metric_attributes)

    def keep(self, key: tuple[Any, ...] | None, answer: RequestAttributes) -> None:
        """Keep copies of ``answer`` under ``key`` (nothing when ``key`` is None)."""
        if key is None:
            return
        answers = self.answers
        if len(answers) >= KEPT_ATTRIBUTES:
            answers.clear()
        method, attributes, metric_attributes = answer
        answers[key] = (method, dict(attributes), dict(metric_attributes))


def hashable(key: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """``key``, or None when a part of it cannot be hashed (a list, a bytearray)."""
    try:
        hash(key)
    except TypeError:
        return None
    return key


class ServerMiddleware:
    """The set-up both server middlewares share (see the module docstring)."""

    settings: Settings
    recorder: Recorder | None

    def set_up(
        self,
        settings: Settings,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        server_request_hook: Any,
    ) -> None:
        """Resolve what the middleware needs; on failure it passes every request through."""
        self.settings = settings
        self.has_excluded_urls = settings.has_excluded_urls
        self.kept_attributes = KeptAttributes()
        self.server_request_hook = server_request_hook
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self._active = settings.enabled
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
        self.recorder = None
        try:
            self.recorder = Recorder(settings, tracer_provider, meter_provider)
        except Exception as error:
            log_failure("setup", error)
            self._active = False
        if self._active:
            shutdown.register(tracer_provider, meter_provider)


#: Set in the scope (ASGI) or environ (WSGI) of an instrumented request: never twice.
INSTRUMENTED_KEY = "otel_stream.instrumented"
#: The media types whose responses get ``X-Accel-Buffering: no`` when asked.
STREAMING_MEDIA_TYPES = (
    "text/event-stream",
    "application/x-ndjson",
    "application/jsonl",
    "application/json-lines",
)


def wants_accel_buffering_header(content_type: str, has_header: bool) -> bool:
    """Whether ``X-Accel-Buffering: no`` is to be added (the setting is on)."""
    return not has_header and content_type.startswith(STREAMING_MEDIA_TYPES)


def finish_request_attributes(
    attributes: dict[str, Any], raw_method: object, scheme: object, version: object
) -> tuple[str, dict[str, Any]]:
    """The request span's attributes as contrib's helpers collected them, made safe.

    Returns the sanitized method and the metrics' attributes; ``attributes`` loses the
    query (its values never reach telemetry) and the port glued to ``server.address``.
    """
    method = attributes.get(a.HTTP_REQUEST_METHOD)  # sanitized by contrib's helper
    if not method or not isinstance(raw_method, str) or raw_method != raw_method.strip():
        method = sanitize_method(str(raw_method or "").strip()) or "_OTHER"
        attributes[a.HTTP_REQUEST_METHOD] = method
    metric_attributes: dict[str, Any] = {a.HTTP_REQUEST_METHOD: method}
    if scheme:
        metric_attributes[a.URL_SCHEME] = scheme
    if version:
        metric_attributes[a.NETWORK_PROTOCOL_VERSION] = version
    attributes.pop(a.URL_QUERY, None)
    server_address = attributes.get(a.SERVER_ADDRESS)
    if isinstance(server_address, str) and server_address.count(":") == 1:
        attributes[a.SERVER_ADDRESS] = server_address.rsplit(":", 1)[0]
    return str(method), metric_attributes


class ServerExchange:
    """What the per-request objects of both server adapters share: the exchange state,
    its record and payload reader, how the route is learned, the first byte reported and
    the end decided."""

    __slots__ = ("reader", "record", "state")

    state: Exchange
    record: Record
    reader: PayloadReader | None

    def route(self) -> str | None:
        """The route template the framework left in the request, if any."""
        raise NotImplementedError

    def learn_route(self) -> None:
        """The route template, once the app has routed the request."""
        if self.record.route is None:
            route = self.route()
            if route:
                self.record.found_route(route)

    def chunk_clock(self) -> float:
        """The payload reader's clock: when the chunk being read was handed over."""
        return self.state.last_chunk_at

    def reached_first_byte(self) -> None:
        """Tell the record the first byte went out (the state already knows)."""
        self.learn_route()
        reader = self.reader
        self.record.first_byte(self.state, reader.first_token_at if reader is not None else None)

    def finish(self, error: BaseException | None) -> None:
        """The app returned or raised: decide the reason, end the state, record."""
        state = self.state
        now = perf_counter()
        summary = self.summary() if self.reader is not None else None
        reason = self.outcome(error, summary)
        if reason is None:  # deciding failed (logged): say what is certain
            reason = termination.APP_ERROR if error is not None else termination.INCOMPLETE
        state.end(now)
        self.record.end(state, reason, error, summary)

    @guarded("request end")
    def outcome(self, error: BaseException | None, summary: PayloadSummary | None) -> str:
        self.learn_route()
        truncated = summary is not None and summary.truncated
        return self.state.outcome(error, payload_truncated=truncated)

    @guarded("payload reader")
    def summary(self) -> PayloadSummary | None:
        reader = self.reader
        if reader is None:
            return None
        summary = reader.finish()
        if reader.error is not None:
            log_failure("payload reader", reader.error)
        return summary
