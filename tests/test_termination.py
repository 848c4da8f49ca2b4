"""Every termination reason, provoked for real on uvicorn and hypercorn."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from opentelemetry.trace import StatusCode

from otel_stream import StreamingMiddleware
from tests.apps import read_body, starlette_app, start
from tests.rawclient import abort, open_request, read_until
from tests.servers import SERVERS, serve, wait_until
from tests.telemetry_harness import Telemetry


def reasons(telemetry: Telemetry) -> dict[tuple[Any, ...], float]:
    return telemetry.counts(
        "http.server.stream.terminations", "http.stream.termination_reason", "http.stream.phase"
    )


def ended(telemetry: Telemetry, count: int = 1) -> bool:
    return sum(reasons(telemetry).values()) >= count


@pytest.mark.parametrize("server", SERVERS)
def test_client_closing_mid_stream_is_a_client_disconnect(
    telemetry: Telemetry, server: str
) -> None:
    app = StreamingMiddleware(starlette_app(count=200, pace=0.01), **telemetry.providers)
    with serve(app, server) as url:
        sock = open_request(url + "/stream/1")
        read_until(sock, b"data: 2\n\n")
        abort(sock)
        assert wait_until(lambda: ended(telemetry), timeout=10)
    assert reasons(telemetry) == {("client_disconnect", "streaming"): 1}
    stream = telemetry.span("GET /stream/{id} stream")
    assert stream.attributes["http.stream.termination_reason"] == "client_disconnect"
    assert stream.status.status_code is StatusCode.UNSET  # not a server error
    assert "error.type" not in stream.attributes
    assert 3 <= stream.attributes["http.stream.chunks"] < 200
    # The stream ended at the disconnect, not when the generator ran out 2 s later.
    assert (stream.end_time - stream.start_time) / 1e9 < 1.5


@pytest.mark.parametrize("server", SERVERS)
def test_client_leaving_before_the_first_byte_is_a_disconnect_while_waiting(
    telemetry: Telemetry, server: str
) -> None:
    app = StreamingMiddleware(starlette_app(first_after=0.3, count=3), **telemetry.providers)
    with serve(app, server) as url:
        sock = open_request(url + "/stream/1")
        read_until(sock, b"\r\n\r\n")  # headers only: the model has not answered yet
        abort(sock)
        assert wait_until(lambda: ended(telemetry), timeout=10)
    assert reasons(telemetry) == {("client_disconnect", "waiting"): 1}
    request = telemetry.span("GET /stream/{id}")
    assert request.attributes["http.stream.termination_reason"] == "client_disconnect"
    assert telemetry.points("http.server.stream.time_to_first_byte") == []


@pytest.mark.parametrize("server", SERVERS)
def test_app_that_never_reads_receive_still_sees_the_disconnect(
    telemetry: Telemetry, server: str
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await start(send)
        for _ in range(100):
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            await asyncio.sleep(0.01)
        # returns without the final message, as Starlette does after a silent send

    with serve(StreamingMiddleware(app, **telemetry.providers), server) as url:
        sock = open_request(url + "/")
        read_until(sock, b"tick\n")
        abort(sock)
        assert wait_until(lambda: ended(telemetry), timeout=10)
    assert reasons(telemetry) == {("client_disconnect", "streaming"): 1}


@pytest.mark.parametrize("server", SERVERS)
def test_a_disconnect_the_app_waits_for_is_not_stolen(telemetry: Telemetry, server: str) -> None:
    got: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await read_body(receive)
        await start(send)
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        message = await receive()  # the app listens for the disconnect itself
        got.append(message["type"])

    with serve(StreamingMiddleware(app, **telemetry.providers), server) as url:
        sock = open_request(url + "/")
        read_until(sock, b"first\n")
        abort(sock)
        assert wait_until(lambda: ended(telemetry), timeout=10)
    assert got == ["http.disconnect"]
    assert reasons(telemetry) == {("client_disconnect", "streaming"): 1}


@pytest.mark.parametrize("server", SERVERS)
def test_generator_raising_mid_stream_is_an_app_error(telemetry: Telemetry, server: str) -> None:
    app = StreamingMiddleware(starlette_app(count=5, fail_after=2), **telemetry.providers)
    with serve(app, server) as url:
        with pytest.raises(httpx.HTTPError), httpx.stream("GET", url + "/stream/1") as response:
            response.read()
        assert wait_until(lambda: ended(telemetry), timeout=10)
    assert reasons(telemetry) == {("app_error", "streaming"): 1}
    stream = telemetry.span("GET /stream/{id} stream")
    assert stream.attributes["error.type"] == "ValueError"
    assert stream.status.status_code is StatusCode.ERROR
    assert stream.attributes["http.stream.chunks"] == 2


@pytest.mark.parametrize("server", SERVERS)
def test_app_raising_before_the_response_is_an_app_error(telemetry: Telemetry, server: str) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise KeyError("no such model")

    with serve(StreamingMiddleware(app, **telemetry.providers), server) as url:
        assert httpx.get(url + "/").status_code == 500
        assert wait_until(lambda: ended(telemetry), timeout=10)
    assert reasons(telemetry) == {("app_error", "waiting"): 1}
    (span,) = telemetry.spans()
    assert span.attributes["error.type"] == "KeyError"
    assert span.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize("server", SERVERS)
def test_cancelled_app_task_is_cancelled(telemetry: Telemetry, server: str) -> None:
    inner = StreamingMiddleware(starlette_app(count=100, pace=0.01), **telemetry.providers)

    async def timeout_wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        try:
            await asyncio.wait_for(inner(scope, receive, send), 0.1)
        except asyncio.TimeoutError:  # not the builtin on Python 3.10
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    with serve(timeout_wrapper, server) as url:
        assert httpx.get(url + "/stream/1").status_code == 200
        assert wait_until(lambda: ended(telemetry), timeout=10)
    assert reasons(telemetry) == {("cancelled", "streaming"): 1}
    stream = telemetry.span("GET /stream/{id} stream")
    assert stream.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize("server", SERVERS)
def test_returning_without_the_final_message_is_incomplete(
    telemetry: Telemetry, server: str
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await read_body(receive)
        await start(send)
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        await send({"type": "http.response.body", "body": b" answer", "more_body": True})

    with serve(StreamingMiddleware(app, **telemetry.providers), server) as url:
        with pytest.raises(httpx.HTTPError), httpx.stream("GET", url + "/") as response:
            response.read()
        assert wait_until(lambda: ended(telemetry), timeout=10)
    assert reasons(telemetry) == {("incomplete", "streaming"): 1}
    assert telemetry.span("GET stream").attributes["http.stream.bytes"] == 14


def test_completed_with_trailers_waits_for_the_trailers(telemetry: Telemetry) -> None:
    """In process: neither server carries trailers over HTTP/1.1, the logic is ours alone."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b", "more_body": False})
        if scope["path"] == "/with-trailers":
            await send({"type": "http.response.trailers", "headers": [], "more_trailers": False})

    async def drive(path: str) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "headers": []}
        await StreamingMiddleware(app, **telemetry.providers)(scope, receive, send)
        return sent

    assert len(asyncio.run(drive("/with-trailers"))) == 4
    assert len(asyncio.run(drive("/without"))) == 3
    assert reasons(telemetry) == {("completed", "streaming"): 1, ("incomplete", "streaming"): 1}


@pytest.mark.parametrize("server", SERVERS)
def test_a_client_reading_to_the_end_with_connection_close_is_completed(
    telemetry: Telemetry, server: str
) -> None:
    """hypercorn closes the connection inside the final send and reports a disconnect."""
    app = StreamingMiddleware(starlette_app(count=3, pace=0.01), **telemetry.providers)
    with serve(app, server) as url:
        sock = open_request(url + "/stream/1", headers={"Connection": "close"})
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        sock.close()
        assert received.endswith(b"data: 2\n\n") or b"data: 2\n\n" in received
        assert wait_until(lambda: ended(telemetry), timeout=10)
    assert reasons(telemetry) == {("completed", "streaming"): 1}


@pytest.mark.parametrize("server", SERVERS)
def test_streaming_after_the_client_left_while_waiting_stays_a_wait(
    telemetry: Telemetry, server: str
) -> None:
    left = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await read_body(receive)
        await start(send, b"text/event-stream")
        if (await receive())["type"] == "http.disconnect":
            left.set()
        token = b'data: {"choices":[{"index":0,"delta":{"content":"late"}}]}\n\n'
        try:  # uvicorn's send is silent after a disconnect; hypercorn's may raise
            for _ in range(3):
                await send({"type": "http.response.body", "body": token, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception:
            pass

    with serve(StreamingMiddleware(app, **telemetry.providers), server) as url:
        sock = open_request(url + "/late")
        read_until(sock, b"\r\n\r\n")
        abort(sock)
        assert wait_until(lambda: ended(telemetry), timeout=10)
    assert left.is_set()
    assert reasons(telemetry) == {("client_disconnect", "waiting"): 1}
    (request,) = telemetry.spans()  # nobody received a first byte: no stream span
    assert request.attributes["http.stream.termination_reason"] == "client_disconnect"
    assert request.end_time >= request.start_time
    assert telemetry.points("http.server.stream.time_to_first_byte") == []
    assert telemetry.points("http.server.stream.duration") == []
    # Nor a first token: the payload sent after the client left is not read.
    assert telemetry.points("http.server.stream.time_to_first_token") == []
    assert request.attributes.get("http.stream.events", 0) == 0
