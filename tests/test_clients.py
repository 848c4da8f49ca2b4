"""Outgoing streams: httpx, httpx2 (through the openai SDK) and aiohttp against a real
upstream on loopback, each split at the first body byte the caller reads."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import httpx2
import openai
import pytest
from opentelemetry.trace import SpanKind

from otel_stream.clients import StreamingClientInstrumentor
from tests.client_servers import CHAT_BODY
from tests.telemetry_harness import Telemetry

TTFT = 0.15  # the upstream's time to first token: long beside loopback's headers


@pytest.fixture
def clients(telemetry: Telemetry) -> Iterator[Telemetry]:
    instrumentor = StreamingClientInstrumentor()
    instrumentor.instrument(**telemetry.providers)
    try:
        yield telemetry
    finally:
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


def slow_first_token() -> dict[str, str]:
    return {"x-demo-ttft": str(TTFT), "x-demo-tokens": "5", "x-demo-token-interval": "0.01"}


def stream_chat(url: str) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key="test", max_retries=0)
    parts = []
    stream = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=slow_first_token(),
    )
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
    client.close()
    return "".join(parts)


def test_openai_stream_is_split_at_the_first_byte(clients: Telemetry, upstream: str) -> None:
    answer = stream_chat(upstream)

    assert answer.strip().startswith("A streaming answer")
    request = clients.span("POST")
    stream = clients.span("POST stream")
    assert request.kind is SpanKind.CLIENT
    assert stream.kind is SpanKind.INTERNAL
    assert stream.parent is not None
    assert stream.parent.span_id == request.context.span_id
    assert request.end_time == stream.start_time
    ttfb = (request.end_time - request.start_time) / 1e9
    assert TTFT <= ttfb < TTFT + 1.0
    assert request.attributes["http.stream.time_to_first_byte"] == pytest.approx(ttfb, abs=1e-3)
    assert stream.attributes["http.stream.termination_reason"] == "completed"
    assert stream.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert stream.attributes["gen_ai.usage.output_tokens"] == 5
    assert stream.attributes["gen_ai.request.stream"] is True
    assert stream.attributes["gen_ai.response.time_to_first_chunk"] >= TTFT
    assert stream.attributes["http.stream.chunks"] >= 5
    assert "http.stream.send_wait" not in stream.attributes  # a client has no backpressure
    counts = clients.counts("http.client.stream.terminations", "http.stream.termination_reason")
    assert counts == {("completed",): 1}
    assert clients.counts("http.client.stream.duration", "http.response.status_code") == {(200,): 1}


def test_a_json_answer_gets_the_request_span_only(clients: Telemetry, upstream: str) -> None:
    client = openai.OpenAI(base_url=upstream + "/v1", api_key="test", max_retries=0)
    answer = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hi"}], extra_headers=slow_first_token()
    )
    client.close()

    assert answer.choices[0].message.content
    assert clients.names() == ["POST"]
    span = clients.span("POST")
    assert span.kind is SpanKind.CLIENT
    assert span.attributes["http.stream.termination_reason"] == "completed"
    assert clients.points("http.client.stream.duration") == []
    assert clients.counts("http.client.stream.terminations", "http.stream.phase") == {
        ("streaming",): 1
    }


def test_upstream_that_hangs_up_mid_stream_is_server_disconnect(
    clients: Telemetry, upstream: str
) -> None:
    with (
        httpx.Client() as client,
        client.stream(
            "POST",
            upstream + "/v1/chat/completions",
            json=CHAT_BODY,
            headers={"x-demo-truncate-after": "2", "x-demo-ttft": "0.01"},
        ) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        for _ in response.iter_raw():
            pass

    stream = clients.span("POST stream")
    assert stream.attributes["http.stream.termination_reason"] == "server_disconnect"
    assert stream.attributes["error.type"] == "RemoteProtocolError"
    assert not stream.status.is_ok


def test_caller_that_closes_early_is_consumer_closed(clients: Telemetry, upstream: str) -> None:
    with (
        httpx.Client() as client,
        client.stream(
            "POST", upstream + "/v1/chat/completions", json=CHAT_BODY, headers=slow_first_token()
        ) as response,
    ):
        for index, _ in enumerate(response.iter_raw()):
            if index == 1:
                break

    stream = clients.span("POST stream")
    assert stream.attributes["http.stream.termination_reason"] == "consumer_closed"
    assert stream.attributes["http.stream.chunks"] == 2
    assert "error.type" not in stream.attributes


def test_sync_httpx_stream_reads_the_same_bytes(clients: Telemetry, upstream: str) -> None:
    def read(url: str) -> bytes:
        with httpx.Client() as client:
            body = client.post(url, json={**CHAT_BODY, "stream_options": None}).content
        return re.sub(rb'"id": ?"[^"]*"|"created": ?\d+', b"", body)  # per-request values

    instrumented = read(upstream + "/v1/chat/completions")
    StreamingClientInstrumentor().uninstrument()
    bare = read(upstream + "/v1/chat/completions")

    assert instrumented == bare
    assert instrumented.endswith(b"data: [DONE]\n\n")
    stream = clients.span("POST stream")  # chunked SSE read whole: still a stream
    assert stream.attributes["http.stream.termination_reason"] == "completed"
    assert stream.attributes["http.stream.events"] == bare.count(b"data: ")


def test_async_httpx2_stream(clients: Telemetry, upstream: str) -> None:
    async def main() -> int:
        async with (
            httpx2.AsyncClient() as client,
            client.stream(
                "POST",
                upstream + "/v1/chat/completions",
                json=CHAT_BODY,
                headers=slow_first_token(),
            ) as response,
        ):
            return sum([len(chunk) async for chunk in response.aiter_raw()])

    size = asyncio.run(main())

    stream = clients.span("POST stream")
    assert stream.attributes["http.stream.bytes"] == size
    assert stream.attributes["http.stream.termination_reason"] == "completed"
    assert clients.span("POST").end_time - clients.span("POST").start_time >= TTFT * 1e9


def test_query_string_never_reaches_telemetry(clients: Telemetry, upstream: str) -> None:
    with httpx.Client() as client:
        client.post(
            upstream + "/v1/chat/completions?api_key=SECRET-VALUE",
            json=CHAT_BODY,
            headers={"x-demo-ttft": "0"},
        )

    assert clients.span("POST").attributes["url.full"] == upstream + "/v1/chat/completions"
    for span in clients.spans():
        assert all("SECRET-VALUE" not in str(value) for value in span.attributes.values())
    data = clients.reader.get_metrics_data()
    assert data is not None
    assert "SECRET-VALUE" not in data.to_json()
    assert "/v1/chat" not in data.to_json()  # no path on metrics either


def test_trace_context_goes_out_with_the_client_span(clients: Telemetry, upstream: str) -> None:
    from tests import client_servers

    client_servers.seen_trace_headers.clear()
    with httpx.Client() as client:
        client.get(upstream + "/echo")

    request = clients.span("GET")
    traceparent = client_servers.seen_trace_headers[-1]["traceparent"]
    assert traceparent.split("-")[2] == format(request.context.span_id, "016x")


def test_uninstrument_restores_every_client(telemetry: Telemetry, upstream: str) -> None:
    import aiohttp

    originals = [
        vars(httpx.Client)["send"],
        vars(httpx.AsyncClient)["send"],
        vars(httpx2.Client)["send"],
        vars(httpx2.AsyncClient)["send"],
        vars(aiohttp.ClientSession)["_request"],
    ]
    instrumentor = StreamingClientInstrumentor()
    instrumentor.instrument(**telemetry.providers)
    assert vars(httpx.Client)["send"] is not originals[0]
    instrumentor.uninstrument()

    assert [
        vars(httpx.Client)["send"],
        vars(httpx.AsyncClient)["send"],
        vars(httpx2.Client)["send"],
        vars(httpx2.AsyncClient)["send"],
        vars(aiohttp.ClientSession)["_request"],
    ] == originals
    with httpx.Client() as client:
        client.get(upstream + "/echo")
    assert telemetry.spans() == []


def test_gen_ai_metrics_with_the_opt_in(
    telemetry: Telemetry, upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http, gen_ai_latest_experimental")
    instrumentor = StreamingClientInstrumentor()
    instrumentor.instrument(provider_name="openai", **telemetry.providers)
    try:
        stream_chat(upstream)
    finally:
        instrumentor.uninstrument()

    (first_chunk,) = telemetry.points("gen_ai.client.operation.time_to_first_chunk")
    assert first_chunk.attributes["gen_ai.operation.name"] == "chat"
    assert first_chunk.attributes["gen_ai.provider.name"] == "openai"
    assert first_chunk.attributes["server.address"] == "127.0.0.1"
    assert first_chunk.sum >= TTFT
    (duration,) = telemetry.points("gen_ai.client.operation.duration")
    assert duration.sum > first_chunk.sum
    assert "error.type" not in duration.attributes
    usage = {
        point.attributes["gen_ai.token.type"]: point.sum
        for point in telemetry.points("gen_ai.client.token.usage")
    }
    assert usage == {"input": 1, "output": 5}
    # this project's boundaries, not the conventions' (which end at 81.92 s)
    assert max(first_chunk.explicit_bounds) == 300.0


def test_no_gen_ai_metrics_without_the_opt_in(
    clients: Telemetry, upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream_chat(upstream)

    assert clients.points("gen_ai.client.operation.duration") == []
    stream = clients.span("POST stream")
    assert stream.attributes["gen_ai.request.stream"] is True
    assert "gen_ai.provider.name" not in stream.attributes  # never guessed


def test_a_response_dropped_unclosed_is_consumer_closed(clients: Telemetry, upstream: str) -> None:
    import gc

    client = httpx.Client()
    request = client.build_request(
        "POST", upstream + "/v1/chat/completions", json=CHAT_BODY, headers=slow_first_token()
    )
    response = client.send(request, stream=True)
    next(response.iter_raw())
    del response
    gc.collect()

    stream = clients.span("POST stream")
    assert stream.attributes["http.stream.termination_reason"] == "consumer_closed"
    client.close()


def test_a_cancelled_reader_is_consumer_closed(clients: Telemetry, upstream: str) -> None:
    async def main() -> None:
        async with httpx.AsyncClient() as client:
            request = client.build_request(
                "POST",
                upstream + "/v1/chat/completions",
                json=CHAT_BODY,
                headers={"x-demo-ttft": "0.01", "x-demo-token-interval": "1"},
            )
            response = await client.send(request, stream=True)

            async def read() -> None:
                async for _ in response.aiter_raw():
                    pass

            task = asyncio.ensure_future(read())
            await asyncio.sleep(0.2)  # the first token came, the second is a second away
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await response.aclose()

    asyncio.run(main())

    stream = clients.span("POST stream")
    assert stream.attributes["http.stream.termination_reason"] == "consumer_closed"


def test_a_telemetry_failure_never_reaches_the_caller(
    clients: Telemetry,
    upstream: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from otel_stream import guard
    from otel_stream.clients import instrumentor as client_instrumentor

    monkeypatch.setattr(guard, "_logged", set())  # this test sees the first failure logged

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("telemetry bug")

    recorder = client_instrumentor._state.recorder
    assert recorder is not None
    monkeypatch.setattr(recorder.instruments.terminations, "add", broken)
    answers = [stream_chat(upstream) for _ in range(2)]

    assert all(answer.strip().startswith("A streaming answer") for answer in answers)
    failures = [r for r in caplog.records if "telemetry failed in request end" in r.getMessage()]
    assert len(failures) == 1  # logged once per kind
    # whatever failed, every span ended and the active counter is balanced
    assert sorted(clients.names()) == ["POST", "POST", "POST stream", "POST stream"]
    assert all(point.value == 0 for point in clients.points("http.client.stream.active"))


def test_a_stream_without_its_end_marker_is_incomplete(clients: Telemetry, upstream: str) -> None:
    with httpx.Client() as client:
        body = client.post(upstream + "/without-done").content

    assert body.startswith(b"data: ")
    stream = clients.span("POST stream")
    assert stream.attributes["http.stream.termination_reason"] == "incomplete"
    assert stream.attributes["error.type"] == "incomplete"


def test_a_refused_connection_is_an_error_while_waiting(telemetry: Telemetry) -> None:
    from tests.servers import free_port

    instrumentor = StreamingClientInstrumentor()
    instrumentor.instrument(**telemetry.providers)
    try:
        with httpx.Client() as client, pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:{free_port()}/nothing-listens")
    finally:
        instrumentor.uninstrument()

    (span,) = telemetry.spans()
    assert span.attributes["http.stream.termination_reason"] == "error"
    assert span.attributes["error.type"] == "ConnectError"
    assert telemetry.counts("http.client.stream.terminations", "http.stream.phase") == {
        ("waiting",): 1
    }


def test_a_client_error_status_marks_the_request_span(clients: Telemetry, upstream: str) -> None:
    with httpx.Client() as client:
        assert client.get(upstream + "/no-such-path").status_code == 404

    span = clients.span("GET")
    assert span.attributes["error.type"] == "404"
    assert not span.status.is_ok
    assert span.attributes["http.stream.termination_reason"] == "completed"
    assert "http.stream.send_wait" not in span.attributes


def test_a_misspelt_option_is_a_type_error_listing_the_valid_ones() -> None:
    instrumentor = StreamingClientInstrumentor()
    with pytest.raises(TypeError, match=r"'ttfb_bucket'; valid options: .*ttfb_buckets"):
        instrumentor.instrument(ttfb_bucket=[0.1, 1.0])
    with pytest.raises(TypeError, match="'cancel_on_disconnect'"):  # a server-side setting
        instrumentor.instrument(cancel_on_disconnect=True)
    assert not instrumentor.is_instrumented_by_opentelemetry
    assert not hasattr(vars(httpx.Client)["send"], "__wrapped__")


def test_a_response_being_read_when_uninstrumented_finishes_its_telemetry(
    telemetry: Telemetry, upstream: str
) -> None:
    instrumentor = StreamingClientInstrumentor()
    instrumentor.instrument(**telemetry.providers)
    with (
        httpx.Client() as client,
        client.stream(
            "POST", upstream + "/v1/chat/completions", json=CHAT_BODY, headers={"x-demo-ttft": "0"}
        ) as response,
    ):
        chunks = response.iter_raw()
        next(chunks)
        instrumentor.uninstrument()
        body = b"".join(chunks)
        client.get(upstream + "/echo")  # after uninstrument: not recorded

    assert body.endswith(b"data: [DONE]\n\n")
    assert sorted(telemetry.names()) == ["POST", "POST stream"]
    stream = telemetry.span("POST stream")
    assert stream.attributes["http.stream.termination_reason"] == "completed"


@pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
def test_an_sse_ping_is_not_the_first_byte(
    clients: Telemetry, upstream: str, asynchronous: bool
) -> None:
    async def read_async() -> bytes:
        async with httpx.AsyncClient() as client:
            return (await client.get(upstream + "/pinged")).content

    if asynchronous:
        body = asyncio.run(read_async())
    else:
        with httpx.Client() as client:
            body = client.get(upstream + "/pinged").content

    assert body.startswith(b": ping")
    request = clients.span("GET")
    ttfb = request.attributes["http.stream.time_to_first_byte"]
    assert ttfb >= 0.1  # the data event, not the ping
    assert request.attributes["http.stream.time_to_first_raw_byte"] < ttfb
    stream = clients.span("GET stream")
    assert stream.attributes["http.stream.chunks"] == 3
    assert stream.attributes["http.stream.termination_reason"] == "completed"


@pytest.mark.parametrize("module", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_a_response_hook_that_reads_the_body_ends_the_call_at_once(
    clients: Telemetry, upstream: str, module: object
) -> None:
    """The hook reads the body inside send, before it can be wrapped: the call ends when
    send returns, not when the response is collected."""
    client_class = module.Client  # type: ignore[attr-defined]
    with client_class(event_hooks={"response": [lambda response: response.read()]}) as client:
        response = client.get(upstream + "/v1/models")
        assert response.status_code == 200
        spans = clients.spans()  # before the response object is dropped
        request = clients.span("GET")
        assert request.attributes["http.stream.termination_reason"] == "completed"
        assert response.content  # the caller still has its body
        assert len(spans) == 1


def test_a_stream_closed_early_after_its_reader_failed_is_consumer_closed(
    clients: Telemetry, upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed reader cannot tell whether the end marker came: closing early is not
    taken for a whole answer."""
    from otel_stream.payloads import formats

    def broken(self: object, data: bytes) -> None:
        raise RuntimeError("reader bug")

    monkeypatch.setattr(formats.Interpreter, "chat", broken)
    body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with (
        httpx.Client() as client,
        client.stream(
            "POST", upstream + "/v1/chat/completions", json=body, headers=slow_first_token()
        ) as response,
    ):
        chunks = response.iter_raw()
        next(chunks)
        next(chunks)
    stream = clients.span("POST stream")
    assert stream.attributes["http.stream.termination_reason"] == "consumer_closed"
