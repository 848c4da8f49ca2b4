"""The demo's relay: an OpenAI-compatible gateway between the demo's clients and the model.

A Starlette app that passes ``POST /v1/chat/completions`` on to the fake model with
``httpx.AsyncClient``, the way an LLM gateway does. A streamed answer is relayed chunk by
chunk as it arrives (``StreamingResponse`` over the upstream's ``aiter_raw``); an answer
that is not streamed is read whole and answered in one message. What the model does
comes through:

* **Status.** An upstream error status (a 400 for a malformed body) is answered with the
  same status and body.
* **Errors and cut answers.** When the upstream connection ends before its body does (a
  model that failed mid-answer, an upstream that went away), the relay's stream raises
  the upstream's error and uvicorn cuts the relay's own connection: its client sees the
  answer cut, as it would without the relay.
* **Disconnects.** When the relay's client leaves, Starlette cancels the stream and the
  relay closes the upstream response, so the model sees its client leave too.

The relay's own behaviour is set by request headers, as the model's is, and is not
passed on:

=========================  ===============================================================
``x-demo-relay-hold``      seconds the relay holds an answer's first chunk before passing it
                           on (a guardrail that checks the start of an answer): the hop
``x-demo-deadline``        the relay's timeout (:class:`~otel_stream.demo.model.
                           RequestDeadline` around the relay), not the model's
=========================  ===============================================================

Every other ``x-demo-*`` header goes to the model. The relay is instrumented like any
gateway: ``StreamingMiddleware`` around it, ``StreamingClientInstrumentor`` on its
client, so its request span learns when its upstream's first byte arrived.

Choices made on purpose:

* **The upstream response is closed by the response object**, in ``__call__``'s
  ``finally``, not only by the generator: a client that leaves before Starlette starts
  the generator (while the response headers are sent) would otherwise leave the upstream
  response open.
* **One client for the app's life** (created and closed by the lifespan), with a pool
  large enough for the demo's concurrency: a new client per request would open a new
  connection each time, and the hop would include its handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from otel_stream.demo.model import CHAT_PATH

#: Headers the relay consumes itself instead of passing them on.
RELAY_HEADERS = frozenset({"x-demo-relay-hold", "x-demo-deadline"})
#: Response headers passed back from the upstream.
PASSED_BACK = ("content-type", "cache-control")


def forwarded_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The request headers the relay sends upstream: the content type and the model's
    ``x-demo-*`` controls (never the relay's own, never the caller's trace context: the
    relay's client call starts its own span and propagates that)."""
    out: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        if lower == "content-type" or (lower.startswith("x-demo-") and lower not in RELAY_HEADERS):
            out[lower] = value
    return out


def _passed_back(response: httpx.Response) -> dict[str, str]:
    return {name: response.headers[name] for name in PASSED_BACK if name in response.headers}


def _hold(request: Request) -> float:
    try:
        hold = float(request.headers.get("x-demo-relay-hold", "0"))
    except ValueError:
        return 0.0
    return hold if 0 < hold < 3600 else 0.0


class RelayedStream(StreamingResponse):
    """The upstream's stream passed on chunk by chunk; closes the upstream response when
    the relay's response ends, however it ends."""

    def __init__(self, upstream: httpx.Response, hold: float) -> None:
        self.upstream = upstream
        super().__init__(
            self._chunks(hold), status_code=upstream.status_code, headers=_passed_back(upstream)
        )

    async def _chunks(self, hold: float) -> AsyncIterator[bytes]:
        first = True
        async for chunk in self.upstream.aiter_raw():
            if first and hold:
                await asyncio.sleep(hold)
            first = False
            yield chunk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.upstream.aclose()


class Relay:
    """The relay's endpoint, calling ``upstream`` (the model's base URL)."""

    def __init__(self, upstream: str, *, connections: int = 32) -> None:
        self.upstream = upstream.rstrip("/") + CHAT_PATH
        self.connections = connections
        self.client: httpx.AsyncClient | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(
            max_connections=self.connections, max_keepalive_connections=self.connections
        )
        async with httpx.AsyncClient(
            limits=limits, timeout=httpx.Timeout(60.0, connect=5.0)
        ) as client:
            self.client = client
            try:
                yield
            finally:
                self.client = None

    async def chat(self, request: Request) -> Response:
        client = self.client
        if client is None:
            return Response("the relay is not started", status_code=503)
        body = await request.body()
        headers = forwarded_headers(request.headers.items())
        try:
            wants_stream = bool(json.loads(body).get("stream"))
        except (ValueError, AttributeError):
            wants_stream = False  # the model answers it (400): no stream to relay
        if not wants_stream:
            answer = await client.post(self.upstream, content=body, headers=headers)
            return Response(
                answer.content, status_code=answer.status_code, headers=_passed_back(answer)
            )
        upstream = await client.send(
            client.build_request("POST", self.upstream, content=body, headers=headers),
            stream=True,
        )
        try:
            if upstream.status_code >= 400:
                content = await upstream.aread()
                await upstream.aclose()
                return Response(
                    content, status_code=upstream.status_code, headers=_passed_back(upstream)
                )
            return RelayedStream(upstream, _hold(request))
        except BaseException:
            await upstream.aclose()
            raise


def create_relay_app(upstream: str, *, connections: int = 32) -> Starlette:
    """The relay's Starlette app (not instrumented), passing requests on to ``upstream``.
    It needs its lifespan (``lifespan="on"`` under uvicorn): that is where its HTTP client
    is opened and closed."""
    relay = Relay(upstream, connections=connections)
    return Starlette(
        routes=[Route(CHAT_PATH, relay.chat, methods=["POST"])],
        lifespan=relay.lifespan,
    )
