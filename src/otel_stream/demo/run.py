"""Run the demo: a uvicorn server in a thread, the load in this thread, then the report.

The demo's listening socket has a small send buffer (accepted connections inherit it),
and slow readers a small receive buffer: on loopback the kernel would otherwise absorb
megabytes before a stalled reader holds the server back, and the demo would have to send
that much to show backpressure. Token-sized streams are not affected.

Exit status of a run: :data:`EXIT_OK` when every mark of the report is ✓,
:data:`EXIT_MISMATCH` when one is ✗ (the same 2 that ``probe`` uses for a negative
verdict), so a script or CI job can rely on ``otel-stream demo`` as a check; the command
line adds 1 for errors and 130 for Ctrl-C.
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
#: Exit status when every mark of the report passed.
EXIT_OK = 0
#: Exit status when a mark of the report failed.
EXIT_MISMATCH = 2


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
    base_url: str,
    plan: load.LoadPlan,
    on_result: Callable[[load.ClientResult], None],
    *,
    long_stream_trace_id: int | None = None,
) -> list[load.ClientResult]:
    """Run the load of ``plan`` against ``base_url``; returns every client's result.
    The long stream's request joins trace ``long_stream_trace_id`` when one is given."""
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
            scenario = load.long_stream(plan.pace, plan.long_stream_seconds, long_stream_trace_id)
            tasks.append(run(scenario))
        await asyncio.gather(*tasks)
    return results


def _wait_for_server(
    telemetry: DemoTelemetry, expected: int, trace_id: int | None, timeout: float = 5.0
) -> None:
    """The server records a request's end a moment after its client saw it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if report.read_metrics(telemetry.reader).total_terminations >= expected and (
            trace_id is None or stream_span_seconds(telemetry, trace_id) is not None
        ):
            return
        time.sleep(0.05)


def stream_span_seconds(telemetry: DemoTelemetry, trace_id: int) -> float | None:
    """The duration of the stream span of trace ``trace_id``, once it has ended."""
    for span in telemetry.traces.spans(trace_id):
        if span.name.endswith(" stream") and span.start_time and span.end_time:
            return (span.end_time - span.start_time) / 1e9
    return None


class LoadProgress:
    """The terminal's progress bar: requests done of the total (with ``--requests``) or
    seconds of load done of the total (with ``--seconds``), the time left, and how the
    requests ended so far. ``clock`` is for tests."""

    def __init__(
        self, console: Any, plan: load.LoadPlan, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        self.plan = plan
        self.clock = clock
        self.counts: dict[str, int] = {}
        self.done = 0
        self.started = clock()
        self.by_requests = plan.seconds == math.inf and plan.requests is not None
        self.progress = Progress(
            TextColumn("[bold]demo[/]"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[status]}"),
            TextColumn("[dim]{task.description}[/]"),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        total = plan.requests if self.by_requests else plan.seconds
        self.task = self.progress.add_task("", total=total, status=self.status())

    def status(self) -> str:
        """``12/50 requests · 0:07 left`` or ``31 requests · 12/20 s · 0:08 left``."""
        elapsed = self.clock() - self.started
        if self.by_requests:
            total = self.plan.requests or 0
            text = f"{self.done}/{total} requests"
            if self.done == 0:
                return text + " · ?:?? left"
            left = elapsed / self.done * (total - self.done)
        else:
            shown = min(self.plan.seconds, elapsed)
            plural = "" if self.done == 1 else "s"
            text = f"{self.done} request{plural} · {shown:.0f}/{self.plan.seconds:g} s"
            left = self.plan.seconds - elapsed
        if left <= 0:
            return text + " · finishing"
        return text + f" · {int(left) // 60}:{int(left) % 60:02d} left"

    def __enter__(self) -> LoadProgress:
        self.started = self.clock()
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def tick(self) -> None:
        """Refresh the bar (called a few times a second, and at each result)."""
        completed = (
            self.done if self.by_requests else min(self.plan.seconds, self.clock() - self.started)
        )
        self.progress.update(self.task, completed=completed, status=self.status())

    def on_result(self, result: load.ClientResult) -> None:
        """Count one finished request."""
        self.done += 1
        self.counts[result.reason] = self.counts.get(result.reason, 0) + 1
        summary = " · ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
        self.progress.update(self.task, description=summary)
        self.tick()


async def _drive_with_progress(
    url: str, plan: load.LoadPlan, view: LoadProgress, trace_id: int | None
) -> list[load.ClientResult]:
    async def tick() -> None:
        while True:
            view.tick()
            await asyncio.sleep(0.25)

    ticker = asyncio.ensure_future(tick())
    try:
        return await drive(url, plan, view.on_result, long_stream_trace_id=trace_id)
    finally:
        ticker.cancel()


def run_demo(
    plan: load.LoadPlan, *, prometheus_port: int | None = None, as_json: bool = False
) -> int:
    """``otel-stream demo``: serve, drive the load, print the report; returns
    :data:`EXIT_OK` when every mark passed, else :data:`EXIT_MISMATCH`."""
    from rich.console import Console

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
    trace_id = (random.Random(seed).getrandbits(128) or 1) if plan.long_stream_seconds else None
    if trace_id is not None:
        telemetry.traces.watch(trace_id)
    try:
        with ServerThread(
            build_app(telemetry, behaviour), listen(0, send_buffer=DEMO_SNDBUF)
        ) as server:
            if telemetry.prometheus_url:
                stderr.print(f"Prometheus metrics at {telemetry.prometheus_url}")
            if not stderr.is_terminal and not as_json:
                stderr.print(f"otel-stream demo: driving load against {server.url} ...")
            started = time.perf_counter()
            with LoadProgress(stderr, plan) as view:
                results = asyncio.run(_drive_with_progress(server.url, plan, view, trace_id))
            wall = time.perf_counter() - started
            _wait_for_server(telemetry, len(results), trace_id)
            metrics = report.read_metrics(telemetry.reader)
            long_stream = stream_span_seconds(telemetry, trace_id) if trace_id else None
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
        long_stream_seconds=long_stream,
    )
    if as_json:
        sys.stdout.write(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")
    else:
        report.render(data, stdout)
    return EXIT_OK if data["ok"] else EXIT_MISMATCH


def _finite(value: Any) -> Any:
    """``value`` with every infinite float as None (JSON has no infinity)."""
    if isinstance(value, float) and math.isinf(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


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
