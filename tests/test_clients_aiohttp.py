"""aiohttp's client against a real upstream on loopback: every way of reading the body."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from opentelemetry.trace import SpanKind

from otel_stream.clients import StreamingClientInstrumentor
from tests.client_servers import CHAT_BODY
from tests.telemetry_harness import Telemetry

TTFT = 0.15
JSON_BODY = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def clients(telemetry: Telemetry) -> Iterator[Telemetry]:
    instrumentor = StreamingClientInstrumentor()
    instrumentor.instrument(**telemetry.providers)
    try:
        yield telemetry
    finally:
        instrumentor.uninstrument()


async def iter_any(response: aiohttp.ClientResponse) -> bytes:
    return b"".join([chunk async for chunk in response.content.iter_any()])


async def lines(response: aiohttp.ClientResponse) -> bytes:
    return b"".join([line async for line in response.content])


async def read_whole(response: aiohttp.ClientResponse) -> bytes:
    return await response.read()


async def chunks(response: aiohttp.ClientResponse) -> bytes:
    return b"".join([data async for data, _ in response.content.iter_chunks()])


def post(url: str, read: Callable[[aiohttp.ClientResponse], Awaitable[Any]], **headers: str) -> Any:
    async def main() -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url + "/v1/chat/completions", json=CHAT_BODY, headers=headers) as response,
        ):
            return await read(response)

    return asyncio.run(main())


@pytest.mark.parametrize("read", [iter_any, lines, read_whole, chunks])
def test_every_way_of_reading_completes(
    clients: Telemetry, upstream: str, read: Callable[[aiohttp.ClientResponse], Awaitable[bytes]]
) -> None:
    body = post(upstream, read, **{"x-demo-ttft": str(TTFT)})

    assert body.endswith(b"data: [DONE]\n\n")
    request, stream = clients.span("POST"), clients.span("POST stream")
    assert request.kind is SpanKind.CLIENT
    assert stream.parent is not None
    assert stream.parent.span_id == request.context.span_id
    assert (request.end_time - request.start_time) / 1e9 >= TTFT
    assert stream.attributes["http.stream.termination_reason"] == "completed"
    assert stream.attributes["http.stream.bytes"] == len(body)
    assert stream.attributes["gen_ai.response.finish_reasons"] == ("stop",)


def test_released_early_is_consumer_closed(clients: Telemetry, upstream: str) -> None:
    async def first_line(response: aiohttp.ClientResponse) -> bytes:
        return await response.content.readline()

    post(upstream, first_line, **{"x-demo-ttft": "0.01", "x-demo-token-interval": "0.02"})

    stream = clients.span("POST stream")
    assert stream.attributes["http.stream.termination_reason"] == "consumer_closed"
    assert stream.attributes["http.stream.chunks"] == 1


def test_upstream_hanging_up_is_server_disconnect(clients: Telemetry, upstream: str) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        post(upstream, iter_any, **{"x-demo-ttft": "0.01", "x-demo-truncate-after": "2"})

    stream = clients.span("POST stream")
    assert stream.attributes["http.stream.termination_reason"] == "server_disconnect"
    assert stream.attributes["error.type"] == "ClientPayloadError"


def test_a_json_answer_gets_the_request_span_only(clients: Telemetry, upstream: str) -> None:
    async def main() -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.post(upstream + "/v1/chat/completions", json=JSON_BODY) as response,
        ):
            return await response.json()

    answer = asyncio.run(main())

    assert answer["choices"]
    assert clients.names() == ["POST"]
    assert clients.span("POST").attributes["http.stream.termination_reason"] == "completed"


def test_an_ndjson_stream_is_read_as_it_passes(clients: Telemetry, upstream: str) -> None:
    async def main() -> list[bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(upstream + "/api/chat", json={"model": "llama-demo"}) as response,
        ):
            return [line async for line in response.content]

    lines = asyncio.run(main())

    assert len(lines) == 5
    stream = clients.span("POST stream")
    assert stream.attributes["http.stream.termination_reason"] == "completed"
    assert stream.attributes["http.stream.events"] == 5
    assert stream.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert stream.attributes["gen_ai.usage.output_tokens"] == 4


def test_a_chunked_body_without_a_length_is_a_stream(clients: Telemetry, upstream: str) -> None:
    async def main() -> bytes:
        async with aiohttp.ClientSession() as session, session.get(upstream + "/plain") as response:
            return await response.read()

    assert asyncio.run(main()) == b"line 0\nline 1\nline 2\n"
    stream = clients.span("GET stream")
    assert stream.attributes["http.stream.termination_reason"] == "completed"
    assert stream.attributes["http.stream.bytes"] == 21
    assert "http.stream.events" not in stream.attributes  # not an LLM format


def test_an_sse_ping_is_not_the_first_byte(clients: Telemetry, upstream: str) -> None:
    async def main() -> bytes:
        async with (
            aiohttp.ClientSession() as session,
            session.get(upstream + "/pinged") as response,
        ):
            return b"".join([chunk async for chunk in response.content.iter_any()])

    assert asyncio.run(main()).startswith(b": ping")
    request = clients.span("GET")
    assert request.attributes["http.stream.time_to_first_byte"] >= 0.1
    assert clients.span("GET stream").attributes["http.stream.termination_reason"] == "completed"
