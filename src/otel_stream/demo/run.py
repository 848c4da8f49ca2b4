"""Run the demo: a uvicorn server in a thread, the load in this thread, then the report.

With ``--relay`` a second uvicorn server, in a thread of its own, runs the relay in
front of the model. Relay and model get SDK providers of their own (two services, as in
a real deployment, so their server metrics do not mix), and ``StreamingClientInstrumentor``
is instrumented for the run with the relay's providers. It patches the HTTP client
libraries of the whole process, so the demo's own clients run under
``suppress_http_instrumentation``: they are the truth, not the subject.

Choices made on purpose:

* **The relay is not the default.** ``otel-stream demo`` shows one instrumented server
  against its clients, which every user has; a relay adds a second server, the client
  instrumentation and a second table, and is what a gateway's owner asks for.
* **One process.** Clients, relay and model share the ``perf_counter`` clock, so the
  model's stopwatch and the clients' can be subtracted (the hop's truth).

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
import contextlib
import itertools
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
from typing import Any, Literal

import httpx
import uvicorn
from opentelemetry.instrumentation.utils import suppress_http_instrumentation

from otel_stream import StreamingMiddleware
from otel_stream.demo import load, report
from otel_stream.demo.model import (
    CHAT_PATH,
    Behaviour,
    DemoModelError,
    ModelStopwatch,
    RequestDeadline,
    create_app,
)
from otel_stream.demo.relay import create_relay_app
from otel_stream.demo.telemetry import DemoTelemetry, service_name, setup

#: Send buffer of the demo server's sockets (bytes).
DEMO_SNDBUF = 8 * 1024
#: Exit status when every mark of the report passed.
EXIT_OK = 0
#: Exit status when a mark of the report failed.
EXIT_MISMATCH = 2


def build_app(
    telemetry: DemoTelemetry, behaviour: Behaviour, stopwatch: ModelStopwatch | None = None
) -> Any:
    """The fake model wrapped by StreamingMiddleware, inside a request deadline."""
    return RequestDeadline(
        StreamingMiddleware(create_app(behaviour, stopwatch), **telemetry.providers)
    )


def build_relay_app(telemetry: DemoTelemetry, upstream: str, *, connections: int) -> Any:
    """The relay wrapped by StreamingMiddleware, inside its deadline (a gateway timeout).
    Its client calls are recorded by ``StreamingClientInstrumentor``, instrumented
    separately (it patches the HTTP client libraries, not one app)."""
    return RequestDeadline(
        StreamingMiddleware(
            create_relay_app(upstream, connections=connections), **telemetry.providers
        )
    )


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
        # The model's own failure, and the relay's stream raising its upstream's cut.
        if record.exc_info and isinstance(
            record.exc_info[1], (DemoModelError, httpx.RemoteProtocolError, httpx.ReadError)
        ):
            return False
        return "returned without completing response" not in record.getMessage()


class ServerThread:
    """uvicorn serving ``app`` on ``sock`` from a background thread."""

    def __init__(
        self, app: Any, sock: socket.socket, *, lifespan: Literal["on", "off"] = "off"
    ) -> None:
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self.port = int(port)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan=lifespan,
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
    The long stream's request joins trace ``long_stream_trace_id`` when one is given.

    The clients are the demo's truth, not its subject: their calls are kept out of any
    HTTP client instrumentation of this process (the relay's)."""
    rng = random.Random(plan.seed)
    source = load.scenarios(rng, plan.pace, plan.relay_hold if plan.relay else 0.0)
    results: list[load.ClientResult] = []
    stop_at = time.perf_counter() + plan.seconds
    budget = math.inf if plan.requests is None else plan.requests
    started = 0
    ids = itertools.count(1)

    with suppress_http_instrumentation():
        async with (
            load.client_for(plan.concurrency) as client,
            load.client_for(plan.concurrency, slow=True) as slow_client,
        ):

            async def run(scenario: load.Scenario) -> None:
                chosen = slow_client if scenario.slow else client
                result = await load.run_one(
                    chosen,
                    base_url,
                    scenario,
                    timeout=30.0,
                    request_id=next(ids),
                    relayed=plan.relay,
                )
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
                scenario = load.long_stream(
                    plan.pace, plan.long_stream_seconds, long_stream_trace_id
                )
                tasks.append(run(scenario))
            await asyncio.gather(*tasks)
    return results


def _wait_for_server(
    telemetry: DemoTelemetry,
    expected: int,
    trace_id: int | None,
    upstream_port: int | None = None,
    timeout: float = 5.0,
) -> None:
    """The server records a request's end a moment after its client saw it (and a
    relay's upstream call, with ``upstream_port``, a moment after that)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = report.read_metrics(telemetry.reader, upstream_port=upstream_port)
        calls = sum(metrics.client_terminations.values())
        if (
            metrics.total_terminations >= expected
            and (upstream_port is None or calls >= expected)
            and (trace_id is None or stream_span_seconds(telemetry, trace_id) is not None)
        ):
            return
        time.sleep(0.05)


#: The name of the demo server's stream span (the relay's, when there is one).
STREAM_SPAN = f"POST {CHAT_PATH} stream"


def stream_span_seconds(telemetry: DemoTelemetry, trace_id: int) -> float | None:
    """The duration of the server's stream span of trace ``trace_id``, once it has ended
    (not a relay's client stream span, ``POST stream``, of the same trace)."""
    for span in telemetry.traces.spans(trace_id):
        if span.name == STREAM_SPAN and span.start_time and span.end_time:
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
    data = collect(
        plan,
        prometheus_port=prometheus_port,
        console=stderr,
        announce=not stderr.is_terminal and not as_json,
    )
    if as_json:
        sys.stdout.write(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")
    else:
        report.render(data, stdout)
    return EXIT_OK if data["ok"] else EXIT_MISMATCH


def collect(
    plan: load.LoadPlan,
    *,
    prometheus_port: int | None = None,
    console: Any = None,
    announce: bool = False,
    relay_outer: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Serve, drive the load of ``plan``, and build the report (plain data).

    With ``plan.relay`` the clients call the relay, which calls the model: each has its
    own SDK providers (its own service), and ``StreamingClientInstrumentor`` records the
    relay's calls for the time of the run. ``relay_outer`` wraps the relay's
    instrumented app (outside its middleware, where the telemetry cannot see), for tests
    of what the report catches."""
    from rich.console import Console

    console = console if console is not None else Console(stderr=True)
    behaviour = Behaviour(
        tokens=plan.pace.tokens, ttft=plan.pace.ttft, token_interval=plan.pace.token_interval
    )
    seed = plan.seed if plan.seed is not None else random.randrange(1_000_000)
    plan.seed = seed
    trace_id = (random.Random(seed).getrandbits(128) or 1) if plan.long_stream_seconds else None
    telemetry = setup(prometheus_port=prometheus_port)
    model_telemetry: DemoTelemetry | None = None
    stopwatch: ModelStopwatch | None = None
    instrumentor: Any = None
    relay_data: report.RelayData | None = None
    if trace_id is not None:
        telemetry.traces.watch(trace_id)
    try:
        if plan.relay:
            from otel_stream import StreamingClientInstrumentor

            model_telemetry = setup(
                prometheus_port=None if prometheus_port is None else 0,
                service=f"{service_name()}-model",
            )
            stopwatch = ModelStopwatch()
            instrumentor = StreamingClientInstrumentor()
            instrumentor.instrument(**telemetry.providers)
        with contextlib.ExitStack() as stack:
            model = stack.enter_context(
                ServerThread(
                    build_app(model_telemetry or telemetry, behaviour, stopwatch),
                    listen(0, send_buffer=DEMO_SNDBUF),
                )
            )
            server = model
            if plan.relay:
                app = build_relay_app(telemetry, model.url, connections=plan.concurrency + 4)
                server = stack.enter_context(
                    ServerThread(
                        relay_outer(app) if relay_outer else app,
                        listen(0, send_buffer=DEMO_SNDBUF),
                        lifespan="on",
                    )
                )
            if telemetry.prometheus_url:
                where = " (the relay's)" if model_telemetry else ""
                console.print(f"Prometheus metrics at {telemetry.prometheus_url}{where}")
            if model_telemetry is not None and model_telemetry.prometheus_url:
                model_url = model_telemetry.prometheus_url
                console.print(f"Prometheus metrics at {model_url} (the model's)")
            if announce:
                console.print(f"otel-stream demo: driving load against {server.url} ...")
            started = time.perf_counter()
            with LoadProgress(console, plan) as view:
                results = asyncio.run(_drive_with_progress(server.url, plan, view, trace_id))
            wall = time.perf_counter() - started
            upstream_port = model.port if plan.relay else None
            _wait_for_server(telemetry, len(results), trace_id, upstream_port)
            if model_telemetry is not None:
                _wait_for_server(model_telemetry, len(results), None)
            metrics = report.read_metrics(telemetry.reader, upstream_port=upstream_port)
            long_stream = stream_span_seconds(telemetry, trace_id) if trace_id else None
            if model_telemetry is not None and stopwatch is not None:
                relay_data = report.RelayData(
                    report.read_metrics(model_telemetry.reader),
                    dict(stopwatch.timings),
                    model.url + CHAT_PATH,
                )
    finally:
        if instrumentor is not None:
            instrumentor.uninstrument()
        telemetry.shutdown()
        if model_telemetry is not None:
            model_telemetry.shutdown()

    return report.build_report(
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
            "relay_hold": plan.relay_hold if plan.relay else None,
            "exporters": telemetry.exporters,
            "prometheus": telemetry.prometheus_url,
        },
        first_token_supported=first_token_expected(),
        long_stream_seconds=long_stream,
        relay=relay_data,
    )


def first_token_expected() -> bool:
    """Whether the server reads payloads, so time to first token must be there (from the
    setting, never from the data being judged: missing data must fail the marks)."""
    from otel_stream.config import Settings

    return Settings.from_options().payloads


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
