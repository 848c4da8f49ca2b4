"""OpenTelemetry instrumentation for streaming HTTP responses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from otel_stream.asgi import StreamingMiddleware
from otel_stream.version import __version__

if TYPE_CHECKING:
    from otel_stream.clients import StreamingClientInstrumentor
    from otel_stream.instrumentor import StreamingInstrumentor
    from otel_stream.wsgi import StreamingWSGIMiddleware

__all__ = [
    "StreamingClientInstrumentor",
    "StreamingInstrumentor",
    "StreamingMiddleware",
    "StreamingWSGIMiddleware",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: importing otel_stream loads no patching machinery, and an
    # ASGI service no WSGI adapter.
    if name == "StreamingWSGIMiddleware":
        from otel_stream.wsgi import StreamingWSGIMiddleware

        return StreamingWSGIMiddleware
    if name == "StreamingInstrumentor":
        from otel_stream.instrumentor import StreamingInstrumentor

        return StreamingInstrumentor
    if name == "StreamingClientInstrumentor":
        from otel_stream.clients import StreamingClientInstrumentor

        return StreamingClientInstrumentor
    raise AttributeError(f"module 'otel_stream' has no attribute {name!r}")
