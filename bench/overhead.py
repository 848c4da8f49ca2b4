"""What each ASGI instrumentation adds to a request, per body chunk and per request.

Run ``python bench/overhead.py`` (about half a minute on two shared cores) or
``--quick`` (a few seconds). Everything runs in one process, on one event loop,
without sockets: the ASGI app is called directly with a ``receive`` and a ``send`` that
do next to nothing, so what differs between two rows is the instrumentation's own work.
It is a report, not a test: it exits 0 whether the targets are met or not.

How it measures (read before changing):

* Rows: the bare app (the baseline), otel-stream's ``StreamingMiddleware`` (payload
  parsing on and off), opentelemetry-instrumentation-asgi's ``OpenTelemetryMiddleware``
  (default, and with ``exclude_spans=["send", "receive"]``) and Starlette's own
  ``OpenTelemetryMiddleware``. All share one real SDK ``TracerProvider`` with a
  ``BatchSpanProcessor`` (exporting to an exporter that only counts) and one real
  ``MeterProvider`` with an ``InMemoryMetricReader``, passed as ``tracer_provider=`` and
  ``meter_provider=`` (every row accepts both; Starlette's records no metrics).
* Workloads: a 1,000-chunk byte stream (the cost added per chunk is the stream's whole
  added cost, request part included, divided by its chunks); a 10-chunk byte stream,
  only to split that cost into a fixed part per stream and a part per extra chunk;
  single-chunk responses (cost added per request), on one connection as a pooled client
  sends them, and again each from a new connection (a client port never seen before: the
  request attributes otel-stream keeps per connection never apply); an OpenAI-style SSE
  stream of 1,000 events (role delta, content deltas, finish chunk, usage chunk,
  ``data: [DONE]``).
* Wire shapes: every stream of the test corpus (``tests/payload_corpus.py``: OpenAI,
  Azure, vLLM, SGLang, TGI, llama.cpp, Ollama, Anthropic, Responses... as those servers
  write them), about 1,000 events each, timed with the bare app, otel-stream with
  payload parsing on and off, and upstream with ``exclude_spans``. The cost added per
  event is the stream's added cost divided by its events (SSE events or NDJSON lines;
  one shape sends four events per chunk). The corpus is loaded from its file, so the
  bench needs no import path of its own.
* A single-event ``text/event-stream`` response (one chat chunk, then the end), per
  request, with the same rows; its payload cost is split into the reader's own work
  (``make_reader``, ``feed`` and ``finish`` timed alone, in the same run) and the rest,
  which is the middleware recording what the reader found.
* Rounds: every round times one block of requests per row, in an order rotated each
  round; the cost a row adds in a round is its time minus the bare app's time in that
  same round, and the tables show the median over rounds (± the median absolute
  deviation). Interleaving cancels slow drift of a shared machine; the median drops
  rounds another process disturbed.
* Garbage collection is off while a block is timed; after each block a full collection
  runs untimed, and the cyclic garbage it finds is reported instead. The span processor
  is flushed between blocks (untimed) so no row pays for another's backlog; its queue
  is large enough that no span is dropped. The exporter does nothing, so the cost
  measured is creating, filling, ending and queueing spans and recording metrics.
* The app reads its request body, then yields to the event loop once (as an app
  awaiting its model does), so tasks a middleware starts really run; it then sends
  prebuilt response messages. ``receive`` returns the request once, then waits forever
  like a server's ``receive`` before a disconnect.
* Before timing, one request per row and workload is checked: the bytes sent are
  identical to the bare app's, otel-stream's stream span counted every chunk (and read
  the SSE events when payload parsing is on and a reader exists), and the spans each
  row produced are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import math
import os
import statistics
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter, perf_counter_ns
from types import ModuleType
from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as UpstreamMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from starlette.middleware.opentelemetry import OpenTelemetryMiddleware as StarletteMiddleware
from starlette.routing import Route

from otel_stream import StreamingMiddleware
from otel_stream.attributes import STREAM_CHUNKS, STREAM_EVENTS
from otel_stream.payloads import make_reader

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BARE = "bare app (baseline)"
OTEL_STREAM = "otel-stream StreamingMiddleware"
OTEL_STREAM_NO_PAYLOADS = "otel-stream, payloads=False"
UPSTREAM = "otel asgi OpenTelemetryMiddleware"
UPSTREAM_EXCLUDE = 'otel asgi, exclude_spans=["send","receive"]'
STARLETTE = "Starlette OpenTelemetryMiddleware"
ROWS = (BARE, OTEL_STREAM, OTEL_STREAM_NO_PAYLOADS, UPSTREAM, UPSTREAM_EXCLUDE, STARLETTE)

SHAPE_ROWS = (BARE, OTEL_STREAM, OTEL_STREAM_NO_PAYLOADS, UPSTREAM_EXCLUDE)

QUEUE_SIZE = 1 << 20
TARGET_PER_CHUNK = 0.8
TARGET_PER_REQUEST = 0.7
#: Payload parsing on, per event, against upstream with ``exclude_spans``.
TARGET_SHAPE_MEDIAN = 1.0
TARGET_SHAPE_WORST = 1.3
CORPUS = Path(__file__).resolve().parent.parent / "tests" / "payload_corpus.py"


def load_corpus() -> ModuleType:
    """The test corpus of wire shapes, loaded from its file (it imports only the stdlib)."""
    spec = importlib.util.spec_from_file_location("payload_corpus", CORPUS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


PATH = "/v1/chat/completions"
REQUEST_BODY = json.dumps(
    {
        "model": "bench-model",
        "stream": True,
        "messages": [{"role": "user", "content": "Say something."}],
    }
).encode()
SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 54321),
    "scheme": "http",
    "method": "POST",
    "root_path": "",
    "path": PATH,
    "raw_path": PATH.encode(),
    "query_string": b"",
    "headers": [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"otel-stream-bench/1.0"),
        (b"accept", b"*/*"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(REQUEST_BODY)).encode()),
    ],
}
REQUEST_MESSAGE: dict[str, Any] = {"type": "http.request", "body": REQUEST_BODY, "more_body": False}


async def _endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    raise NotImplementedError  # only the Route object is used, for its path template


ROUTE = Route(PATH, _endpoint)


# Telemetry -----------------------------------------------------------------------------


class CountingExporter(SpanExporter):
    """Exports nowhere; counts spans, and keeps them only while ``keep`` is set."""

    def __init__(self) -> None:
        self.exported = 0
        self.keep = False
        self.kept: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        if self.keep:
            self.kept.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@dataclass
class Providers:
    exporter: CountingExporter = field(default_factory=CountingExporter)
    tracer_provider: TracerProvider = field(default_factory=TracerProvider)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)
    meter_provider: MeterProvider = field(init=False)

    def __post_init__(self) -> None:
        # The default queue (2,048 spans) would drop most of the upstream default row's
        # 1,000 send spans per stream, and dropping is cheaper than queueing.
        processor = BatchSpanProcessor(self.exporter, max_queue_size=QUEUE_SIZE)
        self.tracer_provider.add_span_processor(processor)
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def flush(self) -> None:
        self.tracer_provider.force_flush()

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


class DropCounter(logging.Filter):
    """Counts (and silences) the batch processor's "Queue full, dropping" warnings."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Queue full"):
            self.dropped += 1
            return False
        return True


def instrument(row: str, app: ASGIApp, providers: Providers) -> ASGIApp:
    """``app`` wrapped the way ``row`` says."""
    kwargs = providers.kwargs
    if row == BARE:
        return app
    if row == OTEL_STREAM:
        return StreamingMiddleware(app, **kwargs)
    if row == OTEL_STREAM_NO_PAYLOADS:
        return StreamingMiddleware(app, payloads=False, **kwargs)
    if row == UPSTREAM:
        return UpstreamMiddleware(app, **kwargs)
    if row == UPSTREAM_EXCLUDE:
        return UpstreamMiddleware(app, exclude_spans=["send", "receive"], **kwargs)
    if row == STARLETTE:
        return StarletteMiddleware(app, **kwargs)
    raise ValueError(row)


# Workloads -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One kind of response, and how many of them one timed block sends."""

    start: dict[str, Any]
    bodies: tuple[dict[str, Any], ...]
    requests: int
    #: The payload events the reader must count (corpus shapes), or None.
    events: int | None = None
    #: Each request from a client port never seen before (a new connection), so nothing
    #: kept for an earlier connection's requests applies.
    new_connections: bool = False

    @property
    def chunks(self) -> int:
        return sum(1 for message in self.bodies if message["body"])

    @property
    def body(self) -> bytes:
        return b"".join(message["body"] for message in self.bodies)

    @property
    def sse(self) -> bool:
        content_type: bytes = self.start["headers"][0][1]
        return content_type.startswith(b"text/event-stream")


def _start(content_type: bytes) -> dict[str, Any]:
    return {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache")],
    }


def _stream(
    start: dict[str, Any], bodies: Sequence[bytes], requests: int, events: int | None = None
) -> Workload:
    messages = [{"type": "http.response.body", "body": body, "more_body": True} for body in bodies]
    messages.append({"type": "http.response.body", "body": b"", "more_body": False})
    return Workload(start, tuple(messages), requests, events)


def shape_stream(shape: Any, requests: int) -> Workload:
    """One corpus shape's whole stream."""
    start = _start(shape.content_type)
    return _stream(start, shape.chunks, requests, shape.events)


def single_event(requests: int) -> Workload:
    """A ``text/event-stream`` response of one chat chunk, sent with the end of the body."""
    message = {"type": "http.response.body", "body": single_event_body(), "more_body": False}
    return Workload(_start(b"text/event-stream"), (message,), requests, 1)


def single_event_body() -> bytes:
    return openai_events(5)[2]  # one content delta: the reader decodes it (its first token)


def byte_stream(chunks: int, requests: int) -> Workload:
    """``chunks`` plain 64-byte chunks, then the final empty message."""
    return _stream(_start(b"text/plain; charset=utf-8"), [b"x" * 64] * chunks, requests)


def single_chunk(requests: int, new_connections: bool = False) -> Workload:
    body = json.dumps({"id": "bench", "object": "chat.completion", "choices": []}).encode()
    message = {"type": "http.response.body", "body": body, "more_body": False}
    return Workload(
        _start(b"application/json"), (message,), requests, new_connections=new_connections
    )


def openai_events(chunks: int) -> list[bytes]:
    """An OpenAI chat-completions stream of ``chunks`` SSE events: a role-only delta,
    content deltas, the finish chunk, the usage chunk and ``data: [DONE]``."""

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "bench-model",
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "finish_reason": finish_reason}

    tokens = max(chunks - 4, 1)
    usage = {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}
    return [
        event([choice({"role": "assistant", "content": ""})]),
        *(event([choice({"content": "tok"})]) for _ in range(tokens)),
        event([choice({}, "stop")]),
        event([], usage=usage),
        b"data: [DONE]\n\n",
    ]


def sse_stream(chunks: int, requests: int) -> Workload:
    start = _start(b"text/event-stream; charset=utf-8")
    return _stream(start, openai_events(chunks), requests)


def make_app(workload: Workload) -> ASGIApp:
    start, bodies = workload.start, workload.bodies

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = ROUTE  # what Starlette's router does
        await receive()
        await asyncio.sleep(0)  # the model thinks: tasks the middleware started run now
        await send(start)
        for message in bodies:
            await send(message)

    return app


def make_receive() -> Receive:
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return REQUEST_MESSAGE
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        return await waiter  # a server's receive before the client goes away

    return receive


async def discard(message: Message) -> None:
    pass


# Measuring -----------------------------------------------------------------------------


@dataclass
class Result:
    """Per row: nanoseconds per request in each round, garbage, spans per request."""

    ns_per_request: dict[str, list[float]] = field(default_factory=dict)
    garbage: dict[str, list[float]] = field(default_factory=dict)
    spans: dict[str, int] = field(default_factory=dict)

    def added(self, row: str) -> tuple[float, float]:
        """Nanoseconds ``row`` adds to one request: median over rounds, and its spread."""
        bare = self.ns_per_request[BARE]
        added = [mine - base for mine, base in zip(self.ns_per_request[row], bare, strict=True)]
        middle = statistics.median(added)
        return middle, statistics.median(abs(value - middle) for value in added)


_client_ports = itertools.count(1)


def scopes(requests: int, new_connections: bool) -> list[dict[str, Any]]:
    """The scopes of one block (made before it is timed): the same connection's, or each
    from a client port never used before."""
    if not new_connections:
        return [dict(SCOPE) for _ in range(requests)]
    return [{**SCOPE, "client": ("127.0.0.1", next(_client_ports))} for _ in range(requests)]


async def time_block(app: ASGIApp, requests: int, new_connections: bool = False) -> int:
    block = scopes(requests, new_connections)
    gc.collect()
    gc.disable()
    try:
        started = perf_counter_ns()
        for scope in block:
            await app(scope, make_receive(), discard)
        await asyncio.sleep(0)  # cancelled background tasks finish inside the timing
        return perf_counter_ns() - started
    finally:
        gc.enable()


async def check(row: str, app: ASGIApp, providers: Providers, workload: Workload) -> int:
    """Send one response; fail unless it is right. Returns the spans it produced."""
    received: list[bytes] = []

    async def record(message: Message) -> None:
        if message["type"] == "http.response.body":
            received.append(message.get("body", b""))

    exporter = providers.exporter
    providers.flush()
    before = exporter.exported
    exporter.keep = True
    exporter.kept.clear()
    await app(dict(SCOPE), make_receive(), record)
    await asyncio.sleep(0)
    providers.flush()
    exporter.keep = False
    if b"".join(received) != workload.body:
        raise AssertionError(f"{row}: the bytes sent differ from the bare app's")
    if row in (OTEL_STREAM, OTEL_STREAM_NO_PAYLOADS) and len(workload.bodies) > 1:
        streams = [span for span in exporter.kept if span.name.endswith(" stream")]
        attributes = dict(streams[0].attributes or {}) if len(streams) == 1 else {}
        if attributes.get(STREAM_CHUNKS) != workload.chunks:
            raise AssertionError(f"{row}: no stream span with {workload.chunks} chunks")
        parsing = row == OTEL_STREAM and (workload.sse or workload.events is not None)
        if (STREAM_EVENTS in attributes) != (parsing and payload_reader_exists()):
            raise AssertionError(f"{row}: {STREAM_EVENTS} should be set: {parsing}")
        if parsing and workload.events is not None and attributes[STREAM_EVENTS] != workload.events:
            raise AssertionError(
                f"{row}: read {attributes[STREAM_EVENTS]} events, not {workload.events}"
            )
    return exporter.exported - before


def payload_reader_exists() -> bool:
    return make_reader(b"text/event-stream; charset=utf-8", 64 * 1024, perf_counter) is not None


async def measure(
    workload: Workload, providers: Providers, rounds: int, rows: Sequence[str] = ROWS
) -> Result:
    app = make_app(workload)
    apps = {row: instrument(row, app, providers) for row in rows}
    result = Result()
    for row, instrumented in apps.items():
        result.spans[row] = await check(row, instrumented, providers, workload)
        await time_block(  # warm-up
            instrumented, max(1, workload.requests // 4), workload.new_connections
        )
        result.ns_per_request[row] = []
        result.garbage[row] = []
    providers.flush()
    for round_index in range(rounds):
        shift = round_index % len(rows)
        for row in (*rows[shift:], *rows[:shift]):
            elapsed = await time_block(apps[row], workload.requests, workload.new_connections)
            result.ns_per_request[row].append(elapsed / workload.requests)
            providers.flush()
            result.garbage[row].append(gc.collect() / workload.requests)
    return result


# Report --------------------------------------------------------------------------------


@dataclass
class Report:
    """The added costs of every row, in the units of the tables."""

    results: dict[str, Result]
    workloads: dict[str, Workload]

    def per_chunk(self, key: str, row: str) -> tuple[float, float]:
        """ns added per chunk of workload ``key``: the stream's whole added cost / chunks."""
        middle, spread = self.results[key].added(row)
        chunks = self.workloads[key].chunks
        return middle / chunks, spread / chunks

    def per_request(self, row: str, key: str = "request") -> tuple[float, float]:
        middle, spread = self.results[key].added(row)
        return middle / 1_000, spread / 1_000

    def split(self, row: str) -> tuple[float, float]:
        """(µs fixed per stream, ns per extra chunk), from byte streams of two lengths."""
        long, short = self.workloads["stream"], self.workloads["short"]
        long_ns = self.results["stream"].added(row)[0]
        short_ns = self.results["short"].added(row)[0]
        marginal = (long_ns - short_ns) / (long.chunks - short.chunks)
        return (short_ns - marginal * short.chunks) / 1_000, marginal

    def ratio(self, value: float, baseline: float) -> float:
        return value / baseline if baseline > 0 else math.inf


def _cost(value: tuple[float, float], digits: int) -> str:
    return f"{value[0]:,.{digits}f} ± {value[1]:,.{digits}f}"


def cost_table(report: Report) -> list[str]:
    long, sse = report.workloads["stream"], report.workloads["sse"]
    header = (
        "middleware",
        f"per chunk, {long.chunks:,}-chunk byte stream (ns)",
        "per request, single-chunk response (µs)",
        "per request, each on a new connection (µs)",
        f"per chunk, {sse.chunks:,}-event OpenAI SSE stream (ns)",
        "spans per stream / request",
        "cyclic garbage per stream / request (objects)",
    )
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in ROWS:
        results = report.results
        spans = f"{results['stream'].spans[row]} / {results['request'].spans[row]}"
        garbage = " / ".join(
            f"{statistics.median(results[key].garbage[row]):,.0f}" for key in ("stream", "request")
        )
        if row == BARE:
            stream_ns = statistics.median(results["stream"].ns_per_request[BARE]) / long.chunks
            request_us = statistics.median(results["request"].ns_per_request[BARE]) / 1_000
            fresh_us = statistics.median(results["fresh"].ns_per_request[BARE]) / 1_000
            sse_ns = statistics.median(results["sse"].ns_per_request[BARE]) / sse.chunks
            cells = [
                f"{stream_ns:,.0f} (its own cost)",
                f"{request_us:,.2f} (its own cost)",
                f"{fresh_us:,.2f} (its own cost)",
                f"{sse_ns:,.0f} (its own cost)",
            ]
        else:
            cells = [
                _cost(report.per_chunk("stream", row), 0),
                _cost(report.per_request(row), 2),
                _cost(report.per_request(row, "fresh"), 2),
                _cost(report.per_chunk("sse", row), 0),
            ]
        lines.append("| " + " | ".join([row, *cells, spans, garbage]) + " |")
    return lines


def split_table(report: Report) -> list[str]:
    long, short = report.workloads["stream"], report.workloads["short"]
    lines = [
        "| middleware | fixed cost per stream (µs) | cost per extra chunk (ns) |",
        "|---|---|---|",
    ]
    for row in ROWS[1:]:
        fixed, marginal = report.split(row)
        lines.append(f"| {row} | {fixed:,.1f} | {marginal:,.0f} |")
    lines.append("")
    lines.append(
        f"(from {long.chunks:,}- and {short.chunks:,}-chunk byte streams: the per-chunk "
        "column above is fixed / chunks + cost per extra chunk)"
    )
    fixed = report.split(OTEL_STREAM)[0]
    upstream_request = report.per_request(UPSTREAM_EXCLUDE)[0]
    lines.append(
        f"otel-stream's fixed cost per stream (2 spans, 7 measurements): {fixed:,.1f} µs, "
        f"beside upstream-with-exclude_spans' cost per request (1 span): "
        f"{upstream_request:,.1f} µs ({report.ratio(fixed, upstream_request):.2f}x); "
        "bench/sdk_costs.py splits it by SDK call"
    )
    return lines


def target_table(report: Report) -> list[str]:
    upstream_chunk = report.per_chunk("stream", UPSTREAM_EXCLUDE)[0]
    upstream_sse = report.per_chunk("sse", UPSTREAM_EXCLUDE)[0]
    upstream_request = report.per_request(UPSTREAM_EXCLUDE)[0]
    upstream_marginal = report.split(UPSTREAM_EXCLUDE)[1]
    checks = [
        (
            "per chunk, byte stream",
            report.ratio(report.per_chunk("stream", OTEL_STREAM)[0], upstream_chunk),
            TARGET_PER_CHUNK,
        ),
        (
            "per request",
            report.ratio(report.per_request(OTEL_STREAM)[0], upstream_request),
            TARGET_PER_REQUEST,
        ),
        (
            "per request, each on a new connection (nothing kept applies)",
            report.ratio(
                report.per_request(OTEL_STREAM, "fresh")[0],
                report.per_request(UPSTREAM_EXCLUDE, "fresh")[0],
            ),
            TARGET_PER_REQUEST,
        ),
        (
            "per chunk, OpenAI SSE, payload parsing on (the per-shape table below judges it)",
            report.ratio(report.per_chunk("sse", OTEL_STREAM)[0], upstream_sse),
            TARGET_SHAPE_MEDIAN,
        ),
        (
            "per chunk, OpenAI SSE, payload parsing off",
            report.ratio(report.per_chunk("sse", OTEL_STREAM_NO_PAYLOADS)[0], upstream_sse),
            TARGET_PER_CHUNK,
        ),
    ]
    marginal = report.ratio(report.split(OTEL_STREAM)[1], upstream_marginal)
    return verdict_table(
        "otel-stream's added cost / upstream-with-exclude_spans' added cost",
        checks,
        marginal,
        _ratio,
    )


def verdict_table(
    title: str,
    checks: Sequence[tuple[str, float, float]],
    marginal: float,
    show: Callable[[float], str],
) -> list[str]:
    """The targets table: each check's ratio and verdict, then the cost per extra chunk
    for information. ``show`` writes a ratio."""
    lines = [f"| {title} | ratio | target | verdict |", "|---|---|---|---|"]
    for label, value, target in checks:
        lines.append(f"| {label} | {show(value)} | <= {target}x | {_verdict(value, target)} |")
    lines.append(f"| (for information) cost per extra chunk, byte stream | {show(marginal)} | | |")
    return lines


def _verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


def reader_per_event(shape: Any, rounds: int) -> float:
    """ns per event of the reader alone on one corpus shape (make_reader, every chunk's
    ``feed``, ``finish``): median of rounds, timed in this process with nothing else."""
    samples = []
    for _ in range(rounds):
        gc.disable()
        try:
            started = perf_counter_ns()
            reader = make_reader(shape.content_type, 64 * 1024, perf_counter)
            assert reader is not None
            for chunk in shape.chunks:
                reader.feed(chunk)
            reader.finish()
            samples.append((perf_counter_ns() - started) / shape.events)
        finally:
            gc.enable()
    return statistics.median(samples)


def shape_table(report: Report, shapes: dict[str, Any], alone: dict[str, float]) -> list[str]:
    """Per corpus shape: ns added per event by each row, and parsing on / upstream."""
    lines = [
        "| wire shape | events | payloads on (ns/event) | payloads off (ns/event) "
        "| upstream, exclude_spans (ns/event) | on / upstream | off / upstream "
        "| reader alone (ns/event) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for name, shape in shapes.items():
        result = report.results[f"shape:{name}"]
        on, off, upstream = (
            (result.added(row)[0] / shape.events, result.added(row)[1] / shape.events)
            for row in (OTEL_STREAM, OTEL_STREAM_NO_PAYLOADS, UPSTREAM_EXCLUDE)
        )
        ratio = report.ratio(on[0], upstream[0])
        ratios.append(ratio)
        off_ratio = report.ratio(off[0], upstream[0])
        lines.append(
            f"| {name} | {shape.events:,} | {_cost(on, 0)} | {_cost(off, 0)} | "
            f"{_cost(upstream, 0)} | {_ratio(ratio)} | {_ratio(off_ratio)} | {alone[name]:,.0f} |"
        )
    median, worst = statistics.median(ratios), max(ratios)
    lines += [
        "",
        "| payloads on / upstream-with-exclude_spans, per event | ratio | target | verdict |",
        "|---|---|---|---|",
        f"| median shape | {_ratio(median)} | <= {TARGET_SHAPE_MEDIAN}x | "
        f"{_verdict(median, TARGET_SHAPE_MEDIAN)} |",
        f"| worst shape | {_ratio(worst)} | <= {TARGET_SHAPE_WORST}x | "
        f"{_verdict(worst, TARGET_SHAPE_WORST)} |",
    ]
    return lines


def reader_cost(body: bytes, requests: int, rounds: int) -> dict[str, float]:
    """µs per request of the reader alone on a one-event SSE body: median of rounds."""
    content_type = b"text/event-stream"
    parts: dict[str, list[float]] = {"make_reader": [], "feed": [], "finish": []}
    for _ in range(rounds):
        gc.disable()
        try:
            made = perf_counter_ns()
            readers = [make_reader(content_type, 64 * 1024, perf_counter) for _ in range(requests)]
            fed = perf_counter_ns()
            for reader in readers:
                if reader is not None:
                    reader.feed(body)
            finished = perf_counter_ns()
            for reader in readers:
                if reader is not None:
                    reader.finish()
            done = perf_counter_ns()
        finally:
            gc.enable()
        parts["make_reader"].append((fed - made) / requests / 1_000)
        parts["feed"].append((finished - fed) / requests / 1_000)
        parts["finish"].append((done - finished) / requests / 1_000)
    return {name: statistics.median(values) for name, values in parts.items()}


def single_event_table(report: Report, reader: dict[str, float]) -> list[str]:
    result = report.results["single-event"]
    on, off, upstream = (
        (result.added(row)[0] / 1_000, result.added(row)[1] / 1_000)
        for row in (OTEL_STREAM, OTEL_STREAM_NO_PAYLOADS, UPSTREAM_EXCLUDE)
    )
    ratio = report.ratio(on[0], upstream[0])
    payload = on[0] - off[0]
    alone = sum(reader.values())
    return [
        "| per request, one-event text/event-stream response (µs) | payloads on "
        "| payloads off | upstream, exclude_spans | on / upstream | target | verdict |",
        "|---|---|---|---|---|---|---|",
        f"| cost added | {_cost(on, 2)} | {_cost(off, 2)} | {_cost(upstream, 2)} | "
        f"{_ratio(ratio)} | <= {TARGET_PER_REQUEST}x | {_verdict(ratio, TARGET_PER_REQUEST)} |",
        "",
        "| payload parsing's share of that request (µs) | |",
        "|---|---|",
        f"| payloads on minus payloads off | {payload:,.2f} |",
        f"| the reader alone: make_reader + feed + finish | {alone:,.2f} "
        f"({reader['make_reader']:,.2f} + {reader['feed']:,.2f} + {reader['finish']:,.2f}) |",
        f"| the rest: the middleware recording what the reader found | {payload - alone:,.2f} |",
    ]


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if math.isfinite(value) else "n/a (upstream added nothing measurable)"


@dataclass(frozen=True)
class Sizes:
    """How much one run measures (the options both in-process benches share)."""

    rounds: int
    chunks: int
    streams: int
    requests: int

    @property
    def short_chunks(self) -> int:
        """The chunks of the short byte stream that splits the cost per stream."""
        return min(10, self.chunks // 2)

    @property
    def short_streams(self) -> int:
        """Short streams per block: about a quarter of the long streams' chunks."""
        return max(1, self.streams * self.chunks // self.short_chunks // 4)


def parse_sizes(description: str, item: str, argv: Sequence[str] | None) -> Sizes:
    """The command line of an in-process bench; ``item``: what a single response sends."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, help="timed rounds (default 21, quick 5)")
    parser.add_argument("--chunks", type=int, default=1000, help="chunks per stream (1000)")
    parser.add_argument("--streams", type=int, help="streams per timed block (4, quick 1)")
    parser.add_argument(
        "--requests", type=int, help=f"single-{item} requests per timed block (1000, quick 200)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller blocks")
    args = parser.parse_args(argv)
    sizes = Sizes(
        rounds=args.rounds or (5 if args.quick else 21),
        chunks=args.chunks,
        streams=args.streams or (1 if args.quick else 4),
        requests=args.requests or (200 if args.quick else 1000),
    )
    if min(sizes.rounds, sizes.streams, sizes.requests) < 1 or sizes.chunks < 20:
        parser.error("--rounds, --streams and --requests must be >= 1, --chunks >= 20")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    sizes = parse_sizes("Overhead of ASGI instrumentations.", "chunk", argv)
    rounds, streams, requests = sizes.rounds, sizes.streams, sizes.requests

    drops = DropCounter()
    logging.getLogger("opentelemetry.sdk._shared_internal").addFilter(drops)
    corpus = load_corpus()
    tokens = max(1, sizes.chunks - 8)  # the events around the content deltas
    shapes = {name: build(tokens) for name, build in corpus.SHAPES.items()}
    workloads = {
        "stream": byte_stream(sizes.chunks, streams),
        "short": byte_stream(sizes.short_chunks, sizes.short_streams),
        "request": single_chunk(requests),
        "fresh": single_chunk(requests, new_connections=True),
        "sse": sse_stream(sizes.chunks, streams),
    }
    shape_workloads = {
        "single-event": single_event(requests),
        **{f"shape:{name}": shape_stream(shape, streams) for name, shape in shapes.items()},
    }
    providers = Providers()
    began = perf_counter()
    try:
        results = {
            key: asyncio.run(measure(workload, providers, rounds))
            for key, workload in workloads.items()
        }
        for key, workload in shape_workloads.items():
            results[key] = asyncio.run(measure(workload, providers, rounds, SHAPE_ROWS))
        metrics = providers.reader.get_metrics_data()
    finally:
        providers.shutdown()
    reader = reader_cost(single_event_body(), requests, rounds)
    alone = {name: reader_per_event(shape, rounds) for name, shape in shapes.items()}
    report = Report(results, {**workloads, **shape_workloads})

    packages = ("otel-stream", "opentelemetry-sdk", "opentelemetry-instrumentation-asgi")
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in (*packages, "starlette")
    )
    print(
        f"otel-stream overhead benchmark: {rounds} rounds; a block is {streams} x "
        f"{sizes.chunks:,}-chunk streams or {requests:,} single-chunk requests; "
        f"{perf_counter() - began:.0f} s\n"
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {versions}"
    )
    print(
        "otel-stream payload parsing for text/event-stream: "
        + ("on (a reader exists)" if payload_reader_exists() else "no reader yet: on = off")
    )
    if drops.dropped:
        print(f"warning: the batch span processor dropped {drops.dropped} spans")
    if metrics is None:
        print("warning: no metrics were recorded")
    print("\nCost added, median of rounds ± median absolute deviation:\n")
    print("\n".join(cost_table(report)))
    print("\nThe byte stream's added cost, split:\n")
    print("\n".join(split_table(report)))
    print("\nTargets:\n")
    print("\n".join(target_table(report)))
    print(
        f"\nLLM wire shapes (the test corpus, {tokens:,} content deltas each), cost added per"
        " event, median of rounds ± median absolute deviation:\n"
    )
    print("\n".join(shape_table(report, shapes, alone)))
    print(
        "\n(reader alone: the payload reader fed the same chunks directly, no middleware; "
        "payloads on minus payloads off is what it costs inside the middleware)"
    )
    print("\nOne-event text/event-stream response:\n")
    print("\n".join(single_event_table(report, reader)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
