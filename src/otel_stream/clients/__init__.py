"""Outgoing streams: the HTTP client adapters (httpx 0.x, httpx2, aiohttp).

``StreamingClientInstrumentor`` patches the clients; ``call`` is what one outgoing
call is (its exchange, record and payload reader), on the recorder's client side.
"""

from __future__ import annotations

from otel_stream.clients.instrumentor import StreamingClientInstrumentor

__all__ = ["StreamingClientInstrumentor"]
