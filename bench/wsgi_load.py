"""Load benchmark on WSGI: real gunicorn gthread servers on loopback, many concurrent SSE streams.

The WSGI sibling of ``bench/load.py``, measured the same way and with its load generator
(raw asyncio sockets in another process). One gunicorn process per row (one gthread
worker, ``--threads`` threads) serves the same WSGI SSE app (``--chunks`` events per
stream, the app sleeping ``--interval`` s between events, or not at all), wrapped by
nothing (bare), by otel-stream (payload parsing on and off) or by
opentelemetry-instrumentation-wsgi's middleware. Every instrumented row gets the same
real SDK: a ``BatchSpanProcessor`` whose exporter counts spans without I/O, and an
in-memory metric reader.

    python bench/wsgi_load.py                 # flat out, about 40 s
    python bench/wsgi_load.py --quick         # about 10 s, rougher
    python bench/wsgi_load.py --interval 0.01 --chunks 100 --streams 64 --rounds 3
                                              # paced like a model

It reports the events received per second, the server's CPU time per event (all
threads, from ``/proc``) and the client's time to first byte, each against bare and
against contrib, medians of per-round ratios; rounds rotate the rows' order.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _servers import (  # bench/ is on sys.path when a script runs
    APP_PRELUDE,
    APP_PROVIDERS,
    start,
    stop,
    wait_ready,
)
from load import Generator, cpu_seconds, free_port, percentile

BARE = "bare gunicorn gthread"
OTEL_STREAM = "otel-stream"
OTEL_STREAM_NO_PAYLOADS = "otel-stream, payloads=False"
CONTRIB = "otel wsgi OpenTelemetryMiddleware"
ROWS = (BARE, OTEL_STREAM, OTEL_STREAM_NO_PAYLOADS, CONTRIB)
ROW_KEYS = {
    BARE: "bare",
    OTEL_STREAM: "otel-stream",
    OTEL_STREAM_NO_PAYLOADS: "otel-stream-no-payloads",
    CONTRIB: "contrib",
}

SERVER_APP = (
    APP_PRELUDE
    + """
import time


def events():
    for _ in range(CHUNKS):
        yield EVENT
        if INTERVAL:
            time.sleep(INTERVAL)
    yield b"data: [DONE]\\n\\n"


def sse(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/event-stream")])
    return events()
"""
    + APP_PROVIDERS
    + """
if row == "bare":
    app = sse
elif row.startswith("otel-stream"):
    from otel_stream import StreamingWSGIMiddleware
    app = StreamingWSGIMiddleware(sse, payloads=row == "otel-stream", **providers)
else:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    app = OpenTelemetryMiddleware(sse, **providers)
"""
)

SRC = Path(__file__).resolve().parents[1] / "src"


def start_server(
    directory: Path, row: str, chunks: int, interval: float, threads: int
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "BENCH_ROW": ROW_KEYS[row],
        "BENCH_CHUNKS": str(chunks),
        "BENCH_INTERVAL": repr(interval),
        "PYTHONPATH": os.pathsep.join([str(directory), str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "1"]
    argv += ["--threads", str(threads), "-b", f"127.0.0.1:{port}", "--backlog", "4096"]
    argv += ["--log-level", "warning", "bench_wsgi_load_app:app"]
    process = start(argv, env=env, cwd=directory, stderr=subprocess.DEVNULL)
    return process, port


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its children (gunicorn's master and its worker), all threads."""
    total = cpu_seconds(pid)
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return math.nan
    for task in tasks.iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(tree_cpu_seconds(int(child)) for child in children)
    return total


def ratios(rows: dict[str, list[float]], row: str, baseline: str) -> float:
    pairs = zip(rows[row], rows[baseline], strict=True)
    values = [mine / base for mine, base in pairs if base > 0 and not math.isnan(mine)]
    return statistics.median(values) if values else math.nan


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load benchmark of WSGI instrumentations.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=512, help="streams per row and round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--threads", type=int, default=16, help="gthread threads per server")
    parser.add_argument("--chunks", type=int, default=200, help="SSE events per stream")
    parser.add_argument(
        "--interval", type=float, default=0.0, help="s the app sleeps between events (0)"
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 96 streams")
    parser.add_argument("--time-limit", type=float, default=120.0, help="stop rounds after")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.streams = 2, 96
    expected_events = args.chunks + 1  # the events and [DONE]

    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "bench_wsgi_load_app.py").write_text(SERVER_APP)
        servers = {
            row: start_server(directory, row, args.chunks, args.interval, args.threads)
            for row in ROWS
        }
        load = Generator()
        try:
            for process, port in servers.values():
                wait_ready(process, port)
            for _, port in servers.values():  # warm up: imports, caches, first spans
                load.closed(port, min(args.streams, 16), min(args.concurrency, 8))
            throughput: dict[str, list[float]] = {row: [] for row in ROWS}
            cpu: dict[str, list[float]] = {row: [] for row in ROWS}  # µs per event
            ttfbs: dict[str, list[float]] = {row: [] for row in ROWS}
            rounds = 0
            for index in range(args.rounds):
                if rounds and time.monotonic() - began > args.time_limit:
                    break
                order = ROWS[index % len(ROWS) :] + ROWS[: index % len(ROWS)]
                for row in order:
                    process, port = servers[row]
                    cpu_before = tree_cpu_seconds(process.pid)
                    result = load.closed(port, args.streams, args.concurrency)
                    used = tree_cpu_seconds(process.pid) - cpu_before
                    if result["events"] != args.streams * expected_events:
                        raise RuntimeError(f"{row}: {result['events']} events received")
                    throughput[row].append(result["events"] / result["seconds"])
                    cpu[row].append(used / result["events"] * 1e6)
                    ttfbs[row].extend(result["ttfb"])
                rounds += 1
        finally:
            load.close()
            for process, _ in servers.values():
                stop(process)
    elapsed = time.monotonic() - began

    pace = "flat out" if args.interval <= 0 else f"{args.interval * 1000:g} ms between events"
    print(
        f"gunicorn gthread (1 worker, {args.threads} threads): {rounds} rounds x "
        f"{args.streams} streams per row, {args.concurrency} concurrent, {args.chunks} SSE "
        f"events per stream, {pace}; {elapsed:.0f} s; Python {sys.version.split()[0]}"
    )
    print()
    print(
        "| server | throughput (events/s) | vs bare | vs contrib | server CPU per event (µs) "
        "| CPU vs bare | CPU vs contrib | client TTFB p50 (ms) | client TTFB p99 (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in ROWS:
        p50, p99 = (percentile(ttfbs[row], q) * 1000 for q in (0.5, 0.99))
        cells = [
            f"{statistics.median(throughput[row]):,.0f}",
            "1 (baseline)" if row == BARE else f"{ratios(throughput, row, BARE):.3f}",
            f"{ratios(throughput, row, CONTRIB):.3f}",
            f"{statistics.median(cpu[row]):.2f}",
            "1 (baseline)" if row == BARE else f"{ratios(cpu, row, BARE):.2f}",
            f"{ratios(cpu, row, CONTRIB):.2f}",
            f"{p50:.2f}",
            f"{p99:.2f}",
        ]
        print(f"| {row} | " + " | ".join(cells) + " |")
    bare_cpu = statistics.median(cpu[BARE])
    added = {row: statistics.median(cpu[row]) - bare_cpu for row in (OTEL_STREAM, CONTRIB)}
    if added[CONTRIB] > 0:
        print(
            f"\nCPU per event added over bare: otel-stream {added[OTEL_STREAM]:.2f} µs, "
            f"contrib {added[CONTRIB]:.2f} µs ({added[OTEL_STREAM] / added[CONTRIB]:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
