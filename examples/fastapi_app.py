"""A FastAPI app that streams a chat-completions-like answer over SSE, with otel-stream.

Run it from this directory, then ask it for a stream::

    uvicorn fastapi_app:app
    curl -N -X POST http://127.0.0.1:8000/v1/chat/completions -d '{"stream": true}'

The console exporters print each span when it ends: the request span (receipt to the
first body byte) and the stream span (first body byte to the end of the stream).
"""

import asyncio
import json

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from otel_stream import StreamingMiddleware

# The SDK: where spans and metrics go. Console exporters here; OTLP in production.
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
trace.set_tracer_provider(tracer_provider)
metrics.set_meter_provider(
    MeterProvider(metric_readers=[PeriodicExportingMetricReader(ConsoleMetricExporter())])
)

app = FastAPI()
app.add_middleware(StreamingMiddleware)


async def tokens():
    for word in ["Hello", " from", " a", " stream", "."]:
        await asyncio.sleep(0.05)  # a model producing its next token
        chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": word}}]}
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


@app.post("/v1/chat/completions")
async def chat_completions():
    return StreamingResponse(tokens(), media_type="text/event-stream")
