"""A plain ASGI app (no framework) that streams an SSE answer, wrapped by otel-stream.

Run it from this directory, then ask it for a stream::

    uvicorn asgi_app:app
    curl -N -X POST http://127.0.0.1:8000/v1/chat/completions -d '{"stream": true}'

With no framework there is no route template, so the spans are named after the method
only: ``POST`` (receipt to the first body byte) and ``POST stream`` (the body).
"""

import asyncio
import json

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from otel_stream import StreamingMiddleware

tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
trace.set_tracer_provider(tracer_provider)
metrics.set_meter_provider(
    MeterProvider(metric_readers=[PeriodicExportingMetricReader(ConsoleMetricExporter())])
)


async def raw_asgi_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not found"})
        return
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for word in ["Hello", " from", " a", " stream", "."]:
        await asyncio.sleep(0.05)  # a model producing its next token
        chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": word}}]}
        event = f"data: {json.dumps(chunk)}\n\n".encode()
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


app = StreamingMiddleware(raw_asgi_app)
