"""Upstreams and relays on loopback for the client tests.

* The upstream: the demo's fake OpenAI model (``/v1/chat/completions``, behaviour set
  by ``x-demo-*`` headers) plus a fake Anthropic ``/v1/messages`` SSE endpoint, an
  echo of the trace headers it received, a stream that hangs up mid-body, and the
  model again under ``/held`` with the end of its body held back until its client
  leaves.
* The relays: Starlette apps that call the upstream and pass its stream on, one with
  the ``openai`` SDK, one with ``httpx.AsyncClient``, one with ``aiohttp``; each
  wrapped in ``StreamingMiddleware`` when telemetry is given, for the hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from otel_stream.demo.model import Behaviour, create_app

ANTHROPIC_MODEL = "claude-demo"
ANTHROPIC_WORDS = ("Streams", " are", " two", " operations.")

#: Trace headers the echo endpoint saw, newest last.
seen_trace_headers: list[dict[str, str]] = []


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def anthropic_messages(request: Request) -> Response:
    """A fake Anthropic Messages API: streamed (``stream: true``) or one JSON answer."""
    body = await request.json()
    ttft = float(request.headers.get("x-demo-ttft", "0.05"))
    text = "".join(ANTHROPIC_WORDS)
    usage = {"input_tokens": 7, "output_tokens": len(ANTHROPIC_WORDS)}
    if not body.get("stream"):
        await asyncio.sleep(ttft)
        return JSONResponse(
            {
                "id": "msg_demo",
                "type": "message",
                "role": "assistant",
                "model": ANTHROPIC_MODEL,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": usage,
            }
        )

    async def events() -> AsyncIterator[bytes]:
        await asyncio.sleep(ttft)
        message = {
            "id": "msg_demo",
            "type": "message",
            "role": "assistant",
            "model": ANTHROPIC_MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 7, "output_tokens": 1},
        }
        yield _sse("message_start", {"type": "message_start", "message": message})
        block = {"type": "text", "text": ""}
        yield _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        for word in ANTHROPIC_WORDS:
            await asyncio.sleep(0.005)
            delta = {"type": "text_delta", "text": word}
            yield _sse(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(ANTHROPIC_WORDS)},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})

    return StreamingResponse(events(), media_type="text/event-stream")


async def echo_trace_headers(request: Request) -> Response:
    """Record the trace headers of the request, answer a short stream."""
    seen_trace_headers.append(
        {name: value for name, value in request.headers.items() if name in ("traceparent",)}
    )

    async def body() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        yield b"data: two\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


async def without_done(request: Request) -> Response:
    """An OpenAI-style stream that ends cleanly without ``data: [DONE]``: truncated."""
    chunk = {
        "id": "chatcmpl-cut",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "demo",
        "choices": [{"index": 0, "delta": {"content": "Half an"}, "finish_reason": None}],
    }

    async def events() -> AsyncIterator[bytes]:
        yield f"data: {json.dumps(chunk)}\n\n".encode()

    return StreamingResponse(events(), media_type="text/event-stream")


async def ollama_chat(request: Request) -> Response:
    """An Ollama-style NDJSON chat stream ending with ``"done": true``."""

    async def lines() -> AsyncIterator[bytes]:
        for word in ANTHROPIC_WORDS:
            line = {"model": "llama-demo", "message": {"role": "assistant", "content": word}}
            yield (json.dumps({**line, "done": False}) + "\n").encode()
        end = {"model": "llama-demo", "done": True, "done_reason": "stop", "eval_count": 4}
        yield (json.dumps({**end, "prompt_eval_count": 3}) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def pinged(request: Request) -> Response:
    """SSE with a comment (``: ping``) while the model thinks, then the answer."""

    async def events() -> AsyncIterator[bytes]:
        yield b": ping\n\n"
        await asyncio.sleep(0.1)
        yield b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def plain_chunks(request: Request) -> Response:
    """A chunked ``text/plain`` body without a length: a stream by its framing alone."""

    async def chunks() -> AsyncIterator[bytes]:
        for index in range(3):
            await asyncio.sleep(0.005)
            yield f"line {index}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


#: The longest :class:`EndHeldBack` holds a body's end when its client never leaves.
HOLD_LIMIT = 5.0


class EndHeldBack:
    """An ASGI app whose responses' final body message waits until the client has left
    (or :data:`HOLD_LIMIT` passed): every byte of the body, ``data: [DONE]`` included,
    goes out, but the end of the HTTP body (chunked encoding's last chunk) comes only
    after the client has gone. A client that stops reading at the end marker has then
    certainly not read the end of the body yet.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        left = asyncio.Event()

        async def watched_receive() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect":
                left.set()
            return message

        async def holding_send(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                if message.get("body"):
                    await send({**message, "more_body": True})
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(left.wait(), HOLD_LIMIT)
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(scope, watched_receive, holding_send)


def upstream_app(behaviour: Behaviour | None = None) -> Starlette:
    """The fake model with the extra endpoints of this module."""
    behaviour = behaviour or Behaviour(tokens=6, ttft=0.05, token_interval=0.005)
    app = create_app(behaviour)
    app.router.routes.append(Route("/v1/messages", anthropic_messages, methods=["POST"]))
    app.router.routes.append(Route("/echo", echo_trace_headers, methods=["GET", "POST"]))
    app.router.routes.append(Route("/without-done", without_done, methods=["POST"]))
    app.router.routes.append(Route("/api/chat", ollama_chat, methods=["POST"]))
    app.router.routes.append(Route("/plain", plain_chunks, methods=["GET"]))
    app.router.routes.append(Route("/pinged", pinged, methods=["GET"]))
    app.router.routes.append(Mount("/held", app=EndHeldBack(create_app(behaviour))))
    return app


# The relays -------------------------------------------------------------------------

CHAT_BODY: dict[str, Any] = {
    "model": "demo",
    "stream": True,
    "stream_options": {"include_usage": True},
    "messages": [{"role": "user", "content": "hello"}],
}


def _forwarded(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.startswith("x-demo-")}


def _model(upstream: str, request: Request) -> str:
    """The upstream model's base URL: ``upstream``, or under the path prefix the
    caller names in ``x-relay-upstream-prefix`` (``/held``)."""
    return upstream + request.headers.get("x-relay-upstream-prefix", "")


def _httpx_relayed(response: Any, client: Any, delay: float | None = None) -> StreamingResponse:
    """A relay's answer: the upstream httpx stream passed on as it arrives (its first
    chunk held back ``delay`` seconds, when given), then the response and client closed."""

    async def body() -> AsyncIterator[bytes]:
        try:
            first = True
            async for chunk in response.aiter_raw():
                if first and delay is not None:
                    await asyncio.sleep(delay)
                first = False
                yield chunk
        finally:
            await response.aclose()
            await client.aclose()

    return StreamingResponse(body(), media_type="text/event-stream")


def relay_app(upstream: str) -> Starlette:
    """An OpenAI-compatible gateway that passes an upstream stream on, three ways:
    ``/openai/v1``, ``/httpx/v1`` and ``/aiohttp/v1`` are its base URLs; ``/twice/v1``
    makes a JSON call before the stream and can hold the stream back; ``/anthropic``
    passes the Anthropic Messages API through. A caller's ``x-relay-upstream-prefix``
    header picks the upstream model under that prefix (``/held``)."""

    async def with_openai(request: Request) -> Response:
        import openai

        client = openai.AsyncOpenAI(
            base_url=_model(upstream, request) + "/v1", api_key="test", max_retries=0
        )
        stream = await client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=_forwarded(request),
        )

        async def events() -> AsyncIterator[bytes]:
            async with stream:
                async for chunk in stream:
                    yield f"data: {chunk.model_dump_json()}\n\n".encode()
            yield b"data: [DONE]\n\n"
            await client.close()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def with_httpx(request: Request) -> Response:
        import httpx

        client = httpx.AsyncClient()
        upstream_request = client.build_request(
            "POST",
            _model(upstream, request) + "/v1/chat/completions",
            json=CHAT_BODY,
            headers=_forwarded(request),
        )
        response = await client.send(upstream_request, stream=True)

        return _httpx_relayed(response, client)

    async def with_aiohttp(request: Request) -> Response:
        import aiohttp

        session = aiohttp.ClientSession()
        response = await session.post(
            _model(upstream, request) + "/v1/chat/completions",
            json=CHAT_BODY,
            headers=_forwarded(request),
        )

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.content.iter_any():
                    yield chunk
            finally:
                response.release()
                await session.close()

        return StreamingResponse(body(), media_type="text/event-stream")

    async def look_up_then_relay(request: Request) -> Response:
        """A JSON call first (not a stream: it does not count for the hop), then the
        stream, held back ``x-relay-delay`` seconds before its first chunk goes on."""
        import httpx

        delay = float(request.headers.get("x-relay-delay", "0"))
        client = httpx.AsyncClient()
        (await client.get(upstream + "/v1/models")).raise_for_status()
        upstream_request = client.build_request(
            "POST", upstream + "/v1/chat/completions", json=CHAT_BODY, headers=_forwarded(request)
        )
        response = await client.send(upstream_request, stream=True)

        return _httpx_relayed(response, client, delay)

    async def anthropic_pass_through(request: Request) -> Response:
        """The Messages API passed through byte for byte with ``httpx.AsyncClient``."""
        import httpx

        client = httpx.AsyncClient()
        upstream_request = client.build_request(
            "POST",
            upstream + "/v1/messages",
            content=await request.body(),
            headers={"content-type": "application/json", **_forwarded(request)},
        )
        response = await client.send(upstream_request, stream=True)

        return _httpx_relayed(response, client)

    return Starlette(
        routes=[
            Route("/anthropic/v1/messages", anthropic_pass_through, methods=["POST"]),
            Route("/twice/v1/chat/completions", look_up_then_relay, methods=["POST"]),
            Route("/openai/v1/chat/completions", with_openai, methods=["POST"]),
            Route("/httpx/v1/chat/completions", with_httpx, methods=["POST"]),
            Route("/aiohttp/v1/chat/completions", with_aiohttp, methods=["POST"]),
        ]
    )
