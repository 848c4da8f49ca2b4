"""The span model on real servers: the split at the first byte, names, kinds, context."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Host, Mount, Route

from otel_stream import StreamingMiddleware
from tests.apps import read_body, scope_for, starlette_app, start, token_stream
from tests.servers import SERVERS, serve, wait_until
from tests.telemetry_harness import Telemetry

FIRST_TOKEN_AFTER = 0.15
PACE = 0.03


def upstream_server_span(app: Any, telemetry: Telemetry) -> Any:
    """``app`` inside opentelemetry-instrumentation-asgi, which opens the SERVER span."""
    return OpenTelemetryMiddleware(
        app,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        exclude_spans=["send", "receive"],
    )


@pytest.mark.parametrize("server", SERVERS)
def test_request_span_ends_at_first_byte_and_stream_span_covers_the_body(
    telemetry: Telemetry, server: str
) -> None:
    app = StreamingMiddleware(
        starlette_app(first_after=FIRST_TOKEN_AFTER, count=4, pace=PACE), **telemetry.providers
    )
    with serve(app, server) as url, httpx.stream("GET", url + "/stream/7?secret=1") as response:
        body = response.read()
    assert body == b"".join(f"data: {i}\n\n".encode() for i in range(4))
    assert wait_until(lambda: len(telemetry.spans()) == 2)

    request = telemetry.span("GET /stream/{id}")
    stream = telemetry.span("GET /stream/{id} stream")
    assert request.kind is SpanKind.SERVER
    assert stream.kind is SpanKind.INTERNAL
    assert stream.parent is not None
    assert stream.parent.span_id == request.context.span_id
    assert stream.start_time == request.end_time
    ttfb = (request.end_time - request.start_time) / 1e9
    assert ttfb >= FIRST_TOKEN_AFTER
    assert request.attributes["http.stream.time_to_first_byte"] == pytest.approx(ttfb, abs=1e-3)
    streamed = (stream.end_time - stream.start_time) / 1e9
    assert streamed >= 3 * PACE
    assert request.attributes["http.route"] == "/stream/{id}"
    assert request.attributes["url.path"] == "/stream/7"
    assert request.attributes["http.response.status_code"] == 200
    assert "url.query" not in request.attributes
    assert all("secret" not in str(value) for value in request.attributes.values())
    assert stream.attributes["http.stream.termination_reason"] == "completed"
    assert stream.attributes["http.stream.chunks"] == 4
    assert stream.attributes["http.stream.bytes"] == len(body)
    assert stream.attributes["http.stream.max_chunk_gap"] >= PACE
    assert 0 <= stream.attributes["http.stream.send_wait"] <= streamed
    assert stream.attributes["http.stream.time_to_first_byte"] == pytest.approx(ttfb, abs=1e-3)


@pytest.mark.parametrize("server", SERVERS)
def test_a_single_chunk_response_gets_the_request_span_only(
    telemetry: Telemetry, server: str
) -> None:
    app = StreamingMiddleware(starlette_app(), **telemetry.providers)
    with serve(app, server) as url:
        assert httpx.get(url + "/plain").text == "plain answer"
    assert wait_until(lambda: len(telemetry.spans()) == 1)
    (span,) = telemetry.spans()
    assert span.name == "GET /plain"
    assert span.attributes["http.stream.termination_reason"] == "completed"
    assert telemetry.points("http.server.stream.duration") == []
    assert telemetry.counts("http.server.stream.time_to_first_byte", "http.route") == {
        ("/plain",): 1
    }
    assert telemetry.counts(
        "http.server.stream.terminations", "http.stream.termination_reason"
    ) == {("completed",): 1}


def test_headers_are_not_the_first_byte(telemetry: Telemetry) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await read_body(receive)
        await start(send)
        await asyncio.sleep(FIRST_TOKEN_AFTER)
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b", "more_body": False})

    with serve(StreamingMiddleware(app, **telemetry.providers)) as url:
        assert httpx.get(url + "/raw").content == b"ab"
    assert wait_until(lambda: len(telemetry.spans()) == 2)
    request = telemetry.span("GET")  # no route template: the method alone, never the path
    assert (request.end_time - request.start_time) / 1e9 >= FIRST_TOKEN_AFTER


def test_sse_comment_pings_are_not_the_first_byte(telemetry: Telemetry) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await read_body(receive)
        await start(send, b"text/event-stream; charset=utf-8")
        for _ in range(3):
            await send({"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True})
            await asyncio.sleep(FIRST_TOKEN_AFTER / 3)
        await send({"type": "http.response.body", "body": b"retry: 100\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: hi\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    with serve(StreamingMiddleware(app, **telemetry.providers)) as url:
        assert httpx.get(url + "/sse").content.endswith(b"data: hi\n\n")
    assert wait_until(lambda: len(telemetry.spans()) == 2)
    request = telemetry.span("GET")
    ttfb = request.attributes["http.stream.time_to_first_byte"]
    assert ttfb >= FIRST_TOKEN_AFTER
    assert request.attributes["http.stream.time_to_first_raw_byte"] < ttfb  # the first ping
    stream = telemetry.span("GET stream")
    assert stream.attributes["http.stream.chunks"] == 5  # pings are bytes sent too
    assert stream.attributes["http.stream.bytes"] == 3 * 10 + 12 + 10


def test_incoming_trace_context_is_continued_and_app_spans_join_it(
    telemetry: Telemetry,
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent_id = "00f067aa0ba902b7"
    tracer = telemetry.tracer_provider.get_tracer("app")

    async def endpoint(request: Request) -> StreamingResponse:
        with tracer.start_as_current_span("load model"):
            pass
        return StreamingResponse(token_stream(count=2), media_type="text/event-stream")

    app = StreamingMiddleware(Starlette(routes=[Route("/chat", endpoint)]), **telemetry.providers)
    headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    with serve(app) as url:
        httpx.get(url + "/chat", headers=headers)
    assert wait_until(lambda: len(telemetry.spans()) == 3)
    request = telemetry.span("GET /chat")
    assert f"{request.context.trace_id:032x}" == trace_id
    assert request.parent is not None
    assert f"{request.parent.span_id:016x}" == parent_id
    assert all(f"{span.context.trace_id:032x}" == trace_id for span in telemetry.spans())
    inner = telemetry.span("load model")
    assert inner.parent is not None
    assert inner.parent.span_id == request.context.span_id


def test_nested_under_an_outer_server_span_the_request_span_is_internal(
    telemetry: Telemetry,
) -> None:
    inner = StreamingMiddleware(starlette_app(count=2), **telemetry.providers)
    outer = upstream_server_span(inner, telemetry)
    with serve(outer) as url:
        httpx.get(url + "/stream/1")
    assert wait_until(lambda: len(telemetry.spans()) == 3)
    ours = telemetry.span("GET /stream/{id}")
    stream = telemetry.span("GET /stream/{id} stream")
    (upstream,) = [s for s in telemetry.spans() if s not in (ours, stream)]
    assert upstream.kind is SpanKind.SERVER
    assert ours.kind is SpanKind.INTERNAL
    assert ours.parent is not None
    assert ours.parent.span_id == upstream.context.span_id
    assert [s.kind for s in telemetry.spans()].count(SpanKind.SERVER) == 1


def test_the_request_span_is_current_while_the_app_runs(telemetry: Telemetry) -> None:
    seen: list[trace.Span] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(trace.get_current_span())
        await read_body(receive)
        await start(send)
        await send({"type": "http.response.body", "body": b"x"})

    with serve(StreamingMiddleware(app, **telemetry.providers)) as url:
        httpx.get(url + "/")
    assert wait_until(lambda: len(telemetry.spans()) == 1)
    assert seen[0].get_span_context().span_id == telemetry.spans()[0].context.span_id


def test_only_allowlisted_headers_reach_the_span(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "x-tenant,x-key")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "content-type")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "x-key")
    app = StreamingMiddleware(starlette_app(count=2), **telemetry.providers)
    headers = {"x-tenant": "acme", "x-key": "s3cret", "cookie": "session=abc"}
    with serve(app) as url:
        httpx.get(url + "/stream/1", headers=headers)
        assert wait_until(lambda: len(telemetry.spans()) == 2)
    attributes = telemetry.span("GET /stream/{id}").attributes
    assert attributes["http.request.header.x_tenant"] == ("acme",)
    assert attributes["http.request.header.x_key"] == ("[REDACTED]",)
    assert attributes["http.response.header.content_type"] == ("text/event-stream; charset=utf-8",)
    everything = repr([dict(span.attributes) for span in telemetry.spans()])
    assert "s3cret" not in everything
    assert "session=abc" not in everything


def test_mounted_routes_carry_templates_never_path_values(telemetry: Telemetry) -> None:
    async def streaming(request: Request) -> StreamingResponse:
        return StreamingResponse(token_stream(count=2), media_type="text/event-stream")

    async def raw(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await read_body(receive)
        await start(send)
        await send({"type": "http.response.body", "body": b"file", "more_body": False})

    sub = Starlette(routes=[Route("/items/{id}", streaming)])  # a mounted app
    app = Starlette(
        routes=[
            Mount("/org/{org}", routes=[Route("/items/{id}", streaming)]),
            Mount("/files/{user}", app=raw),
            # The same value twice, and a name the inner route uses again.
            Mount("/a/{x}", routes=[Mount("/b/{y:int}", routes=[Route("/c", streaming)])]),
            Mount("/t/{id}", app=sub),
            Host("{tenant}.example.test", app=Starlette(routes=[Mount("/h/{h}", app=sub)])),
        ]
    )
    with serve(StreamingMiddleware(app, **telemetry.providers)) as url:
        assert httpx.get(url + "/org/acme/items/7").status_code == 200
        assert httpx.get(url + "/files/bob/notes.txt").content == b"file"
        assert httpx.get(url + "/a/7/b/7/c").status_code == 200
        assert httpx.get(url + "/t/acme/items/42").status_code == 200
        host = {"host": "zeta.example.test"}
        assert httpx.get(url + "/h/acme/items/9", headers=host).status_code == 200
    assert wait_until(lambda: len(telemetry.spans()) == 9)
    routes = telemetry.counts("http.server.stream.terminations", "http.route")
    assert routes == {
        ("/org/{org}/items/{id}",): 1,
        ("/files/{user}",): 1,
        ("/a/{x}/b/{y}/c",): 1,
        ("/t/{id}/items/{id}",): 1,
        ("/h/{h}/items/{id}",): 1,
    }
    # url.path holds the raw path, as the HTTP conventions say; http.route never does.
    for span in telemetry.spans():
        assert span.attributes.get("http.route") in {route for (route,) in routes}
        assert not any(value in span.name for value in ("acme", "bob", "7"))


def test_under_an_outer_span_that_is_not_a_server_span_the_request_span_is_a_server_span(
    telemetry: Telemetry,
) -> None:
    tracer = telemetry.tracer_provider.get_tracer("outer")
    inner = StreamingMiddleware(starlette_app(), **telemetry.providers)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        with tracer.start_as_current_span("outer", kind=SpanKind.INTERNAL):
            await inner(scope, receive, send)

    with serve(app) as url:
        assert httpx.get(url + "/plain").text == "plain answer"
    assert wait_until(lambda: len(telemetry.spans()) == 2)
    outer, request = telemetry.span("outer"), telemetry.span("GET /plain")
    assert request.kind is SpanKind.SERVER
    assert request.parent is not None
    assert request.parent.span_id == outer.context.span_id
    assert request.context.trace_id == outer.context.trace_id


def _call_directly(app: Any) -> list[dict[str, Any]]:
    """Run ``app`` once with a server stand-in that accepts every message it sends.

    No server in the test set implements the zero-copy or path-send extensions, so these
    messages are exercised without one."""
    sent: list[dict[str, Any]] = []
    scope = scope_for(
        "/file",
        asgi={"version": "3.0", "spec_version": "2.4"},
        extensions={"http.response.zerocopysend": {}, "http.response.pathsend": {}},
    )

    async def main() -> None:
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # connected until the test ends
            return {}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)

    asyncio.run(main())
    return sent


@pytest.mark.parametrize("content_type", [b"application/octet-stream", b"text/event-stream"])
def test_zero_copy_chunks_are_chunks_of_one_stream(
    telemetry: Telemetry, content_type: bytes
) -> None:
    zero_copy = {"type": "http.response.zerocopysend", "file": 3, "count": 100, "more_body": True}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await read_body(receive)
        await start(send, content_type)
        for _ in range(3):
            await send(dict(zero_copy))
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent = _call_directly(StreamingMiddleware(app, **telemetry.providers))
    assert [message["type"] for message in sent].count("http.response.zerocopysend") == 3
    request, stream = telemetry.span("GET"), telemetry.span("GET stream")
    assert stream.attributes["http.stream.termination_reason"] == "completed"
    assert stream.attributes["http.stream.chunks"] == 3
    assert stream.attributes["http.stream.bytes"] == 300
    assert stream.attributes["http.stream.max_chunk_gap"] >= 0.01
    assert stream.start_time == request.end_time
    assert len(telemetry.points("http.server.stream.time_to_first_byte")) == 1
    assert telemetry.counts("http.server.stream.time_to_first_byte") == {(): 1}
    assert set(telemetry.counts("http.server.stream.active", "http.stream.phase").values()) == {0}


def test_a_path_send_response_gets_the_request_span_only(telemetry: Telemetry) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await read_body(receive)
        await start(send, b"text/event-stream")
        await send({"type": "http.response.pathsend", "path": "/srv/answer.txt"})

    sent = _call_directly(StreamingMiddleware(app, **telemetry.providers))
    assert sent[-1] == {"type": "http.response.pathsend", "path": "/srv/answer.txt"}
    (request,) = telemetry.spans()
    assert request.attributes["http.stream.termination_reason"] == "completed"
    assert telemetry.counts("http.server.stream.time_to_first_byte") == {(): 1}


def test_under_an_outer_server_span_and_a_span_inside_it_the_request_span_is_internal(
    telemetry: Telemetry,
) -> None:
    tracer = telemetry.tracer_provider.get_tracer("outer")
    inner = StreamingMiddleware(starlette_app(), **telemetry.providers)

    async def checking(scope: dict[str, Any], receive: Any, send: Any) -> None:
        with tracer.start_as_current_span("auth check", kind=SpanKind.INTERNAL):
            await inner(scope, receive, send)

    outer = upstream_server_span(checking, telemetry)
    with serve(outer) as url:
        assert httpx.get(url + "/plain").text == "plain answer"
    assert wait_until(lambda: len(telemetry.spans()) == 3)
    assert [span.kind for span in telemetry.spans()].count(SpanKind.SERVER) == 1
    check = telemetry.span("auth check")
    check_id = check.context.span_id
    (ours,) = [s for s in telemetry.spans() if s.parent and s.parent.span_id == check_id]
    assert ours.name == "GET /plain"
    assert ours.kind is SpanKind.INTERNAL
