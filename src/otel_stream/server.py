"""What a server middleware holds, whatever its transport: settings, recorder, allowlists.

``StreamingMiddleware`` (ASGI) and ``StreamingWSGIMiddleware`` take the same explicit
keyword options; both hand them to :meth:`ServerMiddleware.set_up`, written once here.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider
from opentelemetry.util.http import (
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE,
    SanitizeValue,
    get_custom_headers,
)

from otel_stream import shutdown
from otel_stream.config import Settings
from otel_stream.guard import log_failure
from otel_stream.recorder import Recorder


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
