"""The WSGI server adapter: ``StreamingWSGIMiddleware`` and route templates of Flask and Django."""

from __future__ import annotations

from otel_stream.wsgi.middleware import (
    ENVIRON_KEY,
    Environ,
    StartResponse,
    StreamingWSGIMiddleware,
    WSGIApp,
)

__all__ = ["ENVIRON_KEY", "Environ", "StartResponse", "StreamingWSGIMiddleware", "WSGIApp"]
