"""Run the demo: a uvicorn server in a thread, the load in this thread, then the report.

The demo's listening socket has a small send buffer (accepted connections inherit it),
and slow readers a small receive buffer: on loopback the kernel would otherwise absorb
megabytes before a stalled reader holds the server back, and the demo would have to send
that much to show backpressure. Token-sized streams are not affected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import uvicorn

from otel_stream import StreamingMiddleware
from otel_stream.demo import load, report
from otel_stream.demo.model import CHAT_PATH, Behaviour, DemoModelError, RequestDeadline, create_app
from otel_stream.demo.telemetry import DemoTelemetry, setup

#: Send buffer of the demo server's sockets (bytes).
DEMO_SNDBUF = 8 * 1024


def build_app(telemetry: DemoTelemetry, behaviour: Behaviour) -> Any:
    """The fake model wrapped by StreamingMiddleware, inside a request deadline."""
    return RequestDeadline(StreamingMiddleware(create_app(behaviour), **telemetry.providers))


def listen(port: int, *, send_buffer: int | None = None) -> socket.socket:
    """A listening TCP socket on 127.0.0.1 (``port`` 0 picks a free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(256)
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on 127.0.0.1:{port}: {error.strerror or error}") from error
    sock.set_inheritable(True)
    return sock


class _ExpectedFailures(logging.Filter):
    """Drop uvicorn's logs of the failures the demo causes on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], DemoModelError):
            return False
        return "returned without completing response" not in record.getMessage()


class ServerThread:
    """uvicorn serving ``app`` on ``sock`` from a background thread."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.filter = _ExpectedFailures()

    def __enter__(self) -> ServerThread:
        logging.getLogger("uvicorn.error").addFilter(self.filter)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the demo server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
        logging.getLogger("uvicorn.error").removeFilter(self.filter)


async def drive(
    base_url: str, plan: load.LoadPlan, on_result: Callable[[load.ClientResult], None]
) -> list[load.ClientResult]:
    """Run the load of ``plan`` against ``base_url``; returns every client's result."""
    rng = random.Random(plan.seed)
    source = load.scenarios(rng, plan.pace)
    results: list[load.ClientResult] = []
    stop_at = time.perf_counter() + plan.seconds
    budget = math.inf if plan.requests is None else plan.requests
    started = 0

    async with (
        load.client_for(plan.concurrency) as client,
        load.client_for(plan.concurrency, slow=True) as slow_client,
    ):

        async def run(scenario: load.Scenario) -> None:
            chosen = slow_client if scenario.slow else client
            result = await load.run_one(chosen, base_url, scenario, timeout=30.0)
            results.append(result)
            on_result(result)

        async def worker() -> None:
            nonlocal started
            while time.perf_counter() < stop_at and started < budget:
                started += 1
                await run(next(source))

        tasks = [worker() for _ in range(plan.concurrency)]
        if plan.long_stream_seconds > 0 and budget >= 1:
            started += 1
            tasks.append(run(load.long_stream(plan.pace, plan.long_stream_seconds)))
        await asyncio.gather(*tasks)
    return results


def _wait_for_server(telemetry: DemoTelemetry, expected: int, timeout: float = 5.0) -> None:
    """The server records a request's end a moment after its client saw it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if report.read_metrics(telemetry.reader).total_terminations >= expected:
            return
        time.sleep(0.05)


def run_demo(
    plan: load.LoadPlan, *, prometheus_port: int | None = None, as_json: bool = False
) -> int:
    """``otel-stream demo``: serve, drive the load, print the report."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    stderr = Console(stderr=True)
    stdout = Console()
    if not stdout.is_terminal:
        stdout.width = 100
    telemetry = setup(prometheus_port=prometheus_port)
    behaviour = Behaviour(
        tokens=plan.pace.tokens, ttft=plan.pace.ttft, token_interval=plan.pace.token_interval
    )
    seed = plan.seed if plan.seed is not None else random.randrange(1_000_000)
    plan.seed = seed
    counts: dict[str, int] = {}
    try:
        with ServerThread(
            build_app(telemetry, behaviour), listen(0, send_buffer=DEMO_SNDBUF)
        ) as server:
            if telemetry.prometheus_url:
                stderr.print(f"Prometheus metrics at {telemetry.prometheus_url}")
            progress = Progress(
                TextColumn("[bold]demo[/]"),
                BarColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=stderr,
                transient=True,
                disable=not stderr.is_terminal,
            )
            if not stderr.is_terminal and not as_json:
                stderr.print(f"otel-stream demo: driving load against {server.url} ...")
            started = time.perf_counter()
            with progress:
                task = progress.add_task(
                    "", total=plan.seconds if plan.seconds < math.inf else None
                )

                def on_result(result: load.ClientResult) -> None:
                    counts[result.reason] = counts.get(result.reason, 0) + 1
                    summary = " · ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
                    progress.update(
                        task,
                        completed=min(plan.seconds, time.perf_counter() - started),
                        description=summary,
                    )

                results = asyncio.run(drive(server.url, plan, on_result))
            wall = time.perf_counter() - started
            _wait_for_server(telemetry, len(results))
            metrics = report.read_metrics(telemetry.reader)
    finally:
        telemetry.shutdown()

    data = report.build_report(
        metrics,
        results,
        run={
            "url": server.url + CHAT_PATH,
            "requests": len(results),
            "concurrency": plan.concurrency,
            "seconds": plan.seconds,
            "wall_seconds": wall,
            "seed": seed,
            "pace": asdict(plan.pace),
            "exporters": telemetry.exporters,
            "prometheus": telemetry.prometheus_url,
        },
        first_token_supported=report.TTFT in metrics.histograms,
    )
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")
    else:
        report.render(data, stdout)
    return 0


def _json_default(value: object) -> object:
    if isinstance(value, float) and math.isinf(value):
        return None
    raise TypeError(f"cannot serialise {type(value).__name__}")


def serve(port: int, *, prometheus_port: int | None, behaviour: Behaviour) -> int:
    """``otel-stream demo --serve``: only the instrumented fake model, until Ctrl-C."""
    telemetry = setup(prometheus_port=prometheus_port)
    try:
        sock = listen(port)
    except OSError:
        telemetry.shutdown()
        raise
    host, bound = sock.getsockname()[:2]
    url = f"http://{host}:{bound}"
    print(f"otel-stream demo server on {url} (Ctrl-C stops it)")
    print(
        f"  curl -N {url}{CHAT_PATH} -H 'content-type: application/json' "
        '-d \'{"model": "demo", "stream": true, '
        '"messages": [{"role": "user", "content": "hi"}]}\''
    )
    if telemetry.prometheus_url:
        print(f"  Prometheus metrics: {telemetry.prometheus_url}")
    for line in telemetry.exporters:
        print(f"  exporting {line}")
    if not telemetry.prometheus_url and not telemetry.exporters:
        print(
            "  telemetry goes nowhere: set --prometheus-port, or OTEL_EXPORTER_OTLP_ENDPOINT "
            "(or OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER)"
        )
    sys.stdout.flush()
    config = uvicorn.Config(
        build_app(telemetry, behaviour), log_level="warning", access_log=False, lifespan="off"
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        telemetry.shutdown()
    return 0
