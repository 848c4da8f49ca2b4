"""A real instrumented server, real traffic and a real Prometheus, for the dashboards.

``tests/test_dashboards_live.py`` and ``dashboards/render_previews.py`` both use it: a
Starlette app behind :class:`otel_stream.StreamingMiddleware`, served by uvicorn on
loopback, its metrics exposed on ``/metrics`` by opentelemetry-exporter-prometheus; real
clients (httpx, the ``openai`` client, raw sockets) that end requests in every way
docs/metrics.md names; and a ``prometheus`` process scraping it with the scrape config this
folder ships (``prometheus/direct.yml``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

HERE = Path(__file__).resolve().parent
DIRECT_CONFIG = HERE / "prometheus" / "direct.yml"
JOB = "otel-stream-demo"
SERVICE_NAME = "otel-stream-demo"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WORDS = (
    "Streams",
    "are",
    "two",
    "operations:",
    "the",
    "wait",
    "for",
    "the",
    "first",
    "byte,",
    "and",
    "the",
    "body",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _number(params: Any, name: str, default: float, high: float) -> float:
    """A query parameter of the demo app, clamped so no client can make it sleep long."""
    try:
        value = float(params.get(name, default))
    except ValueError:
        return default
    return min(max(value, 0.0), high) if math.isfinite(value) else default


# The demo app ---------------------------------------------------------------------------


def demo_app(tracer_provider: Any, meter_provider: Any, deadline: float = 0.25) -> ASGIApp:
    """The instrumented app: one route per way a stream is served.

    * ``GET /v1/events``: an SSE feed (``ttfb``, ``chunks``, ``gap``; ``fail_after``
      makes the generator raise after that many events).
    * ``POST /v1/chat/completions``: OpenAI chat-completions SSE: a role delta, content
      deltas, the finish chunk, a usage chunk when ``stream_options.include_usage`` is
      set, ``data: [DONE]``. Model ``demo-length`` finishes with ``length``;
      ``demo-truncated`` stops mid-answer without finish chunk or ``[DONE]``.
    * ``GET /v1/jobs/{job_id}/logs``: a slow chunked log that a request deadline
      (``deadline`` seconds, like a server's request timeout) cancels.
    * ``GET /v1/legacy``: a raw ASGI app that returns without its final body message.
    * ``GET /healthz``: a plain JSON response, not a stream.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from otel_stream import StreamingMiddleware

    async def events(request: Request) -> Response:
        params = request.query_params
        ttfb = _number(params, "ttfb", 0.02, 30)
        chunks = int(_number(params, "chunks", 5, 10_000))
        gap = _number(params, "gap", 0.01, 10)
        fail_after = (
            int(_number(params, "fail_after", -1, 10_000)) if "fail_after" in params else -1
        )

        async def body() -> AsyncIterator[str]:
            await asyncio.sleep(ttfb)
            for index in range(chunks):
                if index == fail_after:
                    raise RuntimeError("demo failure in the middle of a stream")
                if index:
                    await asyncio.sleep(gap)
                yield f'event: tick\ndata: {{"n": {index}}}\n\n'

        return StreamingResponse(body(), media_type="text/event-stream")

    async def chat_completions(request: Request) -> Response:
        payload = await request.json()
        model = str(payload.get("model", "demo"))
        max_tokens = int(min(max(int(payload.get("max_tokens") or 16), 1), 4096))
        options = payload.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        ttft = _number(request.query_params, "ttft", 0.03, 30)
        gap = _number(request.query_params, "gap", 0.003, 10)
        truncated = model == "demo-truncated"
        finish = "length" if model == "demo-length" else "stop"
        tokens = max_tokens if finish == "length" else min(max_tokens, len(WORDS))
        if truncated:
            tokens = max(2, tokens // 2)
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            data: dict[str, Any] = {
                "id": "chatcmpl-demo",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            if include_usage:
                data["usage"] = None
            return f"data: {json.dumps(data)}\n\n"

        async def body() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            await asyncio.sleep(ttft)
            for index in range(tokens):
                if index:
                    await asyncio.sleep(gap)
                yield chunk({"content": WORDS[index % len(WORDS)] + " "})
            if truncated:
                return
            yield chunk({}, finish)
            if include_usage:
                usage = {
                    "prompt_tokens": 9,
                    "completion_tokens": tokens,
                    "total_tokens": 9 + tokens,
                }
                data = {
                    "id": "chatcmpl-demo",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(data)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    async def job_logs(request: Request) -> Response:
        gap = _number(request.query_params, "gap", 0.05, 10)

        async def body() -> AsyncIterator[bytes]:
            for line in range(1_000):
                yield f"line {line}\n".encode()
                await asyncio.sleep(gap)

        return StreamingResponse(body(), media_type="text/plain")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    class LegacyStream:
        """Returns after one chunk without ``more_body=False``: an incomplete response."""

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            headers = [(b"content-type", b"text/plain")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})

    routes = [
        Route("/v1/events", events),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/jobs/{job_id}/logs", job_logs),
        Route("/v1/legacy", LegacyStream()),
        Route("/healthz", healthz),
    ]
    instrumented = StreamingMiddleware(
        Starlette(routes=routes),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    return Deadline(instrumented, "/v1/jobs/", deadline)


class Deadline:
    """Cancels requests under ``prefix`` after ``seconds``, as a request timeout does.

    It sits outside the middleware, so the middleware sees its task cancelled.
    """

    def __init__(self, app: ASGIApp, prefix: str, seconds: float) -> None:
        self.app = app
        self.prefix = prefix
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(self.prefix):
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self.app(scope, receive, send), self.seconds)
            return
        await self.app(scope, receive, send)


@dataclass
class Service:
    """The running demo app: where to send requests, where Prometheus scrapes, and the
    stand-in that records the client side's and the hop's metrics beside the app's."""

    url: str
    metrics_target: str
    hop: HopStandIn


#: The client side's and the hop's instruments, by their documented names: (kind, unit).
HOP_INSTRUMENTS: dict[str, tuple[str, str]] = {
    "http.client.stream.time_to_first_byte": ("histogram", "s"),
    "http.client.stream.time_to_first_token": ("histogram", "s"),
    "http.client.stream.terminations": ("counter", "{request}"),
    "http.server.stream.hop.time_to_first_byte": ("histogram", "s"),
}
#: The upstream hosts the stand-in's relays read from.
UPSTREAMS = (("api.openai.com", 443), ("api.anthropic.com", 443))


class HopStandIn:
    """Records what otel-stream's client side and the hop will record, by instrument name.

    otel_stream does not record these yet; this records them through the same meter
    provider (and so the same Prometheus exporter) as the demo app's own metrics, with
    the documented names, units and attributes, so the dashboards' hop row can be proven
    against a real Prometheus and drawn in the previews.
    """

    def __init__(self, meter_provider: Any) -> None:
        from otel_stream.buckets import TTFB_BUCKETS

        meter = meter_provider.get_meter("otel_stream")
        self.instruments: dict[str, Any] = {}
        for name, (kind, unit) in HOP_INSTRUMENTS.items():
            if kind == "histogram":
                self.instruments[name] = meter.create_histogram(
                    name, unit=unit, explicit_bucket_boundaries_advisory=list(TTFB_BUCKETS)
                )
            else:
                self.instruments[name] = meter.create_counter(name, unit=unit)

    def relay(
        self,
        *,
        upstream: tuple[str, int],
        first_byte: float,
        first_token: float | None,
        hop: float,
        reason: str,
        route: str = "/v1/chat/completions",
    ) -> None:
        """One relayed stream: the client's side of it and the time the hop added."""
        host, port = upstream
        client = {
            "http.request.method": "POST",
            "server.address": host,
            "server.port": port,
            "http.response.status_code": 200,
        }
        get = self.instruments.__getitem__
        get("http.client.stream.time_to_first_byte").record(first_byte, client)
        if first_token is not None:
            get("http.client.stream.time_to_first_token").record(first_token, client)
        ended = {**client, "http.stream.termination_reason": reason}
        get("http.client.stream.terminations").add(1, ended)
        server = {"http.request.method": "POST", "http.route": route}
        get("http.server.stream.hop.time_to_first_byte").record(hop, server)


@contextlib.contextmanager
def serve_demo() -> Iterator[Service]:
    """Run the demo app on uvicorn and its ``/metrics`` on prometheus_client, on loopback."""
    import uvicorn
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    resource = Resource.create({"service.name": SERVICE_NAME})
    meter_provider = MeterProvider(metric_readers=[reader], resource=resource)
    tracer_provider = TracerProvider(resource=resource)
    metrics_port = free_port()
    metrics_server, metrics_thread = start_http_server(
        metrics_port, addr="127.0.0.1", registry=registry
    )
    port = free_port()
    config = uvicorn.Config(
        demo_app(tracer_provider, meter_provider),
        host="127.0.0.1",
        port=port,
        log_level="critical",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield Service(
            f"http://127.0.0.1:{port}", f"127.0.0.1:{metrics_port}", HopStandIn(meter_provider)
        )
    finally:
        server.should_exit = True
        thread.join(10)
        metrics_server.shutdown()
        metrics_server.server_close()
        metrics_thread.join(5)
        meter_provider.shutdown()
        tracer_provider.shutdown()


# Traffic ----------------------------------------------------------------------------------


async def _raw_get(url: str, path: str, close_after_first_event: bool, wait: float) -> None:
    """A client that leaves mid-request: before the first byte, or after the first event."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        if close_after_first_event:
            received = b""
            while b"data:" not in received:
                data = await asyncio.wait_for(reader.read(4096), 5)
                if not data:
                    break
                received += data
        else:
            await asyncio.sleep(wait)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _stream(client: httpx.AsyncClient, path: str) -> None:
    """Read a response to its end; a server that breaks the response is expected here."""
    with contextlib.suppress(httpx.HTTPError):
        async with client.stream("GET", path) as response:
            async for _ in response.aiter_bytes():
                pass


async def _chat(client: Any, model: str, max_tokens: int, ttft: float, gap: float) -> None:
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say something about streams."}],
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_query={"ttft": f"{ttft:.4f}", "gap": f"{gap:.4f}"},
    )
    async for _ in stream:
        pass


async def _impatient(client: httpx.AsyncClient, path: str, patience: float) -> None:
    """A client that leaves when the first body byte takes longer than ``patience``."""
    first_byte = asyncio.Event()

    async def read() -> None:
        async with client.stream("GET", path) as response:
            async for _ in response.aiter_raw():
                first_byte.set()

    reading = asyncio.create_task(read())
    try:
        await asyncio.wait_for(first_byte.wait(), patience)
    except (asyncio.TimeoutError, TimeoutError):
        reading.cancel()
    with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
        await reading


@dataclass
class Mix:
    """Timings (seconds) and extra requests of one wave of traffic."""

    ttfb: float = 0.03
    ttft: float = 0.04
    token_gap: float = 0.003
    jitter: float = 0.5  # log-normal sigma applied to every timing
    #: Extra completed streams: this many SSE feeds and as many chat completions.
    extra_streams: int = 0
    #: Extra clients that give up when the first byte takes longer than 0.25 s.
    impatient: int = 0


async def wave(
    url: str,
    mix: Mix | None = None,
    rng: random.Random | None = None,
    hop: HopStandIn | None = None,
) -> int:
    """One request of every kind, concurrently; returns how many requests were made.

    Ends: completed (SSE feed, chat completions), client_disconnect before and after
    the first byte (raw sockets), app_error (the generator raises), cancelled (the
    request deadline), incomplete (the legacy route; and, once LLM payload readers are
    on, a chat stream without ``[DONE]``), plus one non-streamed response. With ``hop``,
    each chat completion is also recorded as relayed from an upstream (``relays``).
    """
    from openai import AsyncOpenAI

    mix = mix or Mix()
    rng = rng or random.Random(7)

    def vary(seconds: float) -> float:
        return round(seconds * rng.lognormvariate(0, mix.jitter), 4)

    requests: list[Awaitable[None]] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        chat = AsyncOpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0, timeout=10)
        try:
            for _ in range(4):
                requests.append(
                    _stream(client, f"/v1/events?ttfb={vary(mix.ttfb)}&chunks=6&gap=0.01")
                )
            for model, max_tokens in (
                ("demo", 12),
                ("demo", 8),
                ("demo-length", 6),
                ("demo-truncated", 10),
            ):
                requests.append(_chat(chat, model, max_tokens, vary(mix.ttft), vary(mix.token_gap)))
            if hop is not None:
                relays(hop, mix, rng, 4 + mix.extra_streams)
            for _ in range(mix.extra_streams):
                chunks = rng.randint(3, 30)
                requests.append(
                    _stream(client, f"/v1/events?ttfb={vary(mix.ttfb)}&chunks={chunks}&gap=0.02")
                )
                tokens = rng.randint(8, 40)
                requests.append(_chat(chat, "demo", tokens, vary(mix.ttft), vary(mix.token_gap)))
            for _ in range(mix.impatient):
                path = f"/v1/events?ttfb={vary(mix.ttfb * 4)}&chunks=4&gap=0.02"
                requests.append(_impatient(client, path, 0.25))
            requests += [
                _raw_get(url, "/v1/events?ttfb=2&chunks=3", False, 0.05),
                _raw_get(url, "/v1/events?ttfb=0.01&chunks=40&gap=0.02", True, 0),
                _stream(client, "/v1/events?ttfb=0.01&chunks=5&gap=0.01&fail_after=2"),
                _stream(client, "/v1/jobs/7/logs?gap=0.05"),
                _stream(client, "/v1/legacy"),
                _stream(client, "/healthz"),
            ]
            await asyncio.gather(*requests)
        finally:
            await chat.close()
    return len(requests)


def relays(hop: HopStandIn, mix: Mix, rng: random.Random, count: int) -> None:
    """``count`` relayed streams, the upstream's timings drawn like the chat's: most
    complete, one the upstream broke, one this service stopped reading, one without
    its end marker; the hop adding a few milliseconds."""
    reasons = ["server_disconnect", "consumer_closed", "incomplete"]
    for index in range(count):
        first_byte = round(mix.ttft * rng.lognormvariate(0, mix.jitter), 4)
        hop.relay(
            upstream=UPSTREAMS[index % len(UPSTREAMS)],
            first_byte=first_byte,
            first_token=first_byte + round(mix.token_gap * rng.lognormvariate(0, mix.jitter), 4),
            hop=round(0.003 * rng.lognormvariate(0, mix.jitter), 4),
            reason=reasons[index] if index < len(reasons) else "completed",
        )


# Prometheus -------------------------------------------------------------------------------


def prometheus_binary() -> str | None:
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )


def scrape_config(target: str, scrape_interval: str) -> dict[str, Any]:
    """The shipped ``prometheus/direct.yml``, pointed at ``target``."""
    config: dict[str, Any] = yaml.safe_load(DIRECT_CONFIG.read_text())
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["evaluation_interval"] = scrape_interval
    (job,) = config["scrape_configs"]
    job["job_name"] = JOB
    job["scrape_interval"] = scrape_interval
    job["static_configs"] = [{"targets": [target]}]
    return config


class Prometheus:
    """A ``prometheus`` process on a free loopback port, with its data in ``workdir``."""

    def __init__(self, binary: str, workdir: Path, target: str, scrape_interval: str = "1s"):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(target, scrape_interval)))
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # stopped with its whole group
            )
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if self.client.get("/-/ready").status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"prometheus not ready after {timeout} s")

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._get("/api/v1/query", params)

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}
        return self._get("/api/v1/query_range", params)

    def _get(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        response = self.client.get(path, params=params)
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{params['query']}: {body.get('error', body)}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, expr: str) -> float:
        """The value of a query that returns one sample, or NaN when it returns none."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else math.nan

    def wait_until(self, expr: str, minimum: float, timeout: float = 20) -> float:
        """Poll until the single-sample ``expr`` reaches ``minimum``; returns the value."""
        deadline = time.monotonic() + timeout
        value = math.nan
        while time.monotonic() < deadline:
            value = self.scalar(expr)
            if value >= minimum:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{expr} = {value}, waited for {minimum}")

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after 10 s or once prometheus has exited."""
        self.client.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(5)


@contextlib.contextmanager
def running_prometheus(
    binary: str, workdir: Path, target: str, scrape_interval: str = "1s"
) -> Iterator[Prometheus]:
    prometheus = Prometheus(binary, workdir, target, scrape_interval)
    try:
        prometheus.wait_ready()
        yield prometheus
    finally:
        prometheus.stop()


# Dashboards -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel_id: int
    panel_type: str
    title: str
    ref_id: str
    expr: str
    legend: str


def panel_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    """Every query of every panel of a dashboard's JSON, in panel order."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append(
                PanelQuery(
                    dashboard["uid"],
                    panel["id"],
                    panel["type"],
                    panel["title"],
                    target["refId"],
                    target["expr"],
                    target.get("legendFormat", ""),
                )
            )
    return found


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana variables the way Grafana does for a Prometheus query."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", variables[name]).replace(f"${name}", variables[name])
    return expr


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.stem: json.loads(path.read_text())
        for path in (HERE / "streaming-overview.json", HERE / "llm-streams.json")
    }
