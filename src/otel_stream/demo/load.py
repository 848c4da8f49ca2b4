"""The demo's users: real httpx clients that stream, give up, stall, and meet failures.

Each request follows a :class:`Scenario`. The fake model is told how to behave through
``x-demo-*`` headers (see :mod:`otel_stream.demo.model`); the client times what it sees
with its own clock, so the report can set the telemetry beside the clients' truth.

The wire cannot tell a model error from an upstream that went away (both cut the
connection), nor a server-side deadline from a short answer (both end cleanly without
``[DONE]``): the client names those outcomes from what it asked for, and a request whose
observation does not fit its scenario is reported as ``unexpected``.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import httpx
from opentelemetry import propagate, trace

from otel_stream import termination
from otel_stream.demo.model import CHAT_PATH

#: Kinds of request and how many of each in a deck of twenty.
MIX: dict[str, int] = {
    "completed": 9,
    "non_stream": 1,
    "give_up_waiting": 2,
    "leave_mid_answer": 2,
    "slow_reader": 2,
    "model_error": 1,
    "truncated": 1,
    "deadline": 1,
}

#: The termination reason each kind should end with, and the phase it ends in.
EXPECTED: dict[str, tuple[str, str]] = {
    "completed": (termination.COMPLETED, termination.PHASE_STREAMING),
    "non_stream": (termination.COMPLETED, termination.PHASE_STREAMING),
    "give_up_waiting": (termination.CLIENT_DISCONNECT, termination.PHASE_WAITING),
    "leave_mid_answer": (termination.CLIENT_DISCONNECT, termination.PHASE_STREAMING),
    "slow_reader": (termination.COMPLETED, termination.PHASE_STREAMING),
    "model_error": (termination.APP_ERROR, termination.PHASE_STREAMING),
    "truncated": (termination.INCOMPLETE, termination.PHASE_STREAMING),
    "deadline": (termination.CANCELLED, termination.PHASE_STREAMING),
    "long_stream": (termination.COMPLETED, termination.PHASE_STREAMING),
}

#: Behind the relay: the relay's own server cannot tell a model error from an upstream
#: that went away (both cut its upstream read, and its stream raises), so a cut answer is
#: the relay's ``app_error``; its deadline is the relay's (a gateway timeout).
EXPECTED_RELAY: dict[str, tuple[str, str]] = {
    **EXPECTED,
    "truncated": (termination.APP_ERROR, termination.PHASE_STREAMING),
}

#: Behind the relay, how each kind ends at the relay's upstream call (its HTTP client) and
#: at the model's server: the relay closes its upstream response when its client leaves
#: or its deadline cancels it (``consumer_closed``), the model then sees its client leave;
#: a model error or a cut answer ends the upstream read with ``server_disconnect``.
THROUGH_RELAY: dict[str, tuple[str, str]] = {
    "completed": (termination.COMPLETED, termination.COMPLETED),
    "non_stream": (termination.COMPLETED, termination.COMPLETED),
    "give_up_waiting": (termination.CONSUMER_CLOSED, termination.CLIENT_DISCONNECT),
    "leave_mid_answer": (termination.CONSUMER_CLOSED, termination.CLIENT_DISCONNECT),
    "slow_reader": (termination.COMPLETED, termination.COMPLETED),
    "model_error": (termination.SERVER_DISCONNECT, termination.APP_ERROR),
    "truncated": (termination.SERVER_DISCONNECT, termination.INCOMPLETE),
    "deadline": (termination.CONSUMER_CLOSED, termination.CLIENT_DISCONNECT),
    "long_stream": (termination.COMPLETED, termination.COMPLETED),
}

UNEXPECTED = "unexpected"

#: Socket receive buffer of a slow reader, so its stall is felt after kilobytes.
SLOW_READER_RCVBUF = 32 * 1024


@dataclass(frozen=True)
class Pace:
    """The fake model's median timing: time to first token, token interval, tokens."""

    ttft: float = 0.35
    token_interval: float = 0.025
    tokens: int = 48


@dataclass(frozen=True)
class Scenario:
    """One request: what to ask the model for, and what the client does."""

    kind: str
    headers: dict[str, str]
    stream: bool = True
    leave_after: float | None = None  # give up this long after sending, if no byte came
    leave_after_tokens: int | None = None  # leave after receiving this many tokens
    stall_at: float | None = None  # stop reading this long after the first byte...
    stall_for: float = 0.0  # ...for this long

    @property
    def slow(self) -> bool:
        return self.stall_at is not None


@dataclass
class ClientResult:
    """What one client saw, timed from just before it sent its request (seconds).

    ``sent_at`` is that moment on the ``perf_counter`` clock, which the fake model's
    stopwatch reads too (same process): the relay's rows compare the two."""

    kind: str
    observation: str = ""  # done, left, cut, broken, http_error, failed
    status: int | None = None
    streamed: bool = True
    first_byte: float | None = None
    first_token: float | None = None
    end: float | None = None
    error: str | None = None
    request_id: int | None = None
    sent_at: float = 0.0
    relayed: bool = False  # sent through the demo's relay

    @property
    def reason(self) -> str:
        expected = (EXPECTED_RELAY if self.relayed else EXPECTED)[self.kind][0]
        fits = {
            "done": termination.COMPLETED,
            "left": termination.CLIENT_DISCONNECT,
            "broken": expected
            if expected in (termination.APP_ERROR, termination.INCOMPLETE)
            else None,
            "cut": expected if expected == termination.CANCELLED else None,
        }.get(self.observation)
        return fits if fits is not None else UNEXPECTED

    @property
    def phase(self) -> str:
        if self.first_byte is None:
            return termination.PHASE_WAITING
        return termination.PHASE_STREAMING

    @property
    def duration(self) -> float | None:
        """First byte to the end, for streaming responses (the stream span's length)."""
        if not self.streamed or self.first_byte is None or self.end is None:
            return None
        return self.end - self.first_byte


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


def scenarios(rng: random.Random, pace: Pace, relay_hold: float = 0.0) -> Iterator[Scenario]:
    """An endless, shuffled mix: first one of each kind, then decks of :data:`MIX`."""
    kinds = list(MIX)
    rng.shuffle(kinds)
    yield from (make_scenario(kind, rng, pace, relay_hold) for kind in kinds)
    while True:
        deck = [kind for kind, count in MIX.items() for _ in range(count)]
        rng.shuffle(deck)
        yield from (make_scenario(kind, rng, pace, relay_hold) for kind in deck)


def make_scenario(kind: str, rng: random.Random, pace: Pace, relay_hold: float = 0.0) -> Scenario:
    """A request of ``kind`` with timing drawn around ``pace``; with ``relay_hold``, the
    relay holds its first chunk for a time drawn around that median."""
    interval = pace.token_interval
    ttft = min(_lognormal(rng, pace.ttft, 0.5), pace.ttft * 6)
    tokens = max(8, round(_lognormal(rng, pace.tokens, 0.5)))
    headers = {
        "x-demo-ttft": f"{ttft:.4f}",
        "x-demo-tokens": str(tokens),
        "x-demo-token-interval": f"{interval:.4f}",
    }
    hold = 0.0
    if relay_hold > 0:
        hold = min(_lognormal(rng, relay_hold, 0.5), relay_hold * 4)
        headers["x-demo-relay-hold"] = f"{hold:.4f}"
    if kind == "non_stream":
        return Scenario(kind, headers, stream=False)
    if kind == "give_up_waiting":
        # The model is slow to start; the user gives up well before the first token.
        headers["x-demo-ttft"] = f"{max(2.0, 4 * pace.ttft):.4f}"
        return Scenario(kind, headers, leave_after=rng.uniform(0.3, 1.2) * max(0.5, pace.ttft))
    if kind == "leave_mid_answer":
        # Leave early enough that the answer is far from its end when the server notices.
        tokens = max(tokens, 40)
        headers["x-demo-tokens"] = str(tokens)
        leave = max(2, round(tokens * rng.uniform(0.2, 0.5)))
        return Scenario(kind, headers, leave_after_tokens=leave)
    if kind == "slow_reader":
        # A large answer (about 600 kB) and a client that stops reading for a while.
        headers.update(
            {"x-demo-tokens": "300", "x-demo-token-bytes": "2000", "x-demo-token-interval": "0.003"}
        )
        return Scenario(kind, headers, stall_at=0.1, stall_for=rng.uniform(0.4, 0.7))
    if kind == "model_error":
        headers["x-demo-fail-after"] = str(max(1, round(tokens * rng.uniform(0.3, 0.7))))
        return Scenario(kind, headers)
    if kind == "truncated":
        headers["x-demo-truncate-after"] = str(max(1, tokens // 2))
        return Scenario(kind, headers)
    if kind == "deadline":
        # Well after the first token, well before the last.
        tokens = max(tokens, 40)
        headers["x-demo-tokens"] = str(tokens)
        deadline = ttft + hold + interval * tokens * rng.uniform(0.3, 0.6)
        headers["x-demo-deadline"] = f"{deadline:.4f}"
        return Scenario(kind, headers)
    return Scenario(kind, headers)


def long_stream(pace: Pace, seconds: float, trace_id: int | None = None) -> Scenario:
    """One answer that streams for about ``seconds``; with ``trace_id``, its request
    carries that trace's context, so its server spans can be found."""
    tokens = max(pace.tokens, round(seconds / pace.token_interval))
    headers = {
        "x-demo-ttft": f"{pace.ttft:.4f}",
        "x-demo-tokens": str(tokens),
        "x-demo-token-interval": f"{pace.token_interval:.4f}",
    }
    if trace_id is not None:
        headers.update(trace_headers(trace_id))
    return Scenario("long_stream", headers)


def trace_headers(trace_id: int) -> dict[str, str]:
    """Headers that make a request part of trace ``trace_id`` (sampled), written by the
    global propagator (``traceparent`` unless ``OTEL_PROPAGATORS`` says otherwise)."""
    parent = trace.SpanContext(
        trace_id,
        trace_id & 0xFFFF_FFFF_FFFF_FFFF or 1,
        is_remote=False,
        trace_flags=trace.TraceFlags(1),
    )
    headers: dict[str, str] = {}
    propagate.inject(headers, context=trace.set_span_in_context(trace.NonRecordingSpan(parent)))
    return headers


def request_body(stream: bool) -> dict[str, object]:
    body: dict[str, object] = {
        "model": "demo",
        "messages": [{"role": "user", "content": "Why do streams need their own telemetry?"}],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


class _Events:
    """Splits an SSE body into events as bytes arrive; counts tokens and ``[DONE]``."""

    def __init__(self) -> None:
        self.buffer = b""
        self.tokens = 0
        self.done = False

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        while b"\n\n" in self.buffer:
            event, self.buffer = self.buffer.split(b"\n\n", 1)
            for line in event.splitlines():
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    self.done = True
                    continue
                try:
                    payload = json.loads(data)
                    choices = payload.get("choices") or []
                    if any((c.get("delta") or {}).get("content") for c in choices):
                        self.tokens += 1
                except (ValueError, AttributeError):
                    continue


async def run_one(
    client: httpx.AsyncClient,
    base_url: str,
    scenario: Scenario,
    timeout: float,
    *,
    request_id: int | None = None,
    relayed: bool = False,
) -> ClientResult:
    """Send one request, behave as ``scenario`` says, and time what arrives. With
    ``request_id`` the request names itself to the model's stopwatch."""
    result = ClientResult(
        scenario.kind, streamed=scenario.stream, request_id=request_id, relayed=relayed
    )
    if request_id is not None:
        headers = {**scenario.headers, "x-demo-request-id": str(request_id)}
        scenario = replace(scenario, headers=headers)
    started = result.sent_at = time.perf_counter()

    def now() -> float:
        return time.perf_counter() - started

    try:
        await asyncio.wait_for(_exchange(client, base_url, scenario, result, now), timeout)
    except (httpx.RemoteProtocolError, httpx.ReadError) as error:
        result.end = now()
        result.observation = "broken"
        result.error = type(error).__name__
    except asyncio.TimeoutError:
        result.end = now()
        result.observation = "failed"
        result.error = f"no end after {timeout:g} s"
    except (httpx.HTTPError, OSError) as error:
        result.end = now()
        result.observation = "failed"
        result.error = f"{type(error).__name__}: {error}"
    return result


async def _exchange(
    client: httpx.AsyncClient,
    base_url: str,
    scenario: Scenario,
    result: ClientResult,
    now: Callable[[], float],
) -> None:
    async with client.stream(
        "POST", base_url + CHAT_PATH, json=request_body(scenario.stream), headers=scenario.headers
    ) as response:
        result.status = response.status_code
        if response.status_code >= 400:
            await response.aread()
            result.end = now()
            result.observation = "http_error"
            return
        await _read(response, scenario, result, now)


async def _read(
    response: httpx.Response,
    scenario: Scenario,
    result: ClientResult,
    now: Callable[[], float],
) -> None:
    events = _Events()
    chunks = response.aiter_raw()
    stalled = False
    while True:
        try:
            if scenario.leave_after is not None and result.first_byte is None:
                remaining = scenario.leave_after - now()
                chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, remaining))
            else:
                chunk = await chunks.__anext__()
        except asyncio.TimeoutError:
            result.end = now()
            result.observation = "left"
            return
        except StopAsyncIteration:
            break
        at = now()
        if result.first_byte is None:
            result.first_byte = at
        if not scenario.stream:
            continue
        before = events.tokens
        events.feed(chunk)
        if result.first_token is None and events.tokens:
            result.first_token = at
        if (
            scenario.leave_after_tokens is not None
            and not events.done
            and events.tokens >= scenario.leave_after_tokens > before
        ):
            result.end = at
            result.observation = "left"
            return
        stall_at = scenario.stall_at
        if stall_at is not None and not stalled and at - result.first_byte >= stall_at:
            stalled = True
            await asyncio.sleep(scenario.stall_for)
    result.end = now()
    if not scenario.stream:
        result.observation = "done"
    else:
        result.observation = "done" if events.done else "cut"


def client_for(concurrency: int, *, slow: bool = False) -> httpx.AsyncClient:
    """An httpx client with room for ``concurrency`` connections; ``slow`` shrinks its
    receive buffer so a stalled read holds the server back within a few hundred kB."""
    options = [(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_READER_RCVBUF)] if slow else []
    transport = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency),
        socket_options=options,
    )
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(30.0))


@dataclass
class LoadPlan:
    """How much load to drive."""

    seconds: float = 20.0
    concurrency: int = 16
    requests: int | None = None
    long_stream_seconds: float = 10.0
    seed: int | None = None
    pace: Pace = field(default_factory=Pace)
    #: Drive the load through the demo's relay.
    relay: bool = False
    #: Median time the relay holds each answer's first chunk (s); 0: it does not.
    relay_hold: float = 0.1
