"""What each WSGI instrumentation adds to a request, per body chunk and per request.

The WSGI sibling of ``bench/overhead.py``, measured the same way. Run
``python bench/wsgi_overhead.py`` (about half a minute on two shared cores) or
``--quick``. Everything runs in one process without sockets: the WSGI app is called
directly, and the "server" iterates the response, discarding every item, then calls
``close()``, as gunicorn's workers do. It is a report, not a test: it exits 0 whether
the targets are met or not.

* Rows: the bare app (the baseline), otel-stream's ``StreamingWSGIMiddleware`` (payload
  parsing on and off), and opentelemetry-instrumentation-wsgi's
  ``OpenTelemetryMiddleware``, all on one real SDK ``TracerProvider`` (a
  ``BatchSpanProcessor`` exporting to an exporter that only counts) and one real
  ``MeterProvider`` with an in-memory reader.
* Workloads: a 1,000-chunk byte stream (the cost added per chunk is the stream's whole
  added cost, request part included, divided by its chunks); a 10-chunk byte stream, to
  split that cost into a fixed part and a part per extra chunk; single-item responses
  with ``Content-Length`` (cost added per request); an OpenAI-style SSE stream of 1,000
  events.
* Rounds, garbage collection, flushing and the checks before timing are as in
  ``bench/overhead.py``: interleaved rounds in a rotating order, the median over rounds
  of each row's time minus the bare app's in the same round.
"""

from __future__ import annotations

import gc
import importlib.metadata
import io
import logging
import math
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from time import perf_counter, perf_counter_ns
from typing import Any

from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as ContribMiddleware

# bench/ is on sys.path when a script runs: the telemetry set-up and the OpenAI events
# are the ASGI benchmark's, so the two measure alike.
from overhead import (
    DropCounter,
    Providers,
    Report,
    Result,
    _cost,
    openai_events,
    parse_sizes,
    payload_reader_exists,
    verdict_table,
)

from otel_stream import StreamingWSGIMiddleware
from otel_stream.attributes import STREAM_CHUNKS, STREAM_EVENTS

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

BARE = "bare app (baseline)"
OTEL_STREAM = "otel-stream StreamingWSGIMiddleware"
OTEL_STREAM_NO_PAYLOADS = "otel-stream, payloads=False"
CONTRIB = "otel wsgi OpenTelemetryMiddleware"
ROWS = (BARE, OTEL_STREAM, OTEL_STREAM_NO_PAYLOADS, CONTRIB)

TARGET_PER_CHUNK = 0.8
TARGET_PER_REQUEST = 0.7

ENVIRON: dict[str, Any] = {
    "REQUEST_METHOD": "POST",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/v1/chat/completions",
    "QUERY_STRING": "",
    "RAW_URI": "/v1/chat/completions",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8000",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "54321",
    "HTTP_HOST": "127.0.0.1:8000",
    "HTTP_USER_AGENT": "otel-stream-bench/1.0",
    "HTTP_ACCEPT": "*/*",
    "CONTENT_TYPE": "application/json",
    "CONTENT_LENGTH": "0",
    "wsgi.url_scheme": "http",
    "wsgi.version": (1, 0),
    "wsgi.multithread": True,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
}


def instrument(row: str, app: WSGIApp, providers: Providers) -> WSGIApp:
    kwargs = providers.kwargs
    if row == BARE:
        return app
    if row == OTEL_STREAM:
        return StreamingWSGIMiddleware(app, **kwargs)
    if row == OTEL_STREAM_NO_PAYLOADS:
        return StreamingWSGIMiddleware(app, payloads=False, **kwargs)
    if row == CONTRIB:
        return ContribMiddleware(app, **kwargs)  # type: ignore[no-any-return]
    raise ValueError(row)


# Workloads -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One kind of response, and how many of them one timed block sends."""

    content_type: str
    items: tuple[bytes, ...]
    requests: int
    whole: bool = False  # one item with Content-Length: not a stream

    @property
    def chunks(self) -> int:
        return sum(1 for item in self.items if item)

    @property
    def body(self) -> bytes:
        return b"".join(self.items)

    @property
    def sse(self) -> bool:
        return self.content_type.startswith("text/event-stream")


def byte_stream(chunks: int, requests: int) -> Workload:
    return Workload("text/plain; charset=utf-8", (b"x" * 64,) * chunks, requests)


def single_item(requests: int) -> Workload:
    body = b'{"id": "bench", "object": "chat.completion", "choices": []}'
    return Workload("application/json", (body,), requests, whole=True)


def sse_stream(chunks: int, requests: int) -> Workload:
    return Workload("text/event-stream; charset=utf-8", tuple(openai_events(chunks)), requests)


def make_app(workload: Workload) -> WSGIApp:
    headers = [("Content-Type", workload.content_type), ("Cache-Control", "no-cache")]
    if workload.whole:
        headers.append(("Content-Length", str(len(workload.body))))
    items = workload.items

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["wsgi.input"].read()  # the request body
        start_response("200 OK", headers)
        if workload.whole:
            return list(items)
        return iter(items)

    return app


def _write(data: bytes) -> None:
    pass


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return _write


def serve_one(app: WSGIApp, sink: Callable[[bytes], None] | None = None) -> None:
    """What a WSGI server does with one request: call, iterate, close."""
    environ = dict(ENVIRON)
    environ["wsgi.input"] = io.BytesIO(b"")
    result = app(environ, _start_response)
    try:
        if sink is None:
            for _item in result:
                pass
        else:
            for item in result:
                sink(item)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


# Measuring -----------------------------------------------------------------------------


def time_block(app: WSGIApp, requests: int) -> int:
    gc.collect()
    gc.disable()
    try:
        started = perf_counter_ns()
        for _ in range(requests):
            serve_one(app)
        return perf_counter_ns() - started
    finally:
        gc.enable()


def check(row: str, app: WSGIApp, providers: Providers, workload: Workload) -> int:
    """Serve one response; fail unless it is right. Returns the spans it produced."""
    received: list[bytes] = []
    exporter = providers.exporter
    providers.flush()
    before = exporter.exported
    exporter.keep = True
    exporter.kept.clear()
    serve_one(app, received.append)
    providers.flush()
    exporter.keep = False
    if b"".join(received) != workload.body:
        raise AssertionError(f"{row}: the bytes sent differ from the bare app's")
    if row in (OTEL_STREAM, OTEL_STREAM_NO_PAYLOADS) and not workload.whole:
        streams = [span for span in exporter.kept if span.name.endswith(" stream")]
        attributes = dict(streams[0].attributes or {}) if len(streams) == 1 else {}
        if attributes.get(STREAM_CHUNKS) != workload.chunks:
            raise AssertionError(f"{row}: no stream span with {workload.chunks} chunks")
        parsing = row == OTEL_STREAM and workload.sse and payload_reader_exists()
        if (STREAM_EVENTS in attributes) != parsing:
            raise AssertionError(f"{row}: {STREAM_EVENTS} should be set: {parsing}")
    return exporter.exported - before


def measure(workload: Workload, providers: Providers, rounds: int) -> Result:
    app = make_app(workload)
    apps = {row: instrument(row, app, providers) for row in ROWS}
    result = Result()
    for row, instrumented in apps.items():
        result.spans[row] = check(row, instrumented, providers, workload)
        time_block(instrumented, max(1, workload.requests // 4))  # warm-up
        result.ns_per_request[row] = []
        result.garbage[row] = []
    providers.flush()
    for round_index in range(rounds):
        shift = round_index % len(ROWS)
        for row in (*ROWS[shift:], *ROWS[:shift]):
            elapsed = time_block(apps[row], workload.requests)
            result.ns_per_request[row].append(elapsed / workload.requests)
            providers.flush()
            result.garbage[row].append(gc.collect() / workload.requests)
    return result


# Report --------------------------------------------------------------------------------


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if math.isfinite(value) else "n/a (contrib added nothing measurable)"


def cost_table(report: Report) -> list[str]:
    long, sse = report.workloads["stream"], report.workloads["sse"]
    header = (
        "middleware",
        f"per chunk, {long.chunks:,}-chunk byte stream (ns)",
        "per request, single-item response (µs)",
        f"per chunk, {sse.chunks:,}-event OpenAI SSE stream (ns)",
        "spans per stream / request",
        "cyclic garbage per stream / request (objects)",
    )
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    results = report.results
    for row in ROWS:
        spans = f"{results['stream'].spans[row]} / {results['request'].spans[row]}"
        garbage = " / ".join(
            f"{statistics.median(results[key].garbage[row]):,.0f}" for key in ("stream", "request")
        )
        if row == BARE:
            cells = [
                f"{statistics.median(results['stream'].ns_per_request[BARE]) / long.chunks:,.0f}"
                " (its own cost)",
                f"{statistics.median(results['request'].ns_per_request[BARE]) / 1_000:,.2f}"
                " (its own cost)",
                f"{statistics.median(results['sse'].ns_per_request[BARE]) / sse.chunks:,.0f}"
                " (its own cost)",
            ]
        else:
            cells = [
                _cost(report.per_chunk("stream", row), 0),
                _cost(report.per_request(row), 2),
                _cost(report.per_chunk("sse", row), 0),
            ]
        lines.append("| " + " | ".join([row, *cells, spans, garbage]) + " |")
    return lines


def split_table(report: Report) -> list[str]:
    lines = [
        "| middleware | fixed cost per stream (µs) | cost per extra chunk (ns) |",
        "|---|---|---|",
    ]
    for row in ROWS[1:]:
        fixed, marginal = report.split(row)
        lines.append(f"| {row} | {fixed:,.1f} | {marginal:,.0f} |")
    return lines


def target_table(report: Report) -> list[str]:
    contrib_chunk = report.per_chunk("stream", CONTRIB)[0]
    contrib_sse = report.per_chunk("sse", CONTRIB)[0]
    contrib_request = report.per_request(CONTRIB)[0]
    checks = [
        (
            "per chunk, byte stream",
            report.ratio(report.per_chunk("stream", OTEL_STREAM)[0], contrib_chunk),
            TARGET_PER_CHUNK,
        ),
        (
            "per request",
            report.ratio(report.per_request(OTEL_STREAM)[0], contrib_request),
            TARGET_PER_REQUEST,
        ),
        (
            "per chunk, OpenAI SSE, payload parsing on",
            report.ratio(report.per_chunk("sse", OTEL_STREAM)[0], contrib_sse),
            TARGET_PER_CHUNK,
        ),
        (
            "per chunk, OpenAI SSE, payload parsing off",
            report.ratio(report.per_chunk("sse", OTEL_STREAM_NO_PAYLOADS)[0], contrib_sse),
            TARGET_PER_CHUNK,
        ),
    ]
    marginal = report.ratio(report.split(OTEL_STREAM)[1], report.split(CONTRIB)[1])
    return verdict_table(
        "otel-stream's added cost / contrib WSGI's added cost", checks, marginal, _ratio
    )


def main(argv: Sequence[str] | None = None) -> int:
    sizes = parse_sizes("Overhead of WSGI instrumentations.", "item", argv)
    rounds, streams, requests = sizes.rounds, sizes.streams, sizes.requests

    drops = DropCounter()
    logging.getLogger("opentelemetry.sdk._shared_internal").addFilter(drops)
    workloads = {
        "stream": byte_stream(sizes.chunks, streams),
        "short": byte_stream(sizes.short_chunks, sizes.short_streams),
        "request": single_item(requests),
        "sse": sse_stream(sizes.chunks, streams),
    }
    providers = Providers()
    began = perf_counter()
    try:
        results = {key: measure(w, providers, rounds) for key, w in workloads.items()}
        metrics = providers.reader.get_metrics_data()
    finally:
        providers.shutdown()
    report = Report(results, workloads)

    packages = ("otel-stream", "opentelemetry-sdk", "opentelemetry-instrumentation-wsgi")
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in packages)
    print(
        f"otel-stream WSGI overhead benchmark: {rounds} rounds; a block is {streams} x "
        f"{sizes.chunks:,}-chunk streams or {requests:,} single-item requests; "
        f"{perf_counter() - began:.0f} s\n"
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {versions}"
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
