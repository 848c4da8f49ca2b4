"""Load benchmark: real uvicorn servers on loopback, many concurrent SSE streams.

One uvicorn process per row serves the same raw ASGI SSE app (``--chunks`` events per
stream, the app yielding to the event loop between events as a token generator does),
wrapped by nothing (bare), by otel-stream, or by opentelemetry-instrumentation-asgi
(default, and with ``exclude_spans=["send", "receive"]``). Every instrumented row gets the
same real SDK: a ``TracerProvider`` with a ``BatchSpanProcessor`` whose exporter counts
spans without I/O, and a ``MeterProvider`` with an in-memory reader.

A load generator in another process opens ``--concurrency`` connections at a time until
``--streams`` streams have run, over raw asyncio sockets (the cheapest client Python
has, so the servers, not the client, are measured), and reports the SSE events it
received per second and each stream's time to first byte (request sent to the first
``data:`` received). Rounds alternate the rows in a rotating order, so the slow drift of a
shared machine hits every row alike; throughput ratios are medians of per-round ratios.

    python bench/load.py            # about 40 s
    python bench/load.py --quick    # about 6 s, rougher
    python bench/load.py --interval 0.01 --chunks 100 --streams 128 --rounds 5
                                    # paced like a model: about 70 s

Beside throughput it reports the server's CPU time per event (all threads, read from
``/proc/<pid>/task/*/schedstat``), which is what the instrumentation costs when the
server is not saturated and throughput is set by the streams' own pace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _servers import wait_ready  # bench/ is on sys.path when a script runs

BARE = "bare uvicorn"
OTEL_STREAM = "otel-stream"
UPSTREAM = "otel asgi (default)"
UPSTREAM_EXCLUDE = 'otel asgi, exclude_spans=["send","receive"]'
OTEL_STREAM_NO_PAYLOADS = "otel-stream, payloads=False"
ROWS = (BARE, OTEL_STREAM, OTEL_STREAM_NO_PAYLOADS, UPSTREAM, UPSTREAM_EXCLUDE)
ROW_KEYS = {
    BARE: "bare",
    OTEL_STREAM: "otel-stream",
    OTEL_STREAM_NO_PAYLOADS: "otel-stream-no-payloads",
    UPSTREAM: "upstream",
    UPSTREAM_EXCLUDE: "exclude",
}

SERVER_APP = """
import asyncio
import os

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


CHUNKS = int(os.environ["BENCH_CHUNKS"])
INTERVAL = float(os.environ["BENCH_INTERVAL"])
EVENT = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}\\n\\n'
)


class CountingExporter(SpanExporter):
    def __init__(self):
        self.spans = 0

    def export(self, spans):
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


async def sse(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    for _ in range(CHUNKS):
        await send({"type": "http.response.body", "body": EVENT, "more_body": True})
        await asyncio.sleep(INTERVAL)
    await send({"type": "http.response.body", "body": b"data: [DONE]\\n\\n", "more_body": True})
    await send({"type": "http.response.body", "body": b""})


tracer_provider = TracerProvider()
tracer_provider.add_span_processor(
    BatchSpanProcessor(CountingExporter(), max_queue_size=1_000_000, schedule_delay_millis=500)
)
meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
providers = {"tracer_provider": tracer_provider, "meter_provider": meter_provider}
row = os.environ["BENCH_ROW"]
if row == "bare":
    app = sse
elif row.startswith("otel-stream"):
    from otel_stream import StreamingMiddleware
    app = StreamingMiddleware(sse, payloads=row == "otel-stream", **providers)
else:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    extra = {"exclude_spans": ["send", "receive"]} if row == "exclude" else {}
    app = OpenTelemetryMiddleware(sse, **providers, **extra)
"""


# The load generator (runs in its own process) ------------------------------------------


async def one_stream(port: int, request: bytes) -> tuple[int, float]:
    """One SSE stream over a raw socket: (events received, seconds to the first event)."""
    began = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    first = 0.0
    events = 0
    tail = b""
    try:
        while data := await reader.read(65536):
            window = tail + data
            found = window.count(b"data:")
            if found and not first:
                first = time.perf_counter() - began
            events += found
            tail = window[-4:]
    finally:
        writer.close()
    return events, first


async def run_load(port: int, streams: int, concurrency: int) -> dict[str, Any]:
    request = b"GET /chat HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    results: list[tuple[int, float]] = []
    remaining = streams

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            results.append(await one_stream(port, request))

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - began
    return {
        "events": sum(events for events, _ in results),
        "seconds": seconds,
        "ttfb": [first for _, first in results],
    }


def generator() -> int:
    """Read one JSON command per line from stdin, answer one JSON result per line."""
    for line in sys.stdin:
        command = json.loads(line)
        result = asyncio.run(run_load(command["port"], command["streams"], command["concurrency"]))
        print(json.dumps(result), flush=True)
    return 0


# The driver ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    directory: Path, row: str, chunks: int, interval: float
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "BENCH_ROW": ROW_KEYS[row],
        "BENCH_CHUNKS": str(chunks),
        "BENCH_INTERVAL": repr(interval),
        "PYTHONPATH": os.pathsep.join([str(directory), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [sys.executable, "-m", "uvicorn", "bench_load_app:app", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    argv += ["--lifespan", "off", "--backlog", "4096"]
    process = subprocess.Popen(argv, env=env, cwd=directory, stderr=subprocess.DEVNULL)
    return process, port


class Generator:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--generator"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, port: int, streams: int, concurrency: int) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        command = {"port": port, "streams": streams, "concurrency": concurrency}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        result: dict[str, Any] = json.loads(self.process.stdout.readline())
        return result

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)


def cpu_seconds(pid: int) -> float:
    """CPU time a process has run so far, all threads, from the scheduler (ns resolution)."""
    total = 0
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():  # not Linux: no reading, reported as n/a
        return math.nan
    for task in tasks.iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread just exited
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load benchmark of ASGI instrumentations.")
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--streams", type=int, default=256, help="streams per row and round")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--chunks", type=int, default=200, help="SSE events per stream")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="seconds the app waits between events (0: yield once, the servers run flat out)",
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 96 streams")
    parser.add_argument("--time-limit", type=float, default=120.0, help="stop rounds after")
    args = parser.parse_args(argv)
    if args.generator:
        return generator()
    if args.quick:
        args.rounds, args.streams = 3, 96
    expected_events = args.chunks + 1  # the events and [DONE]

    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "bench_load_app.py").write_text(SERVER_APP)
        servers = {row: start_server(directory, row, args.chunks, args.interval) for row in ROWS}
        load = Generator()
        try:
            for process, port in servers.values():
                wait_ready(process, port)
            for _, port in servers.values():  # warm up: imports, caches, first spans
                load.run(port, min(args.streams, 32), min(args.concurrency, 16))
            throughput: dict[str, list[float]] = {row: [] for row in ROWS}
            ttfbs: dict[str, list[float]] = {row: [] for row in ROWS}
            cpu: dict[str, list[float]] = {row: [] for row in ROWS}  # µs per event
            rounds = 0
            for index in range(args.rounds):
                if rounds and time.monotonic() - began > args.time_limit:
                    break
                order = ROWS[index % len(ROWS) :] + ROWS[: index % len(ROWS)]
                for row in order:
                    process, port = servers[row]
                    cpu_before = cpu_seconds(process.pid)
                    result = load.run(port, args.streams, args.concurrency)
                    used = cpu_seconds(process.pid) - cpu_before
                    if result["events"] != args.streams * expected_events:
                        raise RuntimeError(f"{row}: {result['events']} events received")
                    throughput[row].append(result["events"] / result["seconds"])
                    cpu[row].append(used / result["events"] * 1e6)
                    ttfbs[row].extend(result["ttfb"])
                rounds += 1
        finally:
            load.close()
            for process, _ in servers.values():
                process.terminate()
                process.wait(10)
    elapsed = time.monotonic() - began

    pace = "flat out" if args.interval <= 0 else f"{args.interval * 1000:g} ms between events"
    print(
        f"{rounds} rounds x {args.streams} streams per row, {args.concurrency} concurrent, "
        f"{args.chunks} SSE events per stream, {pace}; {elapsed:.0f} s; "
        f"Python {sys.version.split()[0]}"
    )
    print()
    print(
        "| server | throughput (events/s, median of rounds) | vs bare (median of per-round "
        "ratios) | server CPU per event (µs) | CPU vs bare | client TTFB p50 (ms) "
        "| client TTFB p99 (ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in ROWS:
        ratios = [mine / bare for mine, bare in zip(throughput[row], throughput[BARE], strict=True)]
        vs_bare = "1 (baseline)" if row == BARE else f"{statistics.median(ratios):.3f}"
        pairs = zip(cpu[row], cpu[BARE], strict=True)
        cpu_ratios = [mine / bare for mine, bare in pairs if bare > 0 and not math.isnan(mine)]
        if row == BARE:
            cpu_vs = "1 (baseline)"
        else:
            cpu_vs = f"{statistics.median(cpu_ratios):.2f}" if cpu_ratios else "n/a"
        p50, p99 = (percentile(ttfbs[row], q) * 1000 for q in (0.5, 0.99))
        print(
            f"| {row} | {statistics.median(throughput[row]):,.0f} | {vs_bare} "
            f"| {statistics.median(cpu[row]):.2f} | {cpu_vs} | {p50:.2f} | {p99:.2f} |"
        )
    pairs = zip(throughput[OTEL_STREAM], throughput[BARE], strict=True)
    ratio = statistics.median(mine / bare for mine, bare in pairs)
    verdict = "PASS" if ratio >= 0.97 else "FAIL"
    print()
    print(f"target: otel-stream within 3 % of bare throughput: {ratio:.3f} -> {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
