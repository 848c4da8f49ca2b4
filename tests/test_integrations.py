"""One SERVER span per request beside every other HTTP instrumentation (docs/integrations.md).

Each test serves a real app on uvicorn in this process, with StreamingInstrumentor and
the other instrumentation sharing one in-memory tracer provider, and compares the trace
with the tree docs/integrations.md shows.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.responses import StreamingResponse as FastAPIStreamingResponse
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as ContribASGIMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.opentelemetry import OpenTelemetryMiddleware as StarletteOTelMiddleware
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from otel_stream import StreamingInstrumentor, StreamingMiddleware
from tests.servers import serve, wait_until
from tests.telemetry_harness import Telemetry
from tests.telemetry_harness import span_tree as tree

ROUTE = "GET /chat/{room}"


@pytest.fixture
def instrumented(telemetry: Telemetry) -> Iterator[Telemetry]:
    instrumentor = StreamingInstrumentor()
    instrumentor.instrument(**telemetry.providers)
    yield telemetry
    instrumentor.uninstrument()


async def tokens():  # type: ignore[no-untyped-def]
    for i in range(3):
        yield f"data: {i}\n\n"


async def chat(request: Request) -> StreamingResponse:
    return StreamingResponse(tokens(), media_type="text/event-stream")


def fastapi_app(**options: Any) -> FastAPI:
    def room_of(room: str) -> str:
        return room

    app = FastAPI(**options)

    @app.get("/chat/{room}")
    async def chat(room: str = Depends(room_of)) -> FastAPIStreamingResponse:
        return FastAPIStreamingResponse(tokens(), media_type="text/event-stream")

    return app


def trace_of(
    app: Any, telemetry: Telemetry, expected_spans: int, path: str = "/chat/a"
) -> list[str]:
    with serve(app) as url:
        assert httpx.get(url + path).text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert wait_until(lambda: len(telemetry.spans()) >= expected_spans)
    spans = telemetry.spans()
    assert len({span.context.trace_id for span in spans}) == 1, tree(spans)
    assert sum(span.kind.name == "SERVER" for span in spans) == 1, tree(spans)
    return tree(spans)


def test_alone_otel_stream_owns_the_server_span(instrumented: Telemetry) -> None:
    app = Starlette(routes=[Route("/chat/{room}", chat)])
    assert trace_of(app, instrumented, 2) == [
        f"{ROUTE} (SERVER, otel_stream)",
        f"  {ROUTE} stream (INTERNAL, otel_stream)",
    ]


def test_fastapi_builtin_telemetry_owns_it_and_keeps_its_operation_spans(
    instrumented: Telemetry,
) -> None:
    app = fastapi_app(telemetry=dict(instrumented.providers))
    assert trace_of(app, instrumented, 5) == [
        f"{ROUTE} (SERVER, fastapi)",
        f"  {ROUTE} (INTERNAL, otel_stream)",
        "    fastapi.dependencies (INTERNAL, fastapi)",
        "    fastapi.endpoint (INTERNAL, fastapi)",
        f"    {ROUTE} stream (INTERNAL, otel_stream)",
    ]


def test_fastapi_builtin_telemetry_turned_off_leaves_it_to_otel_stream(
    instrumented: Telemetry,
) -> None:
    app = fastapi_app(telemetry={**instrumented.providers, "tracing": False})
    assert trace_of(app, instrumented, 2) == [
        f"{ROUTE} (SERVER, otel_stream)",
        f"  {ROUTE} stream (INTERNAL, otel_stream)",
    ]


def test_contrib_fastapi_instrumentor_owns_it(instrumented: Telemetry) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    app = fastapi_app(telemetry=dict(instrumented.providers))
    FastAPIInstrumentor.instrument_app(
        app, exclude_spans=["send", "receive"], **instrumented.providers
    )
    # FastAPI sees contrib's middleware in its stack and turns its own tracing off.
    assert trace_of(app, instrumented, 3) == [
        f"{ROUTE} (SERVER, opentelemetry.instrumentation.fastapi)",
        f"  {ROUTE} (INTERNAL, otel_stream)",
        f"    {ROUTE} stream (INTERNAL, otel_stream)",
    ]


def test_starlette_builtin_middleware_owns_it(instrumented: Telemetry) -> None:
    middleware = [Middleware(StarletteOTelMiddleware, **instrumented.providers)]
    app = Starlette(routes=[Route("/chat/{room}", chat)], middleware=middleware)
    assert trace_of(app, instrumented, 3) == [
        f"{ROUTE} (SERVER, starlette)",
        f"  {ROUTE} (INTERNAL, otel_stream)",
        f"    {ROUTE} stream (INTERNAL, otel_stream)",
    ]


def test_contrib_asgi_middleware_in_the_stack_owns_it(instrumented: Telemetry) -> None:
    # What contrib's Starlette instrumentor does: add_middleware(OpenTelemetryMiddleware).
    middleware = [
        Middleware(
            ContribASGIMiddleware, exclude_spans=["send", "receive"], **instrumented.providers
        )
    ]
    app = Starlette(routes=[Route("/chat/{room}", chat)], middleware=middleware)
    # Contrib's bare ASGI middleware names its span after the path; its Starlette and
    # FastAPI instrumentors pass it the route instead.
    assert trace_of(app, instrumented, 3) == [
        "GET /chat/a (SERVER, opentelemetry.instrumentation.asgi)",
        f"  {ROUTE} (INTERNAL, otel_stream)",
        f"    {ROUTE} stream (INTERNAL, otel_stream)",
    ]


def test_contrib_asgi_middleware_around_a_plain_app_owns_it(instrumented: Telemetry) -> None:
    async def plain(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(3):
            body = b"data: %d\n\n" % i
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    app = ContribASGIMiddleware(plain, exclude_spans=["send", "receive"], **instrumented.providers)
    assert trace_of(app, instrumented, 3, "/chat") == [
        "GET /chat (SERVER, opentelemetry.instrumentation.asgi)",
        "  GET (INTERNAL, otel_stream)",
        "    GET stream (INTERNAL, otel_stream)",
    ]


def test_a_hand_added_middleware_nests_under_fastapi_once(instrumented: Telemetry) -> None:
    app = fastapi_app(telemetry=dict(instrumented.providers))
    app.add_middleware(StreamingMiddleware, **instrumented.providers)
    lines = trace_of(app, instrumented, 5)
    assert lines[0] == f"{ROUTE} (SERVER, fastapi)"
    assert sum("otel_stream" in line for line in lines) == 2


@pytest.mark.skipif(
    importlib.util.find_spec("opentelemetry.instrumentation.starlette") is None,
    reason="opentelemetry-instrumentation-starlette is not installed (see pyproject.toml)",
)
def test_contrib_starlette_instrumentor_owns_it(instrumented: Telemetry) -> None:
    from opentelemetry.instrumentation.starlette import StarletteInstrumentor

    app = Starlette(routes=[Route("/chat/{room}", chat)])
    StarletteInstrumentor.instrument_app(app, **instrumented.providers)
    lines = trace_of(app, instrumented, 3)
    assert lines[0].endswith("(SERVER, opentelemetry.instrumentation.starlette)")
    assert lines[1] == f"  {ROUTE} (INTERNAL, otel_stream)"


# Wrapped by hand, from outside: app = StreamingMiddleware(app) ----------------------


def plain_chat_app() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i in range(3):
            await send(
                {"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True}
            )
        await send({"type": "http.response.body", "body": b""})

    return app


def test_wrapping_a_fastapi_app_from_outside_nests_under_its_telemetry(
    telemetry: Telemetry,
) -> None:
    app = StreamingMiddleware(
        fastapi_app(telemetry=dict(telemetry.providers)), **telemetry.providers
    )
    lines = trace_of(app, telemetry, 5)
    assert lines[0] == f"{ROUTE} (SERVER, fastapi)"
    assert f"  {ROUTE} (INTERNAL, otel_stream)" in lines
    assert sum("otel_stream" in line for line in lines) == 2


def test_wrapping_a_fastapi_app_with_telemetry_off_owns_the_server_span(
    telemetry: Telemetry,
) -> None:
    inner = fastapi_app(telemetry={**telemetry.providers, "tracing": False})
    app = StreamingMiddleware(inner, **telemetry.providers)
    lines = trace_of(app, telemetry, 2)
    assert lines[0] == f"{ROUTE} (SERVER, otel_stream)"
    assert lines[-1] == f"  {ROUTE} stream (INTERNAL, otel_stream)"


def test_both_readme_lines_together_instrument_once(telemetry: Telemetry) -> None:
    inner = fastapi_app(telemetry=dict(telemetry.providers))
    inner.add_middleware(StreamingMiddleware, **telemetry.providers)
    app = StreamingMiddleware(inner, **telemetry.providers)
    lines = trace_of(app, telemetry, 5)
    assert lines[0] == f"{ROUTE} (SERVER, fastapi)"
    assert sum("otel_stream" in line for line in lines) == 2


def test_wrapping_a_started_starlette_app_from_outside(telemetry: Telemetry) -> None:
    inner = Starlette(routes=[Route("/chat/{room}", chat)])
    inner.middleware_stack = inner.build_middleware_stack()  # as after its first request
    app = StreamingMiddleware(inner, **telemetry.providers)
    assert trace_of(app, telemetry, 2) == [
        f"{ROUTE} (SERVER, otel_stream)",
        f"  {ROUTE} stream (INTERNAL, otel_stream)",
    ]


def test_wrapping_a_plain_asgi_app(telemetry: Telemetry) -> None:
    app = StreamingMiddleware(plain_chat_app(), **telemetry.providers)
    assert trace_of(app, telemetry, 2) == [
        "GET (SERVER, otel_stream)",
        "  GET stream (INTERNAL, otel_stream)",
    ]
