"""Telemetry never breaks the response; the app's own behaviour passes through unchanged."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import httpx
import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider

from otel_stream import StreamingMiddleware
from tests.apps import read_body, starlette_app, start
from tests.servers import SERVERS, serve, wait_until
from tests.telemetry_harness import Telemetry


class Boom(Exception):
    pass


class RaisingTracer:
    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        raise Boom("tracer down")

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        raise Boom("tracer down")


class RaisingTracerProvider(NoOpTracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return RaisingTracer()


class RaisingInstrument:
    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> None:
            raise Boom(f"{name} failed")

        return fail


class RaisingMeter:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: RaisingInstrument()


class RaisingMeterProvider(NoOpMeterProvider):
    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        return RaisingMeter()


def stream_body(url: str) -> bytes:
    with httpx.stream("GET", url + "/stream/1") as response:
        return response.read()


EXPECTED = b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_a_raising_tracer_leaves_the_response_intact(
    caplog: pytest.LogCaptureFixture, telemetry: Telemetry
) -> None:
    app = StreamingMiddleware(
        starlette_app(),
        tracer_provider=RaisingTracerProvider(),
        meter_provider=telemetry.meter_provider,
    )
    with caplog.at_level(logging.WARNING, "otel_stream"), serve(app) as url:
        assert stream_body(url) == EXPECTED
        assert stream_body(url) == EXPECTED
    failures = [r for r in caplog.records if "telemetry failed" in r.getMessage()]
    assert len(failures) == 1  # logged once, not once per request


def test_a_raising_meter_leaves_the_response_and_spans_intact(
    caplog: pytest.LogCaptureFixture, telemetry: Telemetry
) -> None:
    app = StreamingMiddleware(
        starlette_app(),
        tracer_provider=telemetry.tracer_provider,
        meter_provider=RaisingMeterProvider(),
    )
    with caplog.at_level(logging.WARNING, "otel_stream"), serve(app) as url:
        assert stream_body(url) == EXPECTED
        assert stream_body(url) == EXPECTED
        assert wait_until(lambda: len(telemetry.spans()) == 4)
    assert sorted(telemetry.names()) == ["GET /stream/{id}"] * 2 + ["GET /stream/{id} stream"] * 2
    kinds = {r.getMessage() for r in caplog.records if "telemetry failed" in r.getMessage()}
    assert kinds  # each failing place is logged...
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == len(set(messages))  # ...once


def test_a_raising_hook_is_logged_once_and_ignored(
    caplog: pytest.LogCaptureFixture, telemetry: Telemetry
) -> None:
    def hook(span: Any, scope: Any) -> None:
        raise Boom("hook")

    app = StreamingMiddleware(starlette_app(), server_request_hook=hook, **telemetry.providers)
    with caplog.at_level(logging.WARNING, "otel_stream"), serve(app) as url:
        assert stream_body(url) == EXPECTED
        assert stream_body(url) == EXPECTED
        assert wait_until(lambda: len(telemetry.spans()) == 4)
    assert sum("server_request_hook" in r.getMessage() for r in caplog.records) == 1


def test_the_hook_sees_the_request_span_and_scope(telemetry: Telemetry) -> None:
    def hook(span: Any, scope: Any) -> None:
        span.set_attribute("app.tenant", "acme" if scope["path"] == "/stream/1" else "x")

    app = StreamingMiddleware(starlette_app(), server_request_hook=hook, **telemetry.providers)
    with serve(app) as url:
        stream_body(url)
        assert wait_until(lambda: len(telemetry.spans()) == 2)
    assert telemetry.span("GET /stream/{id}").attributes["app.tenant"] == "acme"


def test_the_apps_exception_propagates_unchanged(telemetry: Telemetry) -> None:
    original = Boom("app failed")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise original

    async def noop_receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def noop_send(message: Any) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with pytest.raises(Boom) as caught:
        asyncio.run(StreamingMiddleware(app, **telemetry.providers)(scope, noop_receive, noop_send))
    assert caught.value is original


@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
def test_non_http_scopes_pass_through_untouched(telemetry: Telemetry, scope_type: str) -> None:
    seen: list[tuple[Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        pass

    scope = {"type": scope_type}
    asyncio.run(StreamingMiddleware(app, **telemetry.providers)(scope, receive, send))
    ((seen_scope, seen_receive, seen_send),) = seen
    assert seen_scope == {"type": scope_type}
    assert seen_receive is receive
    if scope_type == "websocket":
        assert seen_send is send
    assert telemetry.spans() == []


def test_excluded_urls_are_not_instrumented(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "/plain")
    by_env = StreamingMiddleware(starlette_app(), **telemetry.providers)
    by_keyword = StreamingMiddleware(
        starlette_app(), excluded_urls="stream/2,health", **telemetry.providers
    )
    with serve(by_env) as url:
        assert httpx.get(url + "/plain").text == "plain answer"
        stream_body(url)
    with serve(by_keyword) as url:
        httpx.get(url + "/stream/2")
        httpx.get(url + "/plain")
        assert wait_until(lambda: len(telemetry.spans()) == 3)
    assert sorted(telemetry.names()) == [
        "GET /plain",
        "GET /stream/{id}",
        "GET /stream/{id} stream",
    ]


def test_an_app_is_never_instrumented_twice(telemetry: Telemetry) -> None:
    app = StreamingMiddleware(
        StreamingMiddleware(starlette_app(), **telemetry.providers), **telemetry.providers
    )
    with serve(app) as url:
        stream_body(url)
        assert wait_until(lambda: len(telemetry.spans()) >= 2)
    assert len(telemetry.spans()) == 2
    assert telemetry.counts("http.server.stream.terminations") == {(): 1}


def test_disabled_by_variable_passes_through(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_STREAM_ENABLED", "false")
    with serve(StreamingMiddleware(starlette_app(), **telemetry.providers)) as url:
        assert stream_body(url) == EXPECTED
    assert telemetry.spans() == []


@pytest.mark.parametrize("server", SERVERS)
def test_bytes_are_identical_with_and_without_the_middleware(
    telemetry: Telemetry, server: str
) -> None:
    rng = random.Random(20261121)
    chunks = [rng.randbytes(rng.choice([0, 1, 7, 512, 4096, 70_000])) for _ in range(120)]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        await start(send, b"application/octet-stream")
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    received = []
    for wrapped in (app, StreamingMiddleware(app, **telemetry.providers)):
        with serve(wrapped, server) as url, httpx.stream("GET", url + "/") as response:
            received.append(response.read())
    assert received[0] == b"".join(chunks)
    assert received[1] == received[0]
    assert wait_until(lambda: len(telemetry.spans()) == 2)
    stream = telemetry.span("GET stream")
    assert stream.attributes["http.stream.bytes"] == len(received[0])
    assert stream.attributes["http.stream.chunks"] == sum(1 for c in chunks if c)


def test_spans_whose_attributes_cannot_be_set_still_end(
    caplog: pytest.LogCaptureFixture, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request span's attributes are set in one call when it ends: when that call
    fails, the span still ends (for a stream and for a single-message response)."""
    from opentelemetry.sdk.trace import Span as SdkSpan

    def refuse(self: Any, attributes: Any) -> None:
        raise Boom("attributes refused")

    monkeypatch.setattr(SdkSpan, "set_attributes", refuse)
    app = StreamingMiddleware(starlette_app(), **telemetry.providers)
    with caplog.at_level(logging.WARNING, "otel_stream"), serve(app) as url:
        assert stream_body(url) == EXPECTED
        assert httpx.get(url + "/plain").status_code == 200
        assert wait_until(lambda: len(telemetry.spans()) == 3)
    names = ["GET /plain", "GET /stream/{id}", "GET /stream/{id} stream"]
    assert sorted(telemetry.names()) == names
    assert all(span.end_time is not None for span in telemetry.spans())
    assert any("attributes refused" in r.getMessage() or r.exc_info for r in caplog.records)
