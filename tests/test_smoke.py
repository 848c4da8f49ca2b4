from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from otel_stream import StreamingMiddleware
from tests.servers import SERVERS, serve, wait_until
from tests.telemetry_harness import Telemetry


@pytest.mark.parametrize("server", SERVERS)
def test_stream_is_split_at_first_byte(telemetry: Telemetry, server: str) -> None:
    async def tokens():  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.05)
        for i in range(3):
            yield f"data: {i}\n\n"

    async def endpoint(request: Request) -> StreamingResponse:
        return StreamingResponse(tokens(), media_type="text/event-stream")

    app = StreamingMiddleware(Starlette(routes=[Route("/s", endpoint)]), **telemetry.providers)
    with serve(app, server) as url, httpx.stream("GET", url + "/s") as response:
        assert response.read() == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert wait_until(lambda: len(telemetry.spans()) == 2)
    stream = telemetry.span("GET /s stream")
    assert stream.attributes["http.stream.termination_reason"] == "completed"
    assert stream.attributes["http.stream.chunks"] == 3
