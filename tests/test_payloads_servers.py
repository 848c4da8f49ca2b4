"""LLM-aware streams end to end: real servers, real clients, the middleware in between."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from otel_stream import StreamingMiddleware
from tests import payload_streams as streams
from tests.servers import serve, wait_until
from tests.telemetry_harness import Telemetry

ROUTE = "/v1/chat/completions"
THINKING = 0.1  # seconds between the role delta and the first content delta


def streaming_app(
    chunks: Callable[[bytes], AsyncIterator[bytes]],
    media_type: str = "text/event-stream",
    path: str = ROUTE,
) -> Starlette:
    """An app streaming ``chunks(request_body)`` at ``path``."""

    async def endpoint(request: Request) -> Response:
        return StreamingResponse(chunks(await request.body()), media_type=media_type)

    return Starlette(routes=[Route(path, endpoint, methods=["GET", "POST"])])


def stream_span(telemetry: Telemetry, path: str = ROUTE) -> ReadableSpan:
    assert wait_until(lambda: len(telemetry.spans()) == 2)
    return telemetry.span(f"POST {path} stream")


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_openai_client_against_a_fake_openai_server(telemetry: Telemetry, server: str) -> None:
    words = ["Hello", " there", "!"]

    async def completion(request_body: bytes) -> AsyncIterator[bytes]:
        body = json.loads(request_body)
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        chunks = streams.openai_chat(words, usage=(12, len(words)))
        yield chunks[0]  # the role-only delta: the first byte, not the first token
        await asyncio.sleep(THINKING)
        for chunk in chunks[1:]:
            yield chunk

    app = StreamingMiddleware(streaming_app(completion), **telemetry.providers)
    with serve(app, server) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hello."}],
            stream=True,
            stream_options={"include_usage": True},
        )
        received = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in received if chunk.choices)
    assert text == "Hello there!"
    assert received[-1].usage is not None
    assert received[-1].usage.completion_tokens == 3

    span = attributes(stream_span(telemetry))
    request = attributes(telemetry.span(f"POST {ROUTE}"))
    assert span["http.stream.termination_reason"] == "completed"
    assert span["http.stream.events"] == 7  # role, 3 contents, finish, usage, [DONE]
    assert span["gen_ai.response.finish_reasons"] == ("stop",)
    assert (span["gen_ai.usage.input_tokens"], span["gen_ai.usage.output_tokens"]) == (12, 3)
    ttft = span["http.stream.time_to_first_token"]
    assert ttft - span["http.stream.time_to_first_byte"] >= THINKING * 0.9
    # The request span ended at the first byte, before the first token existed.
    assert "http.stream.time_to_first_token" not in request

    small = {"http.request.method": "POST", "http.route": ROUTE}
    (ttft_point,) = telemetry.points("http.server.stream.time_to_first_token")
    assert (dict(ttft_point.attributes), ttft_point.count) == (small, 1)
    assert ttft_point.sum == pytest.approx(ttft)
    (tpot_point,) = telemetry.points("http.server.stream.time_per_output_token")
    assert (dict(tpot_point.attributes), tpot_point.count) == (small, 1)
    assert tpot_point.sum > 0
    terminations = telemetry.counts(
        "http.server.stream.terminations",
        "http.stream.termination_reason",
        "gen_ai.response.finish_reason",
    )
    assert terminations == {("completed", "stop"): 1}


def test_cut_before_done_is_incomplete(telemetry: Telemetry) -> None:
    async def completion(request_body: bytes) -> AsyncIterator[bytes]:
        for chunk in streams.openai_chat(["a", "b"], finish_reason="length")[:-1]:
            yield chunk  # the server stops before [DONE]

    app = StreamingMiddleware(streaming_app(completion), **telemetry.providers)
    with serve(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
        assert len(list(stream)) == 5  # the client noticed nothing

    span = attributes(stream_span(telemetry))
    assert span["http.stream.termination_reason"] == "incomplete"
    assert span["error.type"] == "incomplete"
    assert span["gen_ai.response.finish_reasons"] == ("length",)
    terminations = telemetry.counts(
        "http.server.stream.terminations",
        "http.stream.termination_reason",
        "gen_ai.response.finish_reason",
    )
    assert terminations == {("incomplete", "length"): 1}


def test_anthropic_messages_over_raw_httpx(telemetry: Telemetry) -> None:
    async def messages(request_body: bytes) -> AsyncIterator[bytes]:
        chunks = streams.anthropic(["Hi", "!"], cache_read=40, output_tokens=9)
        for chunk in chunks[:3]:  # message_start, content_block_start, ping
            yield chunk
        await asyncio.sleep(THINKING)
        for chunk in chunks[3:]:
            yield chunk

    app = StreamingMiddleware(streaming_app(messages, path="/v1/messages"), **telemetry.providers)
    with (
        serve(app, "hypercorn") as url,
        httpx.stream("POST", url + "/v1/messages", json={"stream": True}) as response,
    ):
        body = b"".join(response.iter_raw())
    assert body == b"".join(streams.anthropic(["Hi", "!"], cache_read=40, output_tokens=9))

    span = attributes(stream_span(telemetry, "/v1/messages"))
    assert span["http.stream.termination_reason"] == "completed"
    assert span["http.stream.events"] == 8
    assert span["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert (span["gen_ai.usage.input_tokens"], span["gen_ai.usage.output_tokens"]) == (65, 9)
    ttft = span["http.stream.time_to_first_token"]
    assert ttft - span["http.stream.time_to_first_byte"] >= THINKING * 0.9


def test_ollama_ndjson_over_raw_httpx(telemetry: Telemetry) -> None:
    async def chat(request_body: bytes) -> AsyncIterator[bytes]:
        for chunk in streams.ollama_chat(["The", " sky"], done_reason="length", counts=(30, 2)):
            yield chunk

    app = StreamingMiddleware(
        streaming_app(chat, "application/x-ndjson", "/api/chat"), **telemetry.providers
    )
    with (
        serve(app) as url,
        httpx.stream("POST", url + "/api/chat", json={"model": "llama3.2"}) as response,
    ):
        lines = [json.loads(line) for line in response.iter_lines()]
    assert [line["done"] for line in lines] == [False, False, True]

    span = attributes(stream_span(telemetry, "/api/chat"))
    assert span["http.stream.termination_reason"] == "completed"
    assert span["http.stream.events"] == 3
    assert span["gen_ai.response.finish_reasons"] == ("length",)
    assert (span["gen_ai.usage.input_tokens"], span["gen_ai.usage.output_tokens"]) == (30, 2)
    # The first line carried the first token: read as it passed, just before it was sent.
    assert span["http.stream.time_to_first_token"] >= span["http.stream.time_to_first_byte"]
    assert len(telemetry.points("http.server.stream.time_to_first_token")) == 1


def test_request_span_has_the_first_token_when_the_first_byte_carried_it(
    telemetry: Telemetry,
) -> None:
    async def chat(request_body: bytes) -> AsyncIterator[bytes]:
        for chunk in streams.ollama_chat():
            yield chunk

    app = StreamingMiddleware(
        streaming_app(chat, "application/x-ndjson", "/api/chat"), **telemetry.providers
    )
    with serve(app) as url, httpx.stream("POST", url + "/api/chat") as response:
        response.read()
    span = attributes(stream_span(telemetry, "/api/chat"))
    request = attributes(telemetry.span("POST /api/chat"))
    assert request["http.stream.time_to_first_token"] == span["http.stream.time_to_first_token"]


def test_sse_starlette_pings_are_neither_first_byte_nor_events(telemetry: Telemetry) -> None:
    async def events() -> AsyncIterator[dict[str, str]]:
        await asyncio.sleep(0.25)  # pings go out while the model thinks
        for chunk in streams.openai_chat(["Hi"], usage=None):
            yield {"data": chunk.removeprefix(b"data: ").rstrip(b"\n").decode()}

    async def endpoint(request: Request) -> Response:
        return EventSourceResponse(events(), ping=0.05)  # "\r\n" line ends by default

    app = StreamingMiddleware(
        Starlette(routes=[Route(ROUTE, endpoint, methods=["POST"])]), **telemetry.providers
    )
    with serve(app) as url, httpx.stream("POST", url + ROUTE) as response:
        body = b"".join(response.iter_raw())
    assert body.startswith(b": ping")
    assert body.count(b"data: ") == 4

    span = attributes(stream_span(telemetry))
    request = attributes(telemetry.span(f"POST {ROUTE}"))
    assert span["http.stream.events"] == 4  # role, "Hi", finish, [DONE]: no pings
    assert span["gen_ai.response.finish_reasons"] == ("stop",)
    assert span["http.stream.termination_reason"] == "completed"
    assert request["http.stream.time_to_first_raw_byte"] < span["http.stream.time_to_first_byte"]
    assert span["http.stream.time_to_first_token"] >= span["http.stream.time_to_first_byte"]


@pytest.mark.parametrize("options", [{"payloads": False}, {}], ids=["keyword", "environment"])
def test_payloads_off(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]
) -> None:
    if not options:
        monkeypatch.setenv("OTEL_STREAM_PAYLOADS", "false")

    async def completion(request_body: bytes) -> AsyncIterator[bytes]:
        for chunk in streams.openai_chat()[:-1]:  # no [DONE]: would be incomplete if read
            yield chunk

    app = StreamingMiddleware(streaming_app(completion), **options, **telemetry.providers)
    with serve(app) as url, httpx.stream("POST", url + ROUTE) as response:
        response.read()

    span = attributes(stream_span(telemetry))
    assert span["http.stream.termination_reason"] == "completed"
    assert not {key for key in span if key.startswith(("gen_ai.", "http.stream.events"))}
    assert "http.stream.time_to_first_token" not in span
    assert telemetry.points("http.server.stream.time_to_first_token") == []


# The bytes are untouched, whatever they are -----------------------------------------------


class Replay:
    """An app streaming whatever chunks the test put in ``chunks`` last."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.media_type = "text/event-stream"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        chunks, media_type = list(self.chunks), self.media_type

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        await StreamingResponse(body(), media_type=media_type)(scope, receive, send)


@pytest.fixture(scope="module")
def replay() -> Iterator[tuple[str, Replay, Telemetry]]:
    app = Replay()
    harness = Telemetry()
    middleware = StreamingMiddleware(app, payload_max_event_bytes=64, **harness.providers)
    with serve(middleware) as url:
        yield url, app, harness
    harness.shutdown()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    chunks=st.lists(
        st.sampled_from(
            [b"data: ", b"\r\n", b"\n", b"\r", b"[DONE]", b'{"choices":[{"delta":{}}]}', b": p"]
        )
        | st.binary(min_size=1, max_size=200),
        min_size=1,
        max_size=20,
    ),
    media_type=st.sampled_from(["text/event-stream", "application/x-ndjson"]),
)
def test_bytes_reach_the_client_unchanged(
    replay: tuple[str, Replay, Telemetry], chunks: list[bytes], media_type: str
) -> None:
    url, app, harness = replay
    app.chunks, app.media_type = chunks, media_type
    before = len(harness.spans())
    with httpx.stream("GET", url + "/") as response:
        assert response.read() == b"".join(chunks)
    # The exchange ended cleanly: the reader never broke the request.
    key = "http.stream.termination_reason"

    def reasons() -> list[Any]:
        return [(span.attributes or {}).get(key) for span in harness.spans()[before:]]

    assert wait_until(lambda: any(reasons()))
    assert [reason for reason in reasons() if reason] in (["completed"], ["incomplete"])
