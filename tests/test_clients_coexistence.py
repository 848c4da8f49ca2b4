"""Beside contrib's httpx and aiohttp instrumentations (either order) and the anthropic
SDK's own call span: exactly one CLIENT span per call."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import httpx2
import pytest
from opentelemetry.trace import SpanKind

from otel_stream.clients import StreamingClientInstrumentor
from tests import client_servers
from tests.client_servers import CHAT_BODY
from tests.telemetry_harness import Telemetry

TTFT = 0.15


def contrib_httpx(module: Any) -> Any:
    from opentelemetry.instrumentation.httpx import (
        HTTPX2ClientInstrumentor,
        HTTPXClientInstrumentor,
    )

    return HTTPXClientInstrumentor() if module is httpx else HTTPX2ClientInstrumentor()


@pytest.fixture(params=["contrib first", "otel-stream first"])
def order(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def instrument_both(telemetry: Telemetry, contrib: Any, order: str) -> list[Any]:
    ours = StreamingClientInstrumentor()
    first, second = (contrib, ours) if order == "contrib first" else (ours, contrib)
    first.instrument(**telemetry.providers)
    second.instrument(**telemetry.providers)
    return [ours, contrib]


@pytest.mark.parametrize("module", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_one_client_span_beside_contrib_httpx(
    telemetry: Telemetry, upstream: str, module: Any, order: str
) -> None:
    instrumentors = instrument_both(telemetry, contrib_httpx(module), order)
    client_servers.seen_trace_headers.clear()
    try:
        with (
            module.Client() as client,
            client.stream(
                "POST",
                upstream + "/v1/chat/completions",
                json=CHAT_BODY,
                headers={"x-demo-ttft": str(TTFT)},
            ) as response,
        ):
            body = response.read()
        with module.Client() as client:
            client.get(upstream + "/echo")
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()

    assert body.endswith(b"data: [DONE]\n\n")
    spans = telemetry.spans()
    clients = [span for span in spans if span.kind is SpanKind.CLIENT]
    assert len(clients) == 2, [(span.name, span.kind) for span in spans]  # one per call
    ours = [span for span in spans if span.instrumentation_scope.name == "otel_stream"]
    post, stream = (next(s for s in ours if s.name == name) for name in ("POST", "POST stream"))
    contrib_post = next(span for span in clients if span.name == "POST")
    assert post.kind is SpanKind.INTERNAL
    assert contrib_post.parent is not None
    assert contrib_post.parent.span_id == post.context.span_id
    # contrib's span ends at the headers, otel-stream's at the first byte
    assert (contrib_post.end_time - contrib_post.start_time) / 1e9 < TTFT
    assert (post.end_time - post.start_time) / 1e9 >= TTFT
    assert stream.attributes["http.stream.termination_reason"] == "completed"
    # the trace context on the wire is contrib's CLIENT span's
    contrib_get = next(span for span in clients if span.name == "GET")
    traceparent = client_servers.seen_trace_headers[-1]["traceparent"]
    assert traceparent.split("-")[2] == format(contrib_get.context.span_id, "016x")


def test_one_client_span_beside_contrib_aiohttp(
    telemetry: Telemetry, upstream: str, order: str
) -> None:
    aiohttp_client = pytest.importorskip("opentelemetry.instrumentation.aiohttp_client")
    import aiohttp

    instrumentors = instrument_both(telemetry, aiohttp_client.AioHttpClientInstrumentor(), order)

    async def main() -> bytes:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                upstream + "/v1/chat/completions",
                json=CHAT_BODY,
                headers={"x-demo-ttft": str(TTFT)},
            ) as response,
        ):
            return await response.read()

    try:
        body = asyncio.run(main())
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()

    assert body.endswith(b"data: [DONE]\n\n")
    spans = telemetry.spans()
    assert [span.kind for span in spans].count(SpanKind.CLIENT) == 1
    post = next(
        s for s in spans if s.name == "POST" and s.instrumentation_scope.name == "otel_stream"
    )
    assert post.kind is SpanKind.INTERNAL
    assert (post.end_time - post.start_time) / 1e9 >= TTFT
    assert telemetry.span("POST stream").attributes["http.stream.termination_reason"] == "completed"


def test_under_the_anthropic_call_span(telemetry: Telemetry, upstream: str) -> None:
    anthropic = pytest.importorskip("anthropic")
    instrumentor = StreamingClientInstrumentor()
    instrumentor.instrument(**telemetry.providers)
    try:
        client = anthropic.Anthropic(
            base_url=upstream,
            api_key="test",
            max_retries=0,
            open_telemetry={"tracer_provider": telemetry.tracer_provider},
        )
        text = []
        with client.messages.stream(
            model="claude-demo",
            max_tokens=64,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-demo-ttft": str(TTFT)},
        ) as stream:
            text.extend(stream.text_stream)
        client.close()
    finally:
        instrumentor.uninstrument()

    assert "".join(text) == "".join(client_servers.ANTHROPIC_WORDS)
    spans = telemetry.spans()
    clients = [span for span in spans if span.kind is SpanKind.CLIENT]
    assert len(clients) == 1, [(span.name, span.kind) for span in spans]
    call_span = clients[0]
    post, stream = telemetry.span("POST"), telemetry.span("POST stream")
    assert post.kind is SpanKind.INTERNAL
    assert post.parent is not None
    assert post.parent.span_id == call_span.context.span_id
    assert stream.attributes["http.stream.termination_reason"] == "completed"
    assert stream.attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert stream.attributes["gen_ai.usage.output_tokens"] == len(client_servers.ANTHROPIC_WORDS)


@pytest.mark.parametrize("module", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_one_client_span_beside_contrib_with_an_async_client(
    telemetry: Telemetry, upstream: str, module: Any, order: str
) -> None:
    instrumentors = instrument_both(telemetry, contrib_httpx(module), order)

    async def main() -> bytes:
        async with (
            module.AsyncClient() as client,
            client.stream(
                "POST",
                upstream + "/v1/chat/completions",
                json=CHAT_BODY,
                headers={"x-demo-ttft": str(TTFT)},
            ) as response,
        ):
            return b"".join([chunk async for chunk in response.aiter_raw()])

    try:
        body = asyncio.run(main())
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()

    assert body.endswith(b"data: [DONE]\n\n")
    spans = telemetry.spans()
    assert [span.kind for span in spans].count(SpanKind.CLIENT) == 1
    post = next(
        s for s in spans if s.instrumentation_scope.name == "otel_stream" and s.name == "POST"
    )
    assert post.kind is SpanKind.INTERNAL
    assert (post.end_time - post.start_time) / 1e9 >= TTFT
