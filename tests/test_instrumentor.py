"""StreamingInstrumentor in this process: which apps it reaches, never twice, fully undone."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from otel_stream import StreamingInstrumentor, StreamingMiddleware
from otel_stream.instrumentor import AutoStreamingMiddleware
from tests import processes
from tests.processes import child_environment
from tests.servers import SERVERS, serve, wait_until
from tests.telemetry_harness import Telemetry

REPO = Path(__file__).resolve().parent.parent

Instrument = Callable[..., StreamingInstrumentor]


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Instrument]:
    instrumentor = StreamingInstrumentor()

    def start(**options: Any) -> StreamingInstrumentor:
        instrumentor.instrument(**telemetry.providers, **options)
        return instrumentor

    yield start
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


async def plain_app(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    for i in range(3):
        await send({"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def starlette_app(**options: Any) -> Starlette:
    async def tokens():  # type: ignore[no-untyped-def]
        for i in range(3):
            yield f"data: {i}\n\n"

    async def chat(request: Request) -> StreamingResponse:
        return StreamingResponse(tokens(), media_type="text/event-stream")

    return Starlette(routes=[Route("/chat/{room}", chat)], **options)


def request_spans(telemetry: Telemetry) -> list[Any]:
    return [s for s in telemetry.spans() if s.instrumentation_scope.name == "otel_stream"]


@pytest.mark.parametrize("server", SERVERS)
def test_a_plain_asgi_app_is_instrumented_where_the_server_loads_it(
    telemetry: Telemetry, instrument: Instrument, server: str
) -> None:
    instrument()
    forwarded = {"x-forwarded-for": "203.0.113.9"}
    with serve(plain_app, server) as url:
        response = httpx.get(url + "/chat", headers=forwarded)
        assert response.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert wait_until(lambda: len(telemetry.spans()) == 2)
    request = telemetry.span("GET")
    stream = telemetry.span("GET stream")
    assert request.kind.name == "SERVER"
    # Inside uvicorn's proxy-headers wrapper, which trusts loopback by default.
    client = "203.0.113.9" if server == "uvicorn" else "127.0.0.1"
    assert request.attributes["client.address"] == client
    assert stream.parent is not None
    assert stream.parent.span_id == request.context.span_id
    assert stream.attributes["http.stream.chunks"] == 3


@pytest.mark.parametrize("server", SERVERS)
def test_a_starlette_app_is_instrumented_once_in_its_stack(
    telemetry: Telemetry, instrument: Instrument, server: str
) -> None:
    instrument()
    app = starlette_app()
    with serve(app, server) as url:
        for _ in range(2):
            assert httpx.get(url + "/chat/a").status_code == 200
    assert wait_until(lambda: len(telemetry.spans()) == 4)
    assert sorted(telemetry.names()) == ["GET /chat/{room}"] * 2 + ["GET /chat/{room} stream"] * 2
    inserted = [
        node for node in _chain(app.middleware_stack) if isinstance(node, StreamingMiddleware)
    ]
    assert len(inserted) == 1
    assert type(app.middleware_stack).__name__ == "ServerErrorMiddleware"


def _chain(node: Any) -> list[Any]:
    nodes = []
    while node is not None and len(nodes) < 50:
        nodes.append(node)
        node = getattr(node, "app", None)
    return nodes


def test_fastapi_under_testclient(telemetry: Telemetry, instrument: Instrument) -> None:
    instrument()
    app = FastAPI(telemetry={"tracing": False})

    @app.get("/items/{item}")
    def item(item: str) -> dict[str, str]:
        return {"item": item}

    with TestClient(app) as client:
        assert client.get("/items/x").json() == {"item": "x"}
    span = telemetry.span("GET /items/{item}")
    assert span.kind.name == "SERVER"
    assert span.attributes["http.response.status_code"] == 200


def test_a_hand_added_middleware_is_not_doubled(
    telemetry: Telemetry, instrument: Instrument
) -> None:
    instrument()
    app = starlette_app()
    app.add_middleware(StreamingMiddleware, **telemetry.providers)
    wrapped_by_hand = StreamingMiddleware(plain_app, **telemetry.providers)
    with serve(app) as url:
        assert httpx.get(url + "/chat/a").status_code == 200
    with serve(wrapped_by_hand, "hypercorn") as url:
        assert httpx.get(url + "/x").status_code == 200
    assert wait_until(lambda: len(telemetry.spans()) == 4)
    names = ["GET", "GET /chat/{room}", "GET /chat/{room} stream", "GET stream"]
    assert sorted(telemetry.names()) == names
    for stack in (app.middleware_stack, wrapped_by_hand):
        assert not any(isinstance(n, AutoStreamingMiddleware) for n in _chain(stack))


def test_a_stack_built_before_instrument_is_reached_through_the_server(
    telemetry: Telemetry, instrument: Instrument
) -> None:
    app = starlette_app()
    with TestClient(app) as client:  # builds the stack, uninstrumented
        assert client.get("/chat/a").status_code == 200
    instrument()
    with serve(app) as url:
        assert httpx.get(url + "/chat/a").status_code == 200
    assert wait_until(lambda: len(telemetry.spans()) == 2)
    assert telemetry.span("GET /chat/{room}").kind.name == "SERVER"


def test_uninstrument_turns_inserted_middlewares_into_pass_throughs(
    telemetry: Telemetry, instrument: Instrument
) -> None:
    instrumentor = instrument()
    app = starlette_app()
    with serve(app) as url:
        assert httpx.get(url + "/chat/a").status_code == 200
        assert wait_until(lambda: len(telemetry.spans()) == 2)
        instrumentor.uninstrument()
        assert httpx.get(url + "/chat/a").text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    with serve(plain_app) as url:
        assert httpx.get(url + "/x").status_code == 200
    assert len(telemetry.spans()) == 2


def test_otel_stream_enabled_false_patches_nothing(
    telemetry: Telemetry, instrument: Instrument, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_STREAM_ENABLED", "false")
    instrument()
    app = starlette_app()
    with TestClient(app) as client:
        assert client.get("/chat/a").status_code == 200
    assert telemetry.spans() == []
    assert not any(isinstance(n, StreamingMiddleware) for n in _chain(app.middleware_stack))


def test_every_bad_variable_warns_once_at_instrument_time(
    telemetry: Telemetry,
    instrument: Instrument,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = {
        "OTEL_STREAM_TTFB_BUCKETS": "1,abc",
        "OTEL_STREAM_PAYLOADS": "maybe",
        "OTEL_STREAM_PAYLOAD_MAX_EVENT_BYTES": "-5",
        "OTEL_STREAM_EXCLUDED_URLS": "(unclosed",
        "OTEL_STREAM_SHUTDOWN_FLUSH_TIMEOUT": "soon",
        "OTEL_STREAM_TYPO": "1",
    }
    for name, value in bad.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OTEL_STREAM_DURATION_BUCKETS", "0.5, 1, 2")  # valid: no warning
    caplog.set_level(logging.WARNING, logger="otel_stream")
    instrument()
    warned = [r.getMessage() for r in caplog.records if r.name == "otel_stream"]
    assert len(warned) == len(bad), warned
    for name, value in bad.items():
        assert sum(f"{name}={value!r}" in message for message in warned) == 1, (name, warned)
    caplog.clear()
    with serve(starlette_app()) as url, serve(plain_app, "hypercorn") as url2:
        assert httpx.get(url + "/chat/a").status_code == 200
        assert httpx.get(url2 + "/x").status_code == 200
    assert [r for r in caplog.records if r.name == "otel_stream"] == []
    assert wait_until(lambda: len(telemetry.spans()) == 4)
    (duration,) = {p.explicit_bounds for p in telemetry.points("http.server.stream.duration")}
    assert duration == (0.5, 1.0, 2.0)


def test_a_wrong_keyword_fails_at_instrument_time(instrument: Instrument) -> None:
    with pytest.raises(TypeError):
        instrument(no_such_option=True)


def test_the_start_up_hook_is_installed_with_the_package() -> None:
    distribution = metadata.distribution("otel-stream")
    installed = [f for f in distribution.files or () if str(f) == "otel_stream.pth"]
    assert installed, "reinstall: pip install -e ."
    source = (REPO / "src" / "otel_stream.pth").read_text()
    assert Path(str(installed[0].locate())).read_text() == source
    assert source.count("\n") == 1
    assert source.startswith("import os;")


_CHECK_PATCHES = textwrap.dedent(
    """
    import json, sys
    from otel_stream import StreamingInstrumentor

    TARGETS = {
        "starlette.applications": ("Starlette", "build_middleware_stack"),
        "fastapi.applications": ("FastAPI", "build_middleware_stack"),
        "uvicorn.config": ("Config", "load"),
        "hypercorn.app_wrappers": ("ASGIWrapper", "__init__"),
        "granian.asgi": ("LifespanProtocol", "__init__"),
        "granian.server.mp": (None, "_asgi_call_wrap"),
        "granian.server.mt": (None, "_asgi_call_wrap"),
        "granian.server.embed": (None, "_asgi_call_wrap"),
        "daphne.server": ("Server", "__init__"),
    }

    def current():
        found = {}
        for module, (owner, attribute) in TARGETS.items():
            if module in sys.modules:
                holder = sys.modules[module]
                holder = holder if owner is None else getattr(holder, owner)
                found[module] = vars(holder)[attribute]
        return found

    report = {"imported_at_import": sorted(m for m in TARGETS if m in sys.modules)}
    instrumentor = StreamingInstrumentor()
    instrumentor.instrument()
    report["imported_by_instrument"] = sorted(m for m in TARGETS if m in sys.modules)
    import starlette.applications, uvicorn.config  # noqa: E401
    early = current()
    import fastapi, hypercorn.asyncio, granian.server.mp, granian.server.mt  # noqa: E401
    import granian.server.embed, daphne.server  # noqa: E401
    patched = current()
    report["patched"] = sorted(m for m, f in patched.items() if hasattr(f, "__wrapped__"))
    report["early_kept"] = all(patched[m] is f for m, f in early.items())
    instrumentor.uninstrument()
    restored = current()
    report["restored"] = sorted(
        m
        for m, f in restored.items()
        if f is patched[m].__wrapped__ and not hasattr(f, "__wrapped__")
    )
    instrumentor.instrument()
    report["repatched"] = sorted(m for m, f in current().items() if hasattr(f, "__wrapped__"))
    instrumentor.uninstrument()
    print(json.dumps(report))
    """
)


def test_patches_wait_for_their_module_and_uninstrument_restores_each() -> None:
    # A fresh interpreter: importing daphne installs Twisted's reactor for the process.
    result = processes.run(
        [sys.executable, "-c", _CHECK_PATCHES],
        timeout=60,
        check=True,
        env=child_environment(inherit=False),
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    every = sorted(
        [
            "starlette.applications",
            "fastapi.applications",
            "uvicorn.config",
            "hypercorn.app_wrappers",
            "granian.asgi",
            "granian.server.mp",
            "granian.server.mt",
            "granian.server.embed",
            "daphne.server",
        ]
    )
    assert report["imported_at_import"] == []
    assert report["imported_by_instrument"] == []
    assert report["patched"] == every
    assert report["early_kept"] is True
    assert report["restored"] == every
    assert report["repatched"] == every
