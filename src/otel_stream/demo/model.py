"""A fake OpenAI-compatible model: ``POST /v1/chat/completions``, streaming or not.

The model waits a time to first token, then emits one content delta per token at a
steady pace, the way an inference server does. How each request behaves is set by
request headers, so scenario control never shows up in telemetry (headers are not
recorded unless allowlisted, and the path carries no query):

=========================  ===============================================================
``x-demo-tokens``          content tokens in the answer
``x-demo-ttft``            seconds before the first token
``x-demo-token-interval``  seconds between tokens
``x-demo-token-bytes``     pad each token's text to about this many bytes (a large answer)
``x-demo-fail-after``      raise after this many tokens: a model error mid-answer
``x-demo-truncate-after``  stop after this many tokens without ``[DONE]`` and without
                           finishing the HTTP response: an upstream that went away
``x-demo-deadline``        seconds; :class:`RequestDeadline` cancels the request then
``x-demo-request-id``      an integer naming the request in the model's stopwatch
=========================  ===============================================================

The model keeps its own stopwatch (:class:`ModelStopwatch`), apart from any telemetry:
for each request that names itself with ``x-demo-request-id``, when the endpoint was
called and when it handed its first body byte to the server. A demo behind a relay holds
the relay's upstream timings to it.

A standard ``max_tokens`` in the body caps the answer (finish reason ``length``), and
``stream_options.include_usage`` adds the usage chunk before ``data: [DONE]``.

On purpose, the model stops generating when the client disconnects, as a real
inference server aborts a request, and it paces tokens on an absolute schedule: after a
slow client held ``send`` back, the queued tokens go out as fast as the client reads.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, replace
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MODEL_NAME = "demo"
CHAT_PATH = "/v1/chat/completions"

_ANSWER = (
    "A streaming answer is two operations: the wait for the first token, which the user "
    "feels, and the emission of the body, which holds a connection, a worker and a GPU. "
    "Measure each half with buckets sized for it, and say how every stream ended."
)
_WORDS = tuple(_ANSWER.split(" "))


class DemoModelError(RuntimeError):
    """The fake model failed mid-answer (``x-demo-fail-after``)."""


@dataclass(frozen=True)
class Behaviour:
    """How the fake model answers one request."""

    tokens: int = 48
    ttft: float = 0.35
    token_interval: float = 0.025
    token_bytes: int = 0
    fail_after: int | None = None
    truncate_after: int | None = None

    def with_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> Behaviour:
        """This behaviour, overridden by the request's ``x-demo-*`` headers."""
        changes: dict[str, Any] = {}
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1").lower()
            if not name.startswith("x-demo-"):
                continue
            value = raw_value.decode("latin-1").strip()
            key = name[len("x-demo-") :].replace("-", "_")
            if key in ("tokens", "token_bytes", "fail_after", "truncate_after"):
                changes[key] = _non_negative_int(name, value)
            elif key in ("ttft", "token_interval"):
                changes[key] = _non_negative_float(name, value)
        return replace(self, **changes)


def _non_negative_int(name: str, value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"{name} must not be negative")
    return number


def _non_negative_float(name: str, value: str) -> float:
    number = float(value)
    if not 0 <= number < math.inf:
        raise ValueError(f"{name} must be a non-negative number of seconds")
    return number


def token_text(index: int, size: int) -> str:
    """The text of token ``index``, padded to about ``size`` bytes when ``size`` is set."""
    word = " " + _WORDS[index % len(_WORDS)]
    if size > len(word):
        word = word + "." * (size - len(word))
    return word


@dataclass
class Timing:
    """One request as the model's own stopwatch saw it (``perf_counter`` values)."""

    received_at: float
    first_byte_at: float | None = None


class ModelStopwatch:
    """When each named request reached the endpoint and when its first body byte left.

    Written from the server's thread, read after the run: one dict insertion and one
    attribute store per request, atomic under the GIL.
    """

    def __init__(self) -> None:
        self.timings: dict[int, Timing] = {}

    def received(self, scope: Scope) -> Timing | None:
        """Start timing the request of ``scope`` if it names itself; its timing."""
        at = time.perf_counter()
        for name, value in scope.get("headers") or ():
            if name.lower() == b"x-demo-request-id":
                try:
                    request_id = int(value)
                except ValueError:
                    return None
                timing = self.timings[request_id] = Timing(at)
                return timing
        return None


def _first_byte(timing: Timing | None) -> None:
    if timing is not None and timing.first_byte_at is None:
        timing.first_byte_at = time.perf_counter()


class ChatCompletions:
    """The ASGI endpoint of ``POST /v1/chat/completions``.

    Args:
        behaviour: The default behaviour; ``x-demo-*`` headers override it per request.
        stopwatch: Where to note when each named request arrived and sent its first byte.
    """

    def __init__(self, behaviour: Behaviour, stopwatch: ModelStopwatch | None = None) -> None:
        self.behaviour = behaviour
        self.stopwatch = stopwatch
        self.counter = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        timing = self.stopwatch.received(scope) if self.stopwatch is not None else None
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            request = json.loads(body)
            if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
                raise ValueError("the body must be a JSON object with a 'messages' list")
            behaviour = self.behaviour.with_headers(scope.get("headers") or ())
            max_tokens = request.get("max_tokens") or request.get("max_completion_tokens")
            if max_tokens is not None and not isinstance(max_tokens, int):
                raise ValueError("max_tokens must be an integer")
        except ValueError as error:
            await _send_json(send, 400, _error_body(str(error)), timing=timing)
            return
        self.counter += 1
        answer = _Answer(
            id=f"chatcmpl-demo-{self.counter}",
            model=str(request.get("model") or MODEL_NAME),
            behaviour=behaviour,
            max_tokens=max_tokens,
            prompt_tokens=_count_prompt_tokens(request["messages"]),
        )
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        if request.get("stream"):
            await answer.stream(receive, send, include_usage=include_usage, timing=timing)
        else:
            await answer.complete(send, timing)


@dataclass
class _Answer:
    id: str
    model: str
    behaviour: Behaviour
    max_tokens: int | None
    prompt_tokens: int

    def __post_init__(self) -> None:
        self.created = int(time.time())
        tokens = self.behaviour.tokens
        self.finish_reason = "stop"
        if self.max_tokens is not None and self.max_tokens < tokens:
            tokens, self.finish_reason = self.max_tokens, "length"
        self.tokens = tokens

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.tokens,
            "total_tokens": self.prompt_tokens + self.tokens,
        }

    async def complete(self, send: Send, timing: Timing | None = None) -> None:
        behaviour = self.behaviour
        await asyncio.sleep(behaviour.ttft + self.tokens * behaviour.token_interval)
        if behaviour.fail_after is not None:
            raise DemoModelError("the demo model failed before answering")
        text = "".join(token_text(i, behaviour.token_bytes) for i in range(self.tokens))
        await _send_json(
            send,
            200,
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text.lstrip()},
                        "finish_reason": self.finish_reason,
                    }
                ],
                "usage": self.usage(),
            },
            timing=timing,
        )

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    async def stream(
        self, receive: Receive, send: Send, *, include_usage: bool, timing: Timing | None = None
    ) -> None:
        behaviour = self.behaviour
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        disconnected = asyncio.Event()
        listener = asyncio.ensure_future(_listen_for_disconnect(receive, disconnected))
        try:
            if await _wait(disconnected, behaviour.ttft):
                return
            _first_byte(timing)
            await _send_body(send, self.chunk({"role": "assistant", "content": ""}))
            first_token_at = time.monotonic()
            for index in range(self.tokens):
                delay = first_token_at + index * behaviour.token_interval - time.monotonic()
                if await _wait(disconnected, delay):
                    return
                if behaviour.fail_after is not None and index >= behaviour.fail_after:
                    raise DemoModelError("the demo model failed mid-answer")
                if behaviour.truncate_after is not None and index >= behaviour.truncate_after:
                    return  # no [DONE], no final body message: the upstream went away
                text = token_text(index, behaviour.token_bytes)
                await _send_body(send, self.chunk({"content": text}))
            tail = self.chunk({}, self.finish_reason)
            if include_usage:
                usage = json.dumps(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": self.usage(),
                    },
                    separators=(",", ":"),
                )
                tail += b"data: " + usage.encode() + b"\n\n"
            await _send_body(send, tail + b"data: [DONE]\n\n")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            listener.cancel()


async def _listen_for_disconnect(receive: Receive, disconnected: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected.set()
            return


async def _wait(disconnected: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``; True at once if the client disconnects meanwhile."""
    if disconnected.is_set():
        return True
    if seconds <= 0:
        return False
    try:
        await asyncio.wait_for(disconnected.wait(), seconds)
    except asyncio.TimeoutError:
        return False
    return True


async def _send_body(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _send_json(
    send: Send, status: int, payload: dict[str, Any], *, timing: Timing | None = None
) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    _first_byte(timing)
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _error_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}


def _count_prompt_tokens(messages: list[Any]) -> int:
    words = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            words += len(content.split())
    return max(1, words)


class RequestDeadline:
    """Cancel a request that runs past its ``x-demo-deadline``, like a gateway timeout.

    It sits outside the instrumentation, so the middleware sees its request cancelled
    (termination reason ``cancelled``). When the response had started, it ends the body
    cleanly (the client gets a truncated answer); otherwise it answers 504.

    Args:
        app: The ASGI application to wrap.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        deadline = None
        if scope["type"] == "http":
            for name, value in scope.get("headers") or ():
                if name.lower() == b"x-demo-deadline":
                    try:
                        deadline = float(value)
                    except ValueError:
                        deadline = None
        if deadline is None:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracking_send), deadline)
        except asyncio.TimeoutError:
            if started:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await _send_json(send, 504, _error_body("the request ran past its deadline"))


async def _list_models(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "otel-stream"}
            ],
        }
    )


def create_app(
    behaviour: Behaviour | None = None, stopwatch: ModelStopwatch | None = None
) -> Starlette:
    """The fake model's Starlette app (not instrumented)."""
    return Starlette(
        routes=[
            Route(
                CHAT_PATH, ChatCompletions(behaviour or Behaviour(), stopwatch), methods=["POST"]
            ),
            Route("/v1/models", _list_models, methods=["GET"]),
        ]
    )
