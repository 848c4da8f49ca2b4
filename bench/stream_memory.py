"""Memory per in-flight stream: many concurrent idle streams, with and without otel-stream.

In one process, on one asyncio event loop, without sockets: each stream is one task that
calls the app through the middleware (or directly, for the baseline) with a fake server
``receive``/``send``. The app sends its headers and a first SSE chunk, then waits for an
event that is set only after the measurement: the stream is open, idle, and holds what an
open stream holds (the request span already ended, the stream span open, the active
counter up, the disconnect watcher task waiting on ``receive``). ``tracemalloc`` measures
the Python heap once every stream is idle; the difference between the two runs, divided
by the number of streams, is what otel-stream holds per in-flight stream.

    python bench/stream_memory.py              # 10,000 streams
    python bench/stream_memory.py --streams 500
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tracemalloc
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from otel_stream import StreamingMiddleware


class CountingProcessor(SpanProcessor):
    def __init__(self) -> None:
        self.started = 0
        self.ended = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.started += 1

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1


def scope_for(index: int) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"bench"),
            (b"content-type", b"application/json"),
        ],
        "client": ("127.0.0.1", 10000 + index % 50000),
        "server": ("127.0.0.1", 8000),
    }


async def measure(streams: int, instrumented: bool) -> tuple[int, int]:
    """Heap bytes in use with ``streams`` idle streams open, minus before they opened;
    and the number of spans started."""
    release = asyncio.Event()
    idle = 0
    all_idle = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal idle
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        idle += 1
        if idle == streams:
            all_idle.set()
        await release.wait()
        await send({"type": "http.response.body", "body": b""})

    processor = CountingProcessor()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(processor)
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    served: Any = app
    if instrumented:
        served = StreamingMiddleware(
            app, tracer_provider=tracer_provider, meter_provider=meter_provider
        )

    async def one(index: int) -> None:
        request = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive() -> dict[str, Any]:
            if request:
                return request.pop()
            await release.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            pass

        await served(scope_for(index), receive, send)

    # Warm up both paths once, so one-time imports and caches are not counted.
    release.set()
    await asyncio.gather(*(one(i) for i in range(10)))
    release.clear()
    idle = 0
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    tasks = [asyncio.create_task(one(i)) for i in range(streams)]
    await all_idle.wait()
    for _ in range(5):  # let the watchers start and reach their receive
        await asyncio.sleep(0)
    gc.collect()
    during = tracemalloc.get_traced_memory()[0]
    release.set()
    await asyncio.gather(*tasks)
    tracer_provider.shutdown()
    meter_provider.shutdown()
    return during - before, processor.started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Memory per in-flight stream.")
    parser.add_argument("--streams", type=int, default=10_000)
    args = parser.parse_args(argv)
    tracemalloc.start()
    bare, _ = asyncio.run(measure(args.streams, instrumented=False))
    instrumented, spans = asyncio.run(measure(args.streams, instrumented=True))
    tracemalloc.stop()
    per_bare = bare / args.streams
    per_instrumented = instrumented / args.streams
    print(f"idle in-flight streams: {args.streams:,} (Python {sys.version.split()[0]})")
    print("| | heap per in-flight stream (bytes) |")
    print("|---|---|")
    print(f"| bare app (task, fake server, app frame) | {per_bare:,.0f} |")
    print(f"| with otel-stream | {per_instrumented:,.0f} |")
    print(f"| held by otel-stream | {per_instrumented - per_bare:,.0f} |")
    print(f"spans started with otel-stream: {spans - 20:,} for {args.streams:,} streams")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
