"""What the client side adds to an outgoing call, per body chunk and per request.

Run ``python bench/client_overhead.py`` (about twenty seconds on two shared cores) or
``--quick`` (a few seconds). It is a report, not a test: it exits 0 whatever it finds.

How it measures (read before changing):

* Transport: a real ``httpx.HTTPTransport`` whose connection pool is replaced by one
  that answers from memory with prebuilt chunks, so every row runs httpx's whole
  client and transport path (and contrib's class-level transport wrapper applies)
  without a socket: what differs between two rows is the instrumentation's own work.
* Rows: a bare client (the baseline), contrib's httpx instrumentation (for this
  client: ``instrument_client``), otel-stream's ``StreamingClientInstrumentor`` (payload
  reading on and off), and both together. One process instruments once; the bare and
  contrib-only rows use a subclass of ``httpx.Client`` whose ``send`` is the original,
  so every row lives side by side. All share one real SDK ``TracerProvider`` with a
  ``BatchSpanProcessor`` (to an exporter that only counts) and one ``MeterProvider``
  with an ``InMemoryMetricReader``.
* Workloads: a 1,000-chunk byte stream read with ``iter_raw`` (the added cost per chunk
  is the stream's whole added cost divided by its chunks), an OpenAI-style SSE stream
  of 1,000 events, and a one-chunk JSON answer with a ``Content-Length`` read whole
  (added cost per request).
* Rounds: each round times one block of calls per row, in an order rotated every
  round; a row's added cost in a round is its time minus the bare client's in that
  round, and the table shows the median over rounds (± the median absolute deviation).
  Garbage collection is off while a block is timed; the span processor is flushed
  between blocks, untimed.
* Before timing, one call per row is checked: the caller read the same bytes as the
  bare client, and otel-stream's stream span counted every chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from time import perf_counter_ns
from typing import Any

import httpcore
import httpx
import overhead  # bench/ is on sys.path when a script runs: the server side's workloads
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from overhead import CountingExporter, openai_events

from otel_stream.clients import StreamingClientInstrumentor
from otel_stream.clients import instrumentor as client_instrumentor
from otel_stream.config import Settings
from otel_stream.recorder import CLIENT, Recorder

BARE = "bare httpx.Client (baseline)"
CONTRIB = "contrib httpx instrumentation"
OTEL_STREAM = "otel-stream StreamingClientInstrumentor"
NO_PAYLOADS = "otel-stream, payloads=False"
BOTH = "otel-stream + contrib"
ROWS = (BARE, CONTRIB, OTEL_STREAM, NO_PAYLOADS, BOTH)

URL = "http://upstream.invalid/v1/chat/completions"


# The in-memory upstream ----------------------------------------------------------------


@dataclass
class Workload:
    """One kind of response: its headers and the chunks its body arrives in."""

    name: str
    headers: list[tuple[bytes, bytes]]
    chunks: list[bytes]
    calls: int
    streamed: bool
    #: Read with ``httpx.AsyncClient`` (``aiter_raw``) instead of ``httpx.Client``.
    asynchronous: bool = False

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


class MemoryPool:
    """A connection pool that answers every request with the current workload."""

    def __init__(self) -> None:
        self.workload: Workload | None = None

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        workload = self.workload
        assert workload is not None
        return httpcore.Response(200, headers=workload.headers, content=iter(workload.chunks))

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        workload = self.workload
        assert workload is not None

        async def body() -> AsyncIterator[bytes]:
            for chunk in workload.chunks:
                yield chunk

        return httpcore.Response(200, headers=workload.headers, content=body())

    async def aclose(self) -> None:
        pass

    def close(self) -> None:
        pass


def byte_stream(chunks: int, calls: int) -> Workload:
    headers = [(b"content-type", b"application/octet-stream"), (b"transfer-encoding", b"chunked")]
    return Workload("stream", headers, [b"x" * 64] * chunks, calls, True)


def sse_stream(chunks: int, calls: int, *, asynchronous: bool = False) -> Workload:
    headers = [(b"content-type", b"text/event-stream"), (b"transfer-encoding", b"chunked")]
    name = "async sse" if asynchronous else "sse"
    return Workload(name, headers, openai_events(chunks), calls, True, asynchronous)


def json_answer(calls: int) -> Workload:
    body = json.dumps({"id": "chatcmpl-bench", "choices": [{"message": {"content": "hi"}}]})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return Workload("request", headers, [body.encode()], calls, False)


# The rows ------------------------------------------------------------------------------


@dataclass
class Providers:
    exporter: CountingExporter = field(default_factory=CountingExporter)
    tracer_provider: TracerProvider = field(default_factory=TracerProvider)
    meter_provider: MeterProvider = field(
        default_factory=lambda: MeterProvider(metric_readers=[InMemoryMetricReader()])
    )

    def __post_init__(self) -> None:
        self.tracer_provider.add_span_processor(
            BatchSpanProcessor(self.exporter, max_queue_size=1 << 20, schedule_delay_millis=60_000)
        )

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def flush(self) -> None:
        self.tracer_provider.force_flush()


@dataclass
class Row:
    """A client and the otel-stream recorder active while it runs (None: not ours)."""

    client: httpx.Client
    async_client: httpx.AsyncClient
    recorder: Recorder | None


def make_rows(pool: MemoryPool, providers: Providers) -> dict[str, Row]:
    original_send = vars(httpx.Client)["send"]
    original_async_send = vars(httpx.AsyncClient)["send"]
    StreamingClientInstrumentor().instrument(**providers.kwargs)
    with_payloads = client_instrumentor._state.recorder
    without_payloads = Recorder(
        Settings.from_options(payloads=False),
        providers.tracer_provider,
        providers.meter_provider,
        CLIENT,
    )

    class BareClient(httpx.Client):
        send = original_send  # the class attribute otel-stream patched, unpatched

    class BareAsyncClient(httpx.AsyncClient):
        send = original_async_send

    def client(cls: type[httpx.Client], contrib: bool) -> httpx.Client:
        transport = httpx.HTTPTransport()
        transport._pool = pool  # type: ignore[assignment]
        made = cls(transport=transport)
        if contrib:
            HTTPXClientInstrumentor.instrument_client(made, **providers.kwargs)
        return made

    def async_client(cls: type[httpx.AsyncClient], contrib: bool) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport()
        transport._pool = pool  # type: ignore[assignment]
        made = cls(transport=transport)
        if contrib:
            HTTPXClientInstrumentor.instrument_client(made, **providers.kwargs)
        return made

    def row(ours: bool, contrib: bool, recorder: Recorder | None) -> Row:
        return Row(
            client(httpx.Client if ours else BareClient, contrib),
            async_client(httpx.AsyncClient if ours else BareAsyncClient, contrib),
            recorder,
        )

    return {
        BARE: row(False, False, None),
        CONTRIB: row(False, True, None),
        OTEL_STREAM: row(True, False, with_payloads),
        NO_PAYLOADS: row(True, False, without_payloads),
        BOTH: row(True, True, with_payloads),
    }


LOOP = asyncio.new_event_loop()


def call(row: Row, workload: Workload) -> bytes:
    if workload.asynchronous:

        async def read() -> bytes:
            async with row.async_client.stream("GET", URL) as response:
                return b"".join([chunk async for chunk in response.aiter_raw()])

        return LOOP.run_until_complete(read())
    if not workload.streamed:
        return row.client.get(URL).content
    with row.client.stream("GET", URL) as response:
        return b"".join(response.iter_raw())


async def time_async(client: httpx.AsyncClient, calls: int) -> int:
    started = perf_counter_ns()
    for _ in range(calls):
        async with client.stream("GET", URL) as response:
            async for _chunk in response.aiter_raw():
                pass
    return perf_counter_ns() - started


def time_block(row: Row, workload: Workload) -> int:
    client_instrumentor._state.recorder = row.recorder or client_instrumentor._state.recorder
    client = row.client
    gc.collect()
    gc.disable()
    try:
        if workload.asynchronous:
            return LOOP.run_until_complete(time_async(row.async_client, workload.calls))
        started = perf_counter_ns()
        if workload.streamed:
            for _ in range(workload.calls):
                with client.stream("GET", URL) as response:
                    for _chunk in response.iter_raw():
                        pass
        else:
            for _ in range(workload.calls):
                client.get(URL).read()
        return perf_counter_ns() - started
    finally:
        gc.enable()


def check(name: str, row: Row, workload: Workload, providers: Providers) -> None:
    """One call: the same bytes as the bare client, and every chunk counted."""
    client_instrumentor._state.recorder = row.recorder or client_instrumentor._state.recorder
    exporter = providers.exporter
    providers.flush()
    exporter.keep, exporter.kept = True, []
    body = call(row, workload)
    providers.flush()
    exporter.keep = False
    if body != workload.body:
        raise AssertionError(f"{name}: the caller read other bytes than the bare client")
    if row.recorder is not None and workload.streamed:
        streams = [span for span in exporter.kept if span.name.endswith(" stream")]
        chunks = (streams[0].attributes or {}).get("http.stream.chunks") if streams else None
        if chunks != len(workload.chunks):
            raise AssertionError(f"{name}: the stream span counted {chunks} chunks")


def measure(
    workload: Workload, rows: dict[str, Row], pool: MemoryPool, providers: Providers, rounds: int
) -> dict[str, list[float]]:
    pool.workload = workload
    for name, row in rows.items():
        check(name, row, workload, providers)
        time_block(row, replace(workload, calls=max(1, workload.calls // 4)))  # warm-up
    result: dict[str, list[float]] = {name: [] for name in rows}
    for index in range(rounds):
        shift = index % len(ROWS)
        for name in (*ROWS[shift:], *ROWS[:shift]):
            result[name].append(time_block(rows[name], workload) / workload.calls)
            providers.flush()
    return result


def added(result: dict[str, list[float]], name: str) -> tuple[float, float]:
    values = [mine - base for mine, base in zip(result[name], result[BARE], strict=True)]
    middle = statistics.median(values)
    return middle, statistics.median(abs(value - middle) for value in values)


def server_side_per_chunk(chunks: int, calls: int, rounds: int) -> tuple[float, float]:
    """ns the server middleware adds per chunk of a byte stream and of an OpenAI SSE
    stream of as many chunks (bench/overhead.py's workloads: the same SSE events as the
    client rows read)."""
    per_chunk = []
    for workload in (overhead.byte_stream(chunks, calls), overhead.sse_stream(chunks, calls)):
        result = asyncio.run(overhead.measure(workload, overhead.Providers(), rounds))
        per_chunk.append(float(result.added(overhead.OTEL_STREAM)[0]) / chunks)
    return per_chunk[0], per_chunk[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    parser.add_argument("--rounds", type=int, help="timed rounds (default 11, quick 5)")
    parser.add_argument("--chunks", type=int, default=1_000, help="chunks per stream (1000)")
    parser.add_argument("--streams", type=int, help="streams per block (default 20, quick 4)")
    parser.add_argument("--requests", type=int, help="JSON calls per block (2000, quick 400)")
    options = parser.parse_args(argv)
    quick = options.quick
    chunks = options.chunks
    rounds = options.rounds or (5 if quick else 11)
    stream_calls = options.streams or (4 if quick else 20)
    json_calls = options.requests or (400 if quick else 2_000)
    providers = Providers()
    pool = MemoryPool()
    rows = make_rows(pool, providers)
    workloads = [
        byte_stream(chunks, stream_calls),
        sse_stream(chunks, stream_calls),
        sse_stream(chunks, stream_calls, asynchronous=True),
        json_answer(json_calls),
    ]
    results = {
        workload.name: measure(workload, rows, pool, providers, rounds) for workload in workloads
    }

    contrib_chunk = added(results["stream"], CONTRIB)[0] / chunks
    contrib_request = added(results["request"], CONTRIB)[0] / 1_000
    print(f"httpx {httpx.__version__}, Python {sys.version.split()[0]}, {rounds} rounds")
    print()
    columns = (
        ("stream", "per chunk, byte stream (ns)", chunks, 0),
        ("sse", "per chunk, OpenAI SSE (ns)", chunks, 0),
        ("async sse", "per chunk, OpenAI SSE, AsyncClient (ns)", chunks, 0),
        ("request", "per request, JSON answer (µs)", 1_000, 1),
    )
    print(
        "| client | "
        + " | ".join(title for _, title, _, _ in columns)
        + " | per chunk vs contrib | per request vs contrib |"
    )
    print("|---" * (len(columns) + 3) + "|")
    for name in ROWS:
        if name == BARE:
            cells = [
                f"{statistics.median(results[key][BARE]) / unit:,.{digits}f} (its own cost)"
                for key, _, unit, digits in columns
            ]
            print(f"| {name} | " + " | ".join(cells) + " | | |")
            continue
        cells = []
        for key, _, unit, digits in columns:
            middle, spread = added(results[key], name)
            cells.append(f"{middle / unit:,.{digits}f} ± {spread / unit:,.{digits}f}")
        per_chunk = added(results["stream"], name)[0] / chunks
        per_request = added(results["request"], name)[0] / 1_000
        cells.append(f"{per_chunk / contrib_chunk if contrib_chunk > 0 else float('inf'):.2f}x")
        cells.append(
            f"{per_request / contrib_request if contrib_request > 0 else float('inf'):.2f}x"
        )
        print(f"| {name} | " + " | ".join(cells) + " |")
    server = server_side_per_chunk(chunks, stream_calls, rounds)
    print()
    for (label, key), server_ns in zip(
        (("byte stream", "stream"), ("OpenAI SSE, payloads on", "sse")), server, strict=True
    ):
        ours = added(results[key], OTEL_STREAM)[0] / chunks
        print(
            f"Per chunk, {label}: server side (bench/overhead.py's StreamingMiddleware, "
            f"{chunks:,} chunks) {server_ns:,.0f} ns in this run; the client side's "
            f"{ours:,.0f} ns is {ours / server_ns:.2f}x that (target: at most 1.00x)"
        )
    print()
    print(
        "Per chunk: the stream's whole added cost (request part included) / its chunks; "
        "contrib adds nothing per chunk (its span ends at the headers), so that ratio "
        "compares otel-stream's per-chunk work with contrib's per-call work spread over "
        "the stream."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
