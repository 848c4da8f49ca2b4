"""The ASGI server adapter: ``StreamingMiddleware``, its disconnect watcher, route templates."""

from __future__ import annotations

from otel_stream.asgi.middleware import SCOPE_KEY, StreamingMiddleware
from otel_stream.asgi.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SCOPE_KEY", "ASGIApp", "Message", "Receive", "Scope", "Send", "StreamingMiddleware"]
