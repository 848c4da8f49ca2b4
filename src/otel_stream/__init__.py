"""OpenTelemetry instrumentation for streaming HTTP responses."""

from otel_stream.middleware import StreamingMiddleware
from otel_stream.version import __version__

__all__ = ["StreamingMiddleware", "__version__"]
