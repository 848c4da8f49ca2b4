"""Chaos: whatever the app and the client do, the books balance.

In-process, with hypothesis: generated apps send any sequence of messages (protocol
violations included: body before start, two starts, body after the end, nothing at all),
read ``receive``, pause, raise or get cancelled at any point, while the client leaves at
any point; the fake server below enforces the protocol as uvicorn does (a violation
raises in ``send``) and, after the client left, either drops sends silently (uvicorn) or
raises ``OSError`` (a closed socket). For every example: each started span ends exactly
once, the active counter returns to zero, the request is counted once with the right
reason, the server got exactly the messages the app sent, and no task is left behind.

On real servers: hundreds of concurrent streams on uvicorn and hypercorn, a third
completed, a third dropped by raw sockets closed mid-stream, a third failing in the app;
every count is checked exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from otel_stream import StreamingMiddleware
from tests.apps import scope_for
from tests.servers import SERVERS, serve, wait_until
from tests.telemetry_harness import Telemetry

Message = dict[str, Any]
REASON = "http.stream.termination_reason"

EXAMPLES = int(os.environ.get("CHAOS_EXAMPLES", "300"))


class Boom(Exception):
    pass


class CountingProcessor(SpanProcessor):
    """Counts ``on_start`` and ``on_end`` per span id."""

    def __init__(self) -> None:
        self.started: dict[int, int] = {}
        self.ended: dict[int, int] = {}

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        span_id = span.get_span_context().span_id
        self.started[span_id] = self.started.get(span_id, 0) + 1

    def on_end(self, span: ReadableSpan) -> None:
        span_id = span.get_span_context().span_id  # type: ignore[union-attr]
        self.ended[span_id] = self.ended.get(span_id, 0) + 1


class EndedTwice(logging.Handler):
    """Catches the SDK's warning about ``end()`` on a span that already ended (and, kept
    apart, its warnings about attributes set on an ended span)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.late_attributes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "end() on an ended span" in message:
            self.messages.append(message)
        elif "on ended span" in message:
            self.late_attributes.append(message)


@dataclass
class FakeServer:
    """An HTTP/1.1 connection as the app sees it through ``receive`` and ``send``."""

    raise_after_disconnect: bool
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    request_read: bool = False
    started: bool = False
    complete: bool = False
    calls: list[Message] = field(default_factory=list)  # every message given to send
    delivered: bytearray = field(default_factory=bytearray)  # what reached the client

    left_before_complete: bool = False
    lenient: bool = False  # let protocol violations pass

    def client_leaves(self) -> None:
        if not self.gone.is_set() and not self.complete:
            self.left_before_complete = True
        self.gone.set()

    async def receive(self) -> Message:
        if not self.request_read:
            self.request_read = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.calls.append(message)
        gone = self.gone.is_set()
        await asyncio.sleep(0)  # a real send pauses now and then (the client may leave)
        if gone:
            if self.raise_after_disconnect:
                raise OSError("connection closed by the client")
            return
        kind = message["type"]
        if self.lenient:
            return
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("Unexpected ASGI message 'http.response.start' sent twice")
            self.started = True
        elif kind == "http.response.body":
            if not self.started or self.complete:
                raise RuntimeError("Unexpected ASGI message 'http.response.body'")
            self.delivered += message.get("body", b"")
            if not message.get("more_body", False):
                self.complete = True
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r}")


# The app's script -----------------------------------------------------------------

ACTIONS = st.one_of(
    st.just(("start",)),
    st.tuples(st.just("body"), st.integers(0, 3), st.booleans()),
    st.just(("receive",)),
    st.just(("pause",)),
    st.just(("sleep",)),
    st.just(("leave",)),
    st.just(("raise",)),
    st.just(("cancel",)),
)


@dataclass
class Run:
    """What the app did, as the app saw it."""

    sent: list[Message] = field(default_factory=list)
    #: the bodies of the sends made while the client was there
    accepted_bytes: bytearray = field(default_factory=bytearray)
    ended_by: str = "return"  # return, raise, cancel, violation or send_failed
    request_read_at_return: bool = False
    final_sent_after_leaving: bool = False  # dropped silently, as uvicorn does


def make_app(script: list[tuple[Any, ...]], server: FakeServer, run: Run, sse: bool) -> Any:
    content_type = b"text/event-stream" if sse else b"text/plain"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for action in script:
            kind = action[0]
            if kind == "start":
                message: Message = {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", content_type)],
                }
            elif kind == "body":
                body = b"data: x\n\n" * action[1] if sse else b"y" * (7 * action[1])
                message = {"type": "http.response.body", "body": body, "more_body": action[2]}
            elif kind == "receive":
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(receive(), 0.002)
                continue
            elif kind == "pause":
                await asyncio.sleep(0)
                continue
            elif kind == "sleep":
                await asyncio.sleep(0.001)
                continue
            elif kind == "leave":
                server.client_leaves()
                continue
            elif kind == "raise":
                run.ended_by = "raise"
                raise Boom("the app failed")
            else:  # cancel: the task is cancelled at its next pause
                run.ended_by = "cancel"
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
                await asyncio.sleep(0)
                raise AssertionError("not cancelled")
            run.sent.append(message)
            gone = server.gone.is_set()
            try:
                await send(message)
            except OSError:
                run.ended_by = "send_failed"
                raise
            except RuntimeError:
                run.ended_by = "violation"
                raise
            if message["type"] == "http.response.body":
                if not gone:
                    run.accepted_bytes += message.get("body", b"")
                elif not message.get("more_body", False):
                    run.final_sent_after_leaving = True
        run.ended_by = "return"
        run.request_read_at_return = server.request_read

    return app


def expected_reasons(run: Run, server: FakeServer) -> set[str]:
    """The termination reasons the contract allows for what happened."""
    error_reason = {"raise": "app_error", "violation": "app_error", "cancel": "cancelled"}
    if run.ended_by == "send_failed":
        return {"client_disconnect"}
    if not server.left_before_complete:
        if run.ended_by in error_reason:
            return {error_reason[run.ended_by]}
        return {"completed" if server.complete else "incomplete"}
    if run.ended_by == "return":
        if run.final_sent_after_leaving:
            # uvicorn's send returns silently after a disconnect: unless the middleware's
            # watcher saw the disconnect first, the app's final message looks delivered.
            return {"client_disconnect", "completed"}
        if not run.request_read_at_return:
            # The one receive the middleware polls at the end returns the unread request,
            # not the disconnect behind it: see docs/reliability.md.
            return {"client_disconnect", "incomplete"}
        return {"client_disconnect"}
    # The app failed after the client left: a disconnect counts only if it was seen first.
    return {"client_disconnect", error_reason[run.ended_by]}


def late_start(sent: list[Message]) -> bool:
    """A start after the first message: a second start, or a start after a body."""
    return any(m["type"] == "http.response.start" for m in sent[1:])


SCOPE = scope_for(
    "/chaos",
    asgi={"version": "3.0", "spec_version": "2.4"},
    headers=[(b"host", b"test"), (b"user-agent", b"chaos")],
)


async def exchange(
    middleware: StreamingMiddleware, server: FakeServer, leave_after: int | None
) -> None:
    """Run one request; the client may also leave after ``leave_after`` loop turns."""
    task = asyncio.create_task(middleware(dict(SCOPE), server.receive, server.send))

    async def leave_later(turns: int) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)
        server.client_leaves()

    leaver = asyncio.create_task(leave_later(leave_after)) if leave_after is not None else None
    with contextlib.suppress(Boom, RuntimeError, OSError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), 5)
    assert task.done(), "the exchange hung"
    if leaver is not None:
        leaver.cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    left_over = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert left_over == [], f"tasks left behind: {left_over}"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    script=st.lists(ACTIONS, max_size=9),
    read_request_first=st.booleans(),
    sse=st.booleans(),
    raise_after_disconnect=st.booleans(),
    cancel_on_disconnect=st.booleans(),
    leave_after=st.none() | st.integers(0, 12),
)
def test_generated_apps_and_clients_keep_the_books_balanced(
    script: list[tuple[Any, ...]],
    read_request_first: bool,
    sse: bool,
    raise_after_disconnect: bool,
    cancel_on_disconnect: bool,
    leave_after: int | None,
) -> None:
    if read_request_first:
        script = [("receive",), *script]
    telemetry = Telemetry()
    counting = CountingProcessor()
    telemetry.tracer_provider.add_span_processor(counting)
    twice = EndedTwice()
    sdk_logger = logging.getLogger("opentelemetry.sdk.trace")
    sdk_logger.addHandler(twice)
    try:
        server = FakeServer(raise_after_disconnect)
        run = Run()
        middleware = StreamingMiddleware(
            make_app(script, server, run, sse),
            cancel_on_disconnect=cancel_on_disconnect,
            **telemetry.providers,
        )
        asyncio.run(exchange(middleware, server, leave_after))

        # Every started span ended, exactly once.
        assert counting.started, "no span started"
        assert counting.ended == counting.started
        assert set(counting.started.values()) == {1}
        assert twice.messages == []
        if not late_start(run.sent):  # known: test_a_late_start_sets_nothing_on_an_ended_span
            assert twice.late_attributes == []
        # The active counter is back to zero for every attribute set.
        assert all(p.value == 0 for p in telemetry.points("http.server.stream.active"))
        # Counted once, with the right reason.
        counts = telemetry.counts(
            "http.server.stream.terminations", "http.stream.termination_reason"
        )
        assert sum(counts.values()) == 1
        ((reason,),) = counts
        assert reason in expected_reasons(run, server), (reason, run)
        # The server got exactly what the app sent; the client got every accepted byte.
        assert [(m["type"], m.get("body")) for m in server.calls] == [
            (m["type"], m.get("body")) for m in run.sent
        ]
        assert bytes(server.delivered) == bytes(run.accepted_bytes)
        stream_spans = [s for s in telemetry.spans() if s.name.endswith(" stream")]
        if reason == "completed" and stream_spans and not server.left_before_complete:
            (span,) = stream_spans
            assert (span.attributes or {})["http.stream.bytes"] == len(server.delivered)
    finally:
        sdk_logger.removeHandler(twice)
        telemetry.shutdown()


@pytest.mark.parametrize(
    "script",
    [[("start",), ("body", 1, True), ("start",)], [("body", 1, True), ("start",)]],
    ids=["second start", "start after a body"],
)
def test_a_late_start_sets_nothing_on_an_ended_span(script: list[tuple[Any, ...]]) -> None:
    telemetry = Telemetry()
    handler = EndedTwice()
    sdk_logger = logging.getLogger("opentelemetry.sdk.trace")
    sdk_logger.addHandler(handler)
    try:
        server = FakeServer(raise_after_disconnect=False)
        server.lenient = True  # as a server that does not check the order of messages
        middleware = StreamingMiddleware(
            make_app(script, server, Run(), sse=False), **telemetry.providers
        )
        asyncio.run(exchange(middleware, server, None))
    finally:
        sdk_logger.removeHandler(handler)
        telemetry.shutdown()
    assert handler.late_attributes == []


# Real servers -----------------------------------------------------------------------

STREAMS_PER_KIND = 100
CHUNKS = 5
CHUNK = b"data: token\n\n"


async def mixed_app(scope: Any, receive: Any, send: Any) -> None:
    """``/complete``: 5 chunks; ``/fail``: 2 chunks, then raises; ``/drop``: chunks until
    the client leaves (at most 5 s), pacing itself on ``receive``."""
    if scope["type"] != "http":
        return
    await receive()
    path = scope["path"]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    limit = 500 if path == "/drop" else CHUNKS
    for index in range(limit):
        if path == "/fail" and index == 2:
            raise Boom("the model failed mid-stream")
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        try:
            message = await asyncio.wait_for(receive(), 0.01)
        except asyncio.TimeoutError:
            continue
        if message["type"] == "http.disconnect":
            return
    await send({"type": "http.response.body", "body": b""})


async def client(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    received = b""
    try:
        if path == "/drop":
            while CHUNK not in received:  # the stream has begun: leave mid-stream
                data = await reader.read(65536)
                assert data, "closed before the first chunk"
                received += data
            return received
        while data := await reader.read(65536):
            received += data
        return received
    except ConnectionError:
        return received
    finally:
        writer.transport.abort()


async def all_clients(port: int) -> dict[str, list[bytes]]:
    paths = ["/complete", "/drop", "/fail"] * STREAMS_PER_KIND
    bodies = await asyncio.gather(*(client(port, path) for path in paths))
    by_path: dict[str, list[bytes]] = {}
    for path, body in zip(paths, bodies, strict=True):
        by_path.setdefault(path, []).append(body)
    return by_path


@pytest.mark.parametrize("server_name", SERVERS)
def test_hundreds_of_mixed_streams_are_counted_exactly(
    telemetry: Telemetry, server_name: str
) -> None:
    middleware = StreamingMiddleware(mixed_app, **telemetry.providers)
    total = 3 * STREAMS_PER_KIND
    with serve(middleware, server_name, backlog=1024) as url:
        bodies = asyncio.run(all_clients(int(url.rsplit(":", 1)[1])))
        assert wait_until(lambda: len(telemetry.spans()) == 2 * total, timeout=15)

    for body in bodies["/complete"]:
        assert body.count(CHUNK) == CHUNKS, body[-200:]
        assert body.endswith(b"0\r\n\r\n"), body[-200:]  # the last chunk of the encoding
    for body in bodies["/fail"]:
        assert body.count(CHUNK) == 2, body[-200:]
        assert not body.endswith(b"0\r\n\r\n"), body[-200:]
    counts = telemetry.counts("http.server.stream.terminations", REASON)
    assert counts == {
        ("completed",): STREAMS_PER_KIND,
        ("client_disconnect",): STREAMS_PER_KIND,
        ("app_error",): STREAMS_PER_KIND,
    }
    assert all(p.value == 0 for p in telemetry.points("http.server.stream.active"))
    names = sorted(span.name for span in telemetry.spans())
    assert names == sorted(["GET", "GET stream"] * total)
    streams = [s for s in telemetry.spans() if s.name == "GET stream"]
    by_reason: dict[str, list[int]] = {}
    for span in streams:
        attributes = span.attributes or {}
        by_reason.setdefault(str(attributes["http.stream.termination_reason"]), []).append(
            int(attributes["http.stream.chunks"])  # type: ignore[arg-type]
        )
    assert by_reason["completed"] == [CHUNKS] * STREAMS_PER_KIND
    assert by_reason["app_error"] == [2] * STREAMS_PER_KIND
    assert all(chunks >= 1 for chunks in by_reason["client_disconnect"])
    durations = telemetry.counts("http.server.stream.duration", REASON)
    assert sum(durations.values()) == total
