"""Send wait and send failures on the burst path (chunks handed to the server's send as is).

A chunk sent within 50 µs of the previous one is not wrapped in a coroutine of ours: the
app awaits the server's own send. These tests check that a slow client still shows as
send wait, that the app's own pauses between bursts do not, and that an OSError raised
by such a send is still a client disconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from otel_stream import StreamingMiddleware
from tests.apps import read_body, start
from tests.rawclient import read_slowly
from tests.servers import SERVERS, serve, wait_until
from tests.telemetry_harness import Telemetry

CHUNK = b"x" * 8192
CHUNKS = 1024  # 8 MiB: more than the socket buffers between server and client can hold


async def burst_app(scope: Any, receive: Any, send: Any) -> None:
    """Raw ASGI: every chunk as fast as the server takes it."""
    await read_body(receive)
    await start(send, b"application/octet-stream")
    for _ in range(CHUNKS):
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def starlette_burst_app() -> Starlette:
    """Starlette's StreamingResponse, which sends from a task of its own."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(CHUNKS):
            yield CHUNK

    async def endpoint(request: Request) -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="application/octet-stream")

    return Starlette(routes=[Route("/burst", endpoint)])


STALL = 0.3


def stream_span(telemetry: Telemetry) -> ReadableSpan:
    assert wait_until(lambda: any(span.name.endswith(" stream") for span in telemetry.spans()))
    (span,) = [span for span in telemetry.spans() if span.name.endswith(" stream")]
    return span


@pytest.mark.parametrize("starlette", [False, True], ids=["raw-asgi", "starlette"])
@pytest.mark.parametrize("server", SERVERS)
def test_a_slow_reader_shows_as_send_wait(
    telemetry: Telemetry, server: str, starlette: bool
) -> None:
    app = starlette_burst_app() if starlette else burst_app
    with serve(StreamingMiddleware(app, **telemetry.providers), server) as url:
        received = read_slowly(url + "/burst", STALL)
    assert received > CHUNKS * len(CHUNK)
    span = stream_span(telemetry)
    attributes = span.attributes or {}
    assert attributes["http.stream.chunks"] == CHUNKS
    duration = ((span.end_time or 0) - (span.start_time or 0)) / 1e9
    # The stream spends most of its time waiting for the client to read.
    assert duration >= STALL / 2
    assert attributes["http.stream.send_wait"] >= 0.5 * duration
    (point,) = telemetry.points("http.server.stream.send_wait")
    assert point.sum == pytest.approx(attributes["http.stream.send_wait"])


PAUSE = 0.05
BURSTS = 4


async def pausing_app(scope: Any, receive: Any, send: Any) -> None:
    """Bursts of 50 chunks, the app pausing between them (a model thinking)."""
    await read_body(receive)
    await start(send)
    for _ in range(BURSTS):
        for _ in range(50):
            await send({"type": "http.response.body", "body": b"token ", "more_body": True})
        await asyncio.sleep(PAUSE)
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize("server", SERVERS)
def test_the_apps_own_pauses_are_not_send_wait(telemetry: Telemetry, server: str) -> None:
    with (
        serve(StreamingMiddleware(pausing_app, **telemetry.providers), server) as url,
        httpx.stream("GET", url + "/burst") as response,
    ):
        assert response.read() == b"token " * 50 * BURSTS
    attributes = stream_span(telemetry).attributes or {}
    assert attributes["http.stream.max_chunk_gap"] >= PAUSE
    # A fast client: the pauses are the app's, not the client's. Counting them as send
    # wait would give at least BURSTS * PAUSE (0.2 s).
    assert attributes["http.stream.send_wait"] < BURSTS * PAUSE / 2


class ClientGone(OSError):
    pass


def run_in_process(app: Any, fail_after: int) -> None:
    """Call ``app`` like a server whose send raises OSError after ``fail_after`` bodies."""
    sent = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal sent
        if message["type"] == "http.response.body":
            sent += 1
            if sent > fail_after:
                raise ClientGone("connection reset by peer")

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "scheme": "http"}
    with pytest.raises(ClientGone):
        asyncio.run(app(scope, receive, send))


def test_an_oserror_from_a_burst_send_is_a_client_disconnect(telemetry: Telemetry) -> None:
    run_in_process(StreamingMiddleware(burst_app, **telemetry.providers), fail_after=100)
    attributes = stream_span(telemetry).attributes or {}
    assert attributes["http.stream.termination_reason"] == "client_disconnect"
    assert attributes["http.stream.chunks"] == 101  # the chunk whose send failed counts


def test_the_apps_own_oserror_is_an_app_error(telemetry: Telemetry) -> None:
    async def failing_app(scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        await start(send)
        for _ in range(100):
            await send({"type": "http.response.body", "body": b"token ", "more_body": True})
        raise ClientGone("the model's connection failed")

    run_in_process(StreamingMiddleware(failing_app, **telemetry.providers), fail_after=1000)
    attributes = stream_span(telemetry).attributes or {}
    assert attributes["http.stream.termination_reason"] == "app_error"
    assert attributes["error.type"] == "ClientGone"
