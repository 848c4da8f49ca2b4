"""Resources: the heap stays flat over thousands of streams, and a slow reader is seen as
send wait while its backpressure reaches the app (the middleware holds nothing back)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import tracemalloc
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from otel_stream import StreamingMiddleware
from tests.apps import scope_for
from tests.rawclient import read_slowly
from tests.servers import SERVERS, serve, wait_until
from tests.telemetry_harness import Telemetry


class CountingProcessor(SpanProcessor):
    """Keeps no span: counts them, so memory only grows if the middleware leaks."""

    def __init__(self) -> None:
        self.ended = 0

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1


class Boom(Exception):
    pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Five SSE chunks; ``/fail`` raises after two, ``/leave`` returns after a disconnect."""
    await receive()
    path = scope["path"]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    for index in range(5):
        if path == "/fail" and index == 2:
            raise Boom
        await send({"type": "http.response.body", "body": b"data: tok\n\n", "more_body": True})
        await asyncio.sleep(0)
    if path == "/leave":
        await receive()
        return
    await send({"type": "http.response.body", "body": b""})


async def one_stream(middleware: StreamingMiddleware, path: str) -> None:
    left = asyncio.Event()
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        if path == "/leave":
            left.set()
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await asyncio.sleep(0)

    with contextlib.suppress(Boom):
        await middleware(scope_for(path), receive, send)


async def streams(middleware: StreamingMiddleware, count: int) -> None:
    paths = ("/ok", "/ok", "/fail", "/leave")
    for start in range(0, count, 50):  # 50 at a time, as concurrent requests
        await asyncio.gather(
            *(one_stream(middleware, paths[i % 4]) for i in range(start, start + 50))
        )


WARM_UP = 1_000
MEASURED = 4_000
#: Bytes the heap may grow per stream: a leak of one span, dict or task per stream is
#: hundreds of bytes; allocator and interning noise over 4,000 streams stays far below.
GROWTH_PER_STREAM = 24


def test_the_heap_stays_flat_over_thousands_of_streams() -> None:
    processor = CountingProcessor()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(processor)
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    middleware = StreamingMiddleware(
        app, tracer_provider=tracer_provider, meter_provider=meter_provider
    )

    async def main() -> tuple[int, int]:
        await streams(middleware, WARM_UP)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        await streams(middleware, MEASURED)
        gc.collect()
        return before, tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        before, after = asyncio.run(main())
    finally:
        tracemalloc.stop()
        tracer_provider.shutdown()
        meter_provider.shutdown()
    assert processor.ended == 2 * (WARM_UP + MEASURED)  # every stream really ran
    growth = (after - before) / MEASURED
    print(f"heap growth: {growth:.2f} bytes per stream over {MEASURED} streams")
    assert growth < GROWTH_PER_STREAM, f"{growth:.1f} bytes per stream"


CHUNK = b"x" * 8192
CHUNKS = 1536  # 12 MiB: far more than loopback's socket buffers (about 3 MiB) can hold
STALL = 0.3


class ProgressApp:
    """Streams CHUNKS chunks as fast as the server takes them; counts what it sent."""

    def __init__(self) -> None:
        self.sent = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        for _ in range(CHUNKS):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
            self.sent += len(CHUNK)
        await send({"type": "http.response.body", "body": b""})


def read_slowly_noting(url: str, app: ProgressApp) -> tuple[int, int]:
    """Read slowly; returns (bytes the app had sent when the stall ended, bytes read)."""
    sent_during_stall: list[int] = []
    total = read_slowly(url + "/", STALL, lambda: sent_during_stall.append(app.sent))
    return sent_during_stall[0], total


def read_fast(url: str) -> int:
    with httpx.stream("GET", url + "/") as response:
        return sum(len(chunk) for chunk in response.iter_raw())


def send_wait_of_last_stream(telemetry: Telemetry, count: int) -> float:
    assert wait_until(lambda: len(telemetry.spans()) == 2 * count)
    span = [s for s in telemetry.spans() if s.name.endswith(" stream")][-1]
    attributes = span.attributes or {}
    assert attributes["http.stream.chunks"] == CHUNKS
    return float(attributes["http.stream.send_wait"])  # type: ignore[arg-type]


@pytest.mark.parametrize("server", SERVERS)
def test_a_slow_reader_is_send_wait_and_its_backpressure_reaches_the_app(
    telemetry: Telemetry, server: str
) -> None:
    app = ProgressApp()
    with serve(StreamingMiddleware(app, **telemetry.providers), server) as url:
        assert read_fast(url) == CHUNKS * len(CHUNK)
        fast_wait = send_wait_of_last_stream(telemetry, 1)
        app.sent = 0
        sent_during_stall, received = read_slowly_noting(url, app)
        slow_wait = send_wait_of_last_stream(telemetry, 2)
    assert received > CHUNKS * len(CHUNK)  # everything arrived (plus the HTTP framing)
    # While the client read nothing, the app was held back by the socket buffers: the
    # middleware let the server's backpressure through instead of buffering the stream.
    assert sent_during_stall < CHUNKS * len(CHUNK) / 2
    assert slow_wait >= STALL / 2
    assert slow_wait > fast_wait + STALL / 3


def test_the_app_is_held_back_as_much_with_the_middleware_as_without(
    telemetry: Telemetry,
) -> None:
    """What the app got to send while the client stalled, with and without otel-stream."""
    held: dict[bool, int] = {}
    for instrumented in (False, True):
        app = ProgressApp()
        served = StreamingMiddleware(app, **telemetry.providers) if instrumented else app
        with serve(served, "uvicorn") as url:
            result: list[tuple[int, int]] = []
            reader = threading.Thread(
                target=lambda r=result, a=app: r.append(read_slowly_noting(url, a))
            )
            reader.start()
            reader.join(20)
        held[instrumented] = result[0][0]
    # The same buffers hold the same bytes: within a few chunks of each other.
    assert abs(held[True] - held[False]) <= 8 * len(CHUNK), held
