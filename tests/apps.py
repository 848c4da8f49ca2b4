"""Small ASGI apps whose streaming behaviour the core tests provoke on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

Scope = dict[str, Any]


def token_stream(
    *, first_after: float = 0.0, count: int = 3, pace: float = 0.0, fail_after: int | None = None
) -> AsyncIterator[bytes]:
    async def tokens() -> AsyncIterator[bytes]:
        await asyncio.sleep(first_after)
        for index in range(count):
            if fail_after is not None and index == fail_after:
                raise ValueError("model failed mid-stream")
            yield f"data: {index}\n\n".encode()
            if pace:
                await asyncio.sleep(pace)

    return tokens()


def starlette_app(**stream: Any) -> Starlette:
    """``/stream/{id}`` streams SSE tokens as ``stream`` says; ``/plain`` answers at once."""

    async def streaming(request: Request) -> StreamingResponse:
        return StreamingResponse(token_stream(**stream), media_type="text/event-stream")

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain answer")

    return Starlette(routes=[Route("/stream/{id}", streaming), Route("/plain", plain)])


async def read_body(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def start(send: Any, content_type: bytes = b"text/plain") -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]}
    )


def scope_for(path: str, **overrides: Any) -> Scope:
    """An HTTP scope for calling an ASGI app in-process, as a server would build it."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    scope.update(overrides)
    return scope
