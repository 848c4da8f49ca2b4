"""Load benchmark: real uvicorn servers on loopback, many concurrent SSE streams.

One uvicorn process per row serves the same raw ASGI SSE app (``--chunks`` events per
stream, the app yielding to the event loop between events as a token generator does),
wrapped by nothing (bare), by otel-stream, or by opentelemetry-instrumentation-asgi
(default, and with ``exclude_spans=["send", "receive"]``). Every instrumented row gets the
same real SDK: a ``TracerProvider`` with a ``BatchSpanProcessor`` whose exporter counts
spans without I/O, and a ``MeterProvider`` with an in-memory reader.

A load generator in another process drives each row in two modes, over raw asyncio
sockets (the cheapest client Python has, so the servers, not the client, are measured):

- closed loop: ``--concurrency`` streams open at a time, a new one the moment another
  ends, until ``--streams`` have run. It gives the throughput (SSE events received per
  second) and the server CPU per event, and shows how the end-of-stream work of the
  streams that finish delays the first bytes of the ones that start.
- open loop: streams arrive as a Poisson process at ``--rate`` per second (by default
  ``--load`` times the slowest row's closed-loop stream rate, measured in round 1), until
  ``--open-streams`` have arrived or ``--open-seconds`` have passed, whether or not the
  earlier ones have ended, as independent users do. Every row gets the same arrival
  times (the round number seeds them).

Both report each stream's client time to first byte (connect and request sent, to the
first ``data:`` received), p50 and p99 per row, and the added milliseconds against bare
in the same run. Rounds alternate the rows in a rotating order, so the slow drift of a
shared machine hits every row alike; throughput ratios are medians of per-round ratios.

    python bench/load.py            # about 2.5 min
    python bench/load.py --quick    # about 15 s, rougher
    python bench/load.py --interval 0.01 --chunks 100 --streams 128 --rounds 5
                                    # paced like a model

Beside throughput it reports the server's CPU time per event (all threads, read from
``/proc/<pid>/task/*/schedstat``), which is what the instrumentation costs when the
server is not saturated and throughput is set by the streams' own pace. Every process
the benchmark starts leads its own process group and is stopped with it; the client
only ever connects to 127.0.0.1, and every run is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _servers, also when imported
from _servers import APP_PRELUDE, APP_PROVIDERS, start, stop, wait_ready

BARE = "bare uvicorn"
OTEL_STREAM = "otel-stream"
UPSTREAM = "otel asgi (default)"
UPSTREAM_EXCLUDE = 'otel asgi, exclude_spans=["send","receive"]'
OTEL_STREAM_NO_PAYLOADS = "otel-stream, payloads=False"
CLOSED = "closed"
OPEN = "open"
ROWS = (BARE, OTEL_STREAM, OTEL_STREAM_NO_PAYLOADS, UPSTREAM, UPSTREAM_EXCLUDE)
ROW_KEYS = {
    BARE: "bare",
    OTEL_STREAM: "otel-stream",
    OTEL_STREAM_NO_PAYLOADS: "otel-stream-no-payloads",
    UPSTREAM: "upstream",
    UPSTREAM_EXCLUDE: "exclude",
}

SERVER_APP = (
    APP_PRELUDE
    + """
import asyncio


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
"""
    + APP_PROVIDERS
    + """
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
)


# The load generator (runs in its own process) ------------------------------------------

REQUEST = b"GET /chat HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
#: No run of the generator waits longer than this for its streams: every run stops by itself.
RUN_TIMEOUT = 300.0


async def one_stream(port: int) -> tuple[int, float, float]:
    """One SSE stream over a raw socket: (events received, seconds to the first event,
    seconds the whole stream took)."""
    began = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
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
    return events, first, time.perf_counter() - began


def summary(results: Sequence[tuple[int, float, float]], seconds: float) -> dict[str, Any]:
    return {
        "events": sum(events for events, _, _ in results),
        "streams": len(results),
        "seconds": seconds,
        "ttfb": [first for _, first, _ in results],
        # Little's law: the streams' summed durations over the run's length.
        "in_flight": sum(duration for _, _, duration in results) / seconds if seconds else 0.0,
    }


async def run_closed(port: int, streams: int, concurrency: int) -> dict[str, Any]:
    """Closed loop: ``concurrency`` streams open at a time, a new one the moment one ends."""
    results: list[tuple[int, float, float]] = []
    remaining = streams

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            results.append(await one_stream(port))

    began = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), RUN_TIMEOUT)
    return summary(results, time.perf_counter() - began)


async def run_open(
    port: int, streams: int, rate: float, seconds: float, seed: int
) -> dict[str, Any]:
    """Open loop: streams arrive as a Poisson process of ``rate`` per second, whether or not
    earlier ones have ended, until ``streams`` have arrived or ``seconds`` have passed.
    The same ``seed`` gives every row the same arrival times."""
    arrivals = random.Random(seed)
    tasks: list[asyncio.Task[tuple[int, float, float]]] = []
    began = time.perf_counter()
    due = 0.0
    for _ in range(streams):
        due += arrivals.expovariate(rate)
        if due > seconds and tasks:  # the first arrival always comes
            break
        delay = began + due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one_stream(port)))
    results = await asyncio.wait_for(asyncio.gather(*tasks), RUN_TIMEOUT)
    return summary(results, time.perf_counter() - began)


def generator() -> int:
    """Read one JSON command per line from stdin, answer one JSON result per line."""
    for line in sys.stdin:
        command = json.loads(line)
        if command["mode"] == "closed":
            run = run_closed(command["port"], command["streams"], command["concurrency"])
        else:
            run = run_open(
                command["port"],
                command["streams"],
                command["rate"],
                command["seconds"],
                command["seed"],
            )
        print(json.dumps(asyncio.run(run)), flush=True)
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
    process = start(argv, env=env, cwd=directory, stderr=subprocess.DEVNULL)
    return process, port


class Generator:
    """The load generator process; one JSON command in, one JSON result out."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] = start(
            [sys.executable, __file__, "--generator"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f"load generator exited with {self.process.wait(10)}")
        result: dict[str, Any] = json.loads(answer)
        return result

    def closed(self, port: int, streams: int, concurrency: int) -> dict[str, Any]:
        return self.run(mode="closed", port=port, streams=streams, concurrency=concurrency)

    def open(
        self, port: int, streams: int, rate: float, seconds: float, seed: int
    ) -> dict[str, Any]:
        return self.run(
            mode="open", port=port, streams=streams, rate=rate, seconds=seconds, seed=seed
        )

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        finally:
            stop(self.process)


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


def ttfb_targets(ttfb: dict[str, dict[str, tuple[float, float]]]) -> list[tuple[str, str, str]]:
    """The client-TTFB targets, judged on ``ttfb[row][mode] = (p50, p99)`` in seconds:
    (target, what was measured, ``PASS`` or ``FAIL``) for each."""

    def added(row: str, mode: str, index: int) -> float:
        return (ttfb[row][mode][index] - ttfb[BARE][mode][index]) * 1000

    mine_p50 = added(OTEL_STREAM, OPEN, 0)
    mine_p99, exclude_p99 = (ttfb[row][OPEN][1] * 1000 for row in (OTEL_STREAM, UPSTREAM_EXCLUDE))
    closed_mine, closed_upstream = (
        added(row, CLOSED, 0) for row in (OTEL_STREAM, UPSTREAM_EXCLUDE)
    )
    return [
        (
            "open loop: otel-stream TTFB p50 within +1 ms of bare",
            f"{mine_p50:+.2f} ms",
            "PASS" if mine_p50 <= 1.0 else "FAIL",
        ),
        (
            "open loop: otel-stream TTFB p99 not above otel asgi with exclude_spans",
            f"{mine_p99:.2f} ms vs {exclude_p99:.2f} ms",
            "PASS" if mine_p99 <= exclude_p99 else "FAIL",
        ),
        (
            "closed loop (aim): otel-stream added TTFB p50 no more than otel asgi with "
            "exclude_spans",
            f"{closed_mine:+.2f} ms vs {closed_upstream:+.2f} ms",
            "PASS" if closed_mine <= closed_upstream else "FAIL",
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load benchmark of ASGI instrumentations.")
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--streams", type=int, default=256, help="closed loop: streams per row and round"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="closed loop: streams open")
    parser.add_argument(
        "--open-streams", type=int, default=128, help="open loop: streams per row and round"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="open loop: Poisson arrivals per second (default: --load times the slowest "
        "row's closed-loop stream rate in round 1)",
    )
    parser.add_argument(
        "--load", type=float, default=0.5, help="open loop: the offered load when no --rate"
    )
    parser.add_argument(
        "--open-seconds", type=float, default=4.0, help="open loop: no arrival after S seconds"
    )
    parser.add_argument("--chunks", type=int, default=200, help="SSE events per stream")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="seconds the app waits between events (0: yield once, the servers run flat out)",
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 96 and 24 streams")
    parser.add_argument("--time-limit", type=float, default=180.0, help="stop rounds after")
    args = parser.parse_args(argv)
    if args.generator:
        return generator()
    if args.quick:
        args.rounds, args.streams, args.open_streams = 3, 96, 24
    expected_events = args.chunks + 1  # the events and [DONE]

    began = time.monotonic()
    rate = args.rate
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "bench_load_app.py").write_text(SERVER_APP)
        servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        load: Generator | None = None
        try:
            for row in ROWS:
                servers[row] = start_server(directory, row, args.chunks, args.interval)
            load = Generator()
            for process, port in servers.values():
                wait_ready(process, port)
            for _, port in servers.values():  # warm up: imports, caches, first spans
                load.closed(port, min(args.streams, 32), min(args.concurrency, 16))
            throughput: dict[str, list[float]] = {row: [] for row in ROWS}
            ttfbs: dict[str, dict[str, list[float]]] = {row: {CLOSED: [], OPEN: []} for row in ROWS}
            cpu: dict[str, list[float]] = {row: [] for row in ROWS}  # µs per event
            in_flight: dict[str, list[float]] = {row: [] for row in ROWS}
            rounds = 0
            for index in range(args.rounds):
                if rounds and time.monotonic() - began > args.time_limit:
                    break
                order = ROWS[index % len(ROWS) :] + ROWS[: index % len(ROWS)]
                stream_rates = []
                for row in order:  # closed loop
                    process, port = servers[row]
                    cpu_before = cpu_seconds(process.pid)
                    result = load.closed(port, args.streams, args.concurrency)
                    used = cpu_seconds(process.pid) - cpu_before
                    if result["events"] != args.streams * expected_events:
                        raise RuntimeError(f"{row}: {result['events']} events received")
                    throughput[row].append(result["events"] / result["seconds"])
                    cpu[row].append(used / result["events"] * 1e6)
                    ttfbs[row][CLOSED].extend(result["ttfb"])
                    stream_rates.append(result["streams"] / result["seconds"])
                if not rate:
                    rate = args.load * min(stream_rates)
                for row in order:  # open loop: the same arrival times for every row
                    _, port = servers[row]
                    result = load.open(port, args.open_streams, rate, args.open_seconds, index)
                    if result["events"] != result["streams"] * expected_events:
                        raise RuntimeError(f"{row}: {result['events']} events received")
                    ttfbs[row][OPEN].extend(result["ttfb"])
                    in_flight[row].append(result["in_flight"])
                rounds += 1
        finally:
            if load is not None:
                load.close()
            for process, _ in servers.values():
                stop(process)
    elapsed = time.monotonic() - began

    pace = "flat out" if args.interval <= 0 else f"{args.interval * 1000:g} ms between events"
    offered = "--rate" if args.rate else f"{args.load:g} x the slowest row's closed-loop rate"
    open_streams = len(ttfbs[BARE][OPEN]) // max(rounds, 1)
    print(
        f"{rounds} rounds per row, {args.chunks} SSE events per stream, {pace}; "
        f"closed loop: {args.streams} streams, {args.concurrency} at a time; "
        f"open loop: {open_streams} Poisson arrivals at {rate:.1f} streams/s ({offered}); "
        f"{elapsed:.0f} s; Python {sys.version.split()[0]}"
    )
    print()
    print(
        "| server | throughput (events/s, median of rounds) | vs bare (median of per-round "
        "ratios) | server CPU per event (µs) | CPU vs bare |"
    )
    print("|---|---|---|---|---|")
    for row in ROWS:
        ratios = [mine / bare for mine, bare in zip(throughput[row], throughput[BARE], strict=True)]
        vs_bare = "1 (baseline)" if row == BARE else f"{statistics.median(ratios):.3f}"
        pairs = zip(cpu[row], cpu[BARE], strict=True)
        cpu_ratios = [mine / bare for mine, bare in pairs if bare > 0 and not math.isnan(mine)]
        if row == BARE:
            cpu_vs = "1 (baseline)"
        else:
            cpu_vs = f"{statistics.median(cpu_ratios):.2f}" if cpu_ratios else "n/a"
        print(
            f"| {row} | {statistics.median(throughput[row]):,.0f} | {vs_bare} "
            f"| {statistics.median(cpu[row]):.2f} | {cpu_vs} |"
        )

    ttfb = {
        row: {
            mode: (percentile(ttfbs[row][mode], 0.5), percentile(ttfbs[row][mode], 0.99))
            for mode in (CLOSED, OPEN)
        }
        for row in ROWS
    }
    print()
    print(
        "| server | closed loop TTFB p50 (ms) | added | closed loop TTFB p99 (ms) | added "
        "| open loop TTFB p50 (ms) | added | open loop TTFB p99 (ms) | added "
        "| open loop: streams in flight (mean) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in ROWS:
        cells = []
        for mode in (CLOSED, OPEN):
            for index in (0, 1):
                mine, bare = ttfb[row][mode][index] * 1000, ttfb[BARE][mode][index] * 1000
                cells += [f"{mine:.2f}", "-" if row == BARE else f"{mine - bare:+.2f}"]
        cells.append(f"{statistics.mean(in_flight[row]):.1f}")
        print(f"| {row} | " + " | ".join(cells) + " |")

    pairs = zip(throughput[OTEL_STREAM], throughput[BARE], strict=True)
    ratio = statistics.median(mine / bare for mine, bare in pairs)
    verdict = "PASS" if ratio >= 0.97 else "FAIL"
    print()
    print("| target | measured | verdict |")
    print("|---|---|---|")
    print(f"| otel-stream within 3 % of bare throughput (closed loop) | {ratio:.3f} | {verdict} |")
    for target, measured, verdict in ttfb_targets(ttfb):
        print(f"| {target} | {measured} | {verdict} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
