"""The hops inside the Python process: ASGI servers and Starlette's GZipMiddleware.

Each app runs on a real server on loopback; ``otel-stream probe`` runs as a subprocess,
as a user runs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from otel_stream import StreamingMiddleware
from otel_stream.demo.model import Behaviour, create_app
from tests.cli_support import run_cli
from tests.servers import SERVERS, serve
from tests.telemetry_harness import Telemetry


async def _events(line: str, separator: str) -> AsyncIterator[str]:
    for index in range(25):
        await asyncio.sleep(0.02)
        yield f"{line}{index}" + "x" * 200 + separator  # larger than GZip's minimum_size


async def sse(request: Request) -> StreamingResponse:
    return StreamingResponse(_events('data: {"n": ', "}\n\n"), media_type="text/event-stream")


async def ndjson(request: Request) -> StreamingResponse:
    return StreamingResponse(_events('{"n": ', "}\n"), media_type="application/x-ndjson")


GZIPPED = Starlette(
    routes=[Route("/sse", sse), Route("/ndjson", ndjson)],
    middleware=[Middleware(GZipMiddleware, minimum_size=100)],
)


def probe(url: str) -> tuple[int, list[str]]:
    result = run_cli("probe", url, "--timeout", "20")
    return result.returncode, result.stdout.strip().splitlines()


def test_starlette_gzip_leaves_event_streams_alone() -> None:
    with serve(GZIPPED) as url:
        code, lines = probe(url + "/sse")
    assert lines[-1].startswith("streams: "), lines
    assert code == 0
    assert "  content-encoding: (none)" in lines  # text/event-stream is excluded


def test_starlette_gzip_compresses_ndjson_but_flushes_every_chunk() -> None:
    with serve(GZIPPED) as url:
        code, lines = probe(url + "/ndjson")
    assert lines[-1].startswith("streams: "), lines
    assert code == 0
    assert "  content-encoding: gzip" in lines
    assert "  a read that completed events completed 1 of them (median)" in lines


@pytest.mark.parametrize("server", SERVERS)
def test_asgi_servers_pass_each_chunk_on(server: str, telemetry: Telemetry) -> None:
    app = StreamingMiddleware(
        create_app(Behaviour(tokens=30, ttft=0.1, token_interval=0.02)), **telemetry.providers
    )
    with serve(app, server) as url:
        code, lines = probe(url + "/v1/chat/completions")
    assert lines[-1].startswith("streams: "), lines
    assert code == 0
    assert "  a read that completed events completed 1 of them (median)" in lines
