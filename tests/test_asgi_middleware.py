"""The ASGI adapter: forward first, explicit options, the no-SDK warning, reading after a leave."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware

from otel_stream import StreamingMiddleware, buckets
from otel_stream.asgi import middleware as asgi_middleware
from otel_stream.config import Settings
from otel_stream.payloads import make_reader
from tests.apps import read_body, scope_for, start
from tests.telemetry_harness import Telemetry

SSE = b"text/event-stream"


def chat_event(content: str | None, finish_reason: str | None = None) -> bytes:
    delta = "{}" if content is None else f'{{"content":"{content}"}}'
    reason = "null" if finish_reason is None else f'"{finish_reason}"'
    return (
        f'data: {{"choices":[{{"index":0,"delta":{delta},"finish_reason":{reason}}}]}}\n\n'
    ).encode()


ANSWER = [chat_event("Hel"), chat_event("lo"), chat_event(None, "stop"), b"data: [DONE]\n\n"]


def server_receive() -> Any:
    """A server's ``receive``: the request once, then nothing until the client leaves."""
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


def sse_app(events: list[bytes], pause: float = 0.0) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        await start(send, SSE)
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
            if pause:
                await asyncio.sleep(pause)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


class SpyReader:
    """A real payload reader that logs each chunk it is fed into the shared ``log``."""

    def __init__(self, log: list[tuple[str, bytes]], content_type: bytes, *args: Any) -> None:
        reader = make_reader(content_type, *args)
        assert reader is not None
        self.reader = reader
        self.log = log

    @property
    def first_token_at(self) -> float | None:
        return self.reader.first_token_at

    @property
    def error(self) -> Exception | None:
        return self.reader.error

    def feed(self, chunk: bytes) -> None:
        self.log.append(("read", chunk))
        self.reader.feed(chunk)

    def finish(self) -> Any:
        return self.reader.finish()


def test_the_server_has_each_message_before_the_reader_sees_its_bytes(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[tuple[str, bytes]] = []
    monkeypatch.setattr(asgi_middleware, "make_reader", lambda *args: SpyReader(log, *args))

    async def server_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            log.append(("sent", message["body"]))
        await asyncio.sleep(0)  # a real server's send yields to the loop

    app = StreamingMiddleware(sse_app(ANSWER), **telemetry.providers)
    asyncio.run(app(scope_for("/chat"), server_receive(), server_send))

    assert [kind for kind, _ in log] == ["sent", "read"] * len(ANSWER)
    assert [chunk for _, chunk in log[::2]] == ANSWER  # the first byte and every later chunk
    stream = telemetry.span("GET stream")
    assert stream.attributes["http.stream.termination_reason"] == "completed"
    assert stream.attributes["gen_ai.response.finish_reasons"] == ("stop",)


def test_the_first_token_is_timed_when_its_chunk_was_handed_over(telemetry: Telemetry) -> None:
    """Reading after the send must not add the send's duration to time to first token."""

    async def slow_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            await asyncio.sleep(0.05)  # a slow client: backpressure on every chunk

    app = StreamingMiddleware(sse_app(ANSWER), **telemetry.providers)
    asyncio.run(app(scope_for("/chat"), server_receive(), slow_send))
    request = telemetry.span("GET")
    ttfb = request.attributes["http.stream.time_to_first_byte"]
    assert request.attributes["http.stream.time_to_first_token"] == pytest.approx(ttfb, abs=1e-6)


def test_a_misspelt_option_names_the_middleware_and_lists_the_valid_ones() -> None:
    with pytest.raises(TypeError) as raised:
        StreamingMiddleware(sse_app([]), excluded_url="/health")  # type: ignore[call-arg]
    message = str(raised.value)
    assert message.startswith("StreamingMiddleware() got an unexpected keyword argument")
    assert "'excluded_url'" in message
    for name in (*Settings.names(), "tracer_provider", "server_request_hook"):
        assert name in message


def test_a_misspelt_option_given_to_add_middleware_says_the_same() -> None:
    app = Starlette(middleware=[Middleware(StreamingMiddleware, excluded_url="/health")])
    with pytest.raises(TypeError, match=r"StreamingMiddleware\(\).*valid options: .*excluded_urls"):
        app.build_middleware_stack()


def test_the_middleware_takes_every_setting_as_an_explicit_keyword() -> None:
    parameters = inspect.signature(StreamingMiddleware.__init__).parameters.values()
    keywords = {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    assert keywords == {
        *Settings.names(),
        "tracer_provider",
        "meter_provider",
        "server_request_hook",
    }


NO_SDK_SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
    if sys.argv[1] == "sdk":
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        trace.set_tracer_provider(TracerProvider())
        metrics.set_meter_provider(MeterProvider())
    from otel_stream import StreamingMiddleware, buckets

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        pass

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "scheme": "http"}
    print("built")
    middlewares = [StreamingMiddleware(app), StreamingMiddleware(app)]
    for middleware in middlewares * 2:
        asyncio.run(middleware(scope, receive, send))
    print("served")
    """
)


@pytest.mark.parametrize(("sdk", "warnings"), [("none", 1), ("sdk", 0)])
def test_without_an_sdk_the_first_request_warns_once_per_process(sdk: str, warnings: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_SDK_SCRIPT, sdk],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "built"  # no warning at construction: an SDK may still come
    assert lines[-1] == "served"
    warned = [line for line in lines if "no OpenTelemetry SDK is configured" in line]
    assert len(warned) == warnings, result.stdout
    if warned:
        assert "otel-stream[otlp]" in warned[0]


def test_after_the_client_left_nothing_more_is_counted_or_read(telemetry: Telemetry) -> None:
    """Chunks, events and finish reasons describe what the client received."""
    left = asyncio.Event()
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await left.wait()
        return {"type": "http.disconnect"}

    sent = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal sent
        if message["type"] == "http.response.body" and message.get("body"):
            sent += 1
            if sent == 2:
                left.set()  # uvicorn's send then returns silently: the client is gone

    events = [chat_event("a"), chat_event("b"), chat_event("c"), chat_event(None, "stop")]
    app = StreamingMiddleware(
        sse_app([*events, b"data: [DONE]\n\n"], pause=0.02), **telemetry.providers
    )
    asyncio.run(app(scope_for("/chat"), receive, send))
    stream = telemetry.span("GET stream")
    assert stream.attributes["http.stream.termination_reason"] == "client_disconnect"
    assert stream.attributes["http.stream.chunks"] == 2
    assert stream.attributes["http.stream.events"] == 2
    assert "gen_ai.response.finish_reasons" not in stream.attributes


USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}\n\n'
FIRST_WITH_MODEL = (
    b'data: {"model":"gpt-test-1","choices":[{"index":0,"delta":{"content":"Hel"},'
    b'"finish_reason":null}]}\n\n'
)
METERED_ANSWER = [FIRST_WITH_MODEL, chat_event("lo"), chat_event("!"), chat_event(None, "stop")]


def run_chat(telemetry: Telemetry) -> None:
    events = [*METERED_ANSWER, USAGE, b"data: [DONE]\n\n"]
    app = StreamingMiddleware(sse_app(events, pause=0.005), **telemetry.providers)

    async def send(message: dict[str, Any]) -> None:
        await asyncio.sleep(0)

    asyncio.run(app(scope_for("/chat"), server_receive(), send))


GEN_AI_METRICS = (
    "gen_ai.server.time_to_first_token",
    "gen_ai.server.time_per_output_token",
    "gen_ai.server.request.duration",
)


def test_a_recognised_stream_carries_the_gen_ai_span_attributes(telemetry: Telemetry) -> None:
    run_chat(telemetry)
    request, stream = telemetry.span("GET"), telemetry.span("GET stream")
    assert stream.attributes["gen_ai.request.stream"] is True
    assert stream.attributes["gen_ai.response.model"] == "gpt-test-1"
    ttfb = request.attributes["http.stream.time_to_first_byte"]
    assert stream.attributes["gen_ai.response.time_to_first_chunk"] == pytest.approx(ttfb)
    for name in GEN_AI_METRICS:  # not opted in: the GenAI metric names are not recorded
        assert telemetry.points(name) == []


def test_the_gen_ai_metric_names_are_recorded_when_opted_in(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http, gen_ai_latest_experimental")
    run_chat(telemetry)
    stream = telemetry.span("GET stream")
    for name in GEN_AI_METRICS:
        (point,) = telemetry.points(name)
        assert point.count == 1
        assert point.attributes["gen_ai.operation.name"] == "chat"
        assert "gen_ai.provider.name" not in point.attributes  # never guessed
        assert point.attributes["gen_ai.response.model"] == "gpt-test-1"
    (ttft,) = telemetry.points("gen_ai.server.time_to_first_token")
    assert ttft.sum == pytest.approx(stream.attributes["http.stream.time_to_first_token"])
    assert tuple(ttft.explicit_bounds) == buckets.TTFB_BUCKETS  # this project's bucket advice
    (duration,) = telemetry.points("gen_ai.server.request.duration")
    assert tuple(duration.explicit_bounds) == buckets.DURATION_BUCKETS
    (ours,) = telemetry.points("http.server.stream.time_to_first_token")
    assert ours.sum == ttft.sum  # the same measurement under both names


def test_a_relayed_stream_records_the_time_the_hop_added(telemetry: Telemetry) -> None:
    """The server side of the hop: what an instrumented client tells the exchange."""
    from time import perf_counter

    from otel_stream.exchange import current_exchange

    async def relay(scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        exchange = current_exchange.get()
        assert exchange is not None
        exchange.upstream_first_byte(perf_counter(), 0.25)  # the upstream's first byte
        exchange.upstream_first_byte(perf_counter() + 1, 9.0)  # a later call: ignored
        await asyncio.sleep(0.05)  # the hop's own work before passing it on
        await start(send, SSE)
        for event in ANSWER:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def send(message: dict[str, Any]) -> None:
        pass

    app = StreamingMiddleware(relay, **telemetry.providers)
    asyncio.run(app(scope_for("/relay"), server_receive(), send))
    assert current_exchange.get() is None  # reset after the exchange
    request = telemetry.span("GET")
    assert request.attributes["http.stream.upstream.time_to_first_byte"] == 0.25
    (hop,) = telemetry.points("http.server.stream.hop.time_to_first_byte")
    assert hop.count == 1
    assert 0.05 <= hop.sum < request.attributes["http.stream.time_to_first_byte"]


def test_an_exchange_without_an_upstream_records_no_hop(telemetry: Telemetry) -> None:
    run_chat(telemetry)
    assert "http.stream.upstream.time_to_first_byte" not in telemetry.span("GET").attributes
    assert telemetry.points("http.server.stream.hop.time_to_first_byte") == []
