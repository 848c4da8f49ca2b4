"""Nothing lost when gunicorn shuts down: SIGTERM to the master, spans counted at a receiver.

The app exports through a ``BatchSpanProcessor`` whose schedule delay is ten minutes, so
no span leaves a worker unless it is flushed at shutdown. gunicorn's graceful shutdown
lets the worker finish the streams in flight, then the worker exits through
``sys.exit``, and the SDK's exit handler (with otel-stream's SIGTERM flush before it)
exports what is queued.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import httpx
import pytest

from tests.auto_support import ServerProcess
from tests.hardening_support import HOLD_EVERYTHING
from tests.otlp_receiver import OTLPReceiver
from tests.processes import BIN
from tests.servers import wait_until
from tests.wsgi_servers import PROCESSES, TEST_ID_HEADER, exchange_in, gunicorn_process

#: The ways otel-stream gets into the process: (command prefix, variables).
WAYS: dict[str, tuple[list[str], dict[str, str]]] = {
    "middleware": ([], {"WSGI_TEST_BATCH": "1"}),
    "opentelemetry-instrument": (
        [str(BIN / "opentelemetry-instrument")],
        {"WSGI_TEST_WRAP": "auto"},
    ),
    "OTEL_STREAM_ENABLED": ([], {"WSGI_TEST_WRAP": "auto", "OTEL_STREAM_ENABLED": "true"}),
}


def started(
    worker: str, receiver: OTLPReceiver, service: str, way: str = "middleware"
) -> ServerProcess:
    prefix, variables = WAYS[way]
    process = gunicorn_process(
        worker,
        receiver,
        service,
        WSGI_TEST_APP="flask",
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST="x-test-id",
        **HOLD_EVERYTHING,
        **variables,
    )
    process.argv = [*prefix, *process.argv]
    process.start()
    try:
        process.wait_ready()
    except BaseException:
        process.stop()
        raise
    return process


def terminate(process: ServerProcess) -> None:
    """SIGTERM the master only, as an orchestrator does, and wait for it to exit."""
    assert process.process is not None
    process.process.terminate()
    process.process.wait(30)


def of_service(receiver: OTLPReceiver, service: str) -> list:  # type: ignore[type-arg]
    return [
        span
        for span in receiver.spans()
        if span.scope == "otel_stream" and span.resource.get("service.name") == service
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("server", "way"),
    [
        *((server, "middleware") for server in PROCESSES),
        ("gunicorn-gthread", "opentelemetry-instrument"),
        ("gunicorn-gthread", "OTEL_STREAM_ENABLED"),
    ],
)
def test_finished_streams_spans_leave_at_sigterm(
    receiver: OTLPReceiver, server: str, way: str
) -> None:
    service = f"wsgi-shutdown-{uuid.uuid4().hex[:8]}"
    process = started(server.split("-", 1)[1], receiver, service, way)
    ids = [uuid.uuid4().hex for _ in range(3)]
    try:
        with httpx.Client(timeout=10) as client:
            for test_id in ids:
                response = client.get(
                    process.url + "/chat/r1?count=3", headers={TEST_ID_HEADER: test_id}
                )
                assert response.text == "data: r1-0\n\ndata: r1-1\n\ndata: r1-2\n\n"
        time.sleep(0.2)
        assert of_service(receiver, service) == []  # all still held in the queue
        terminate(process)
    finally:
        process.stop()
    assert wait_until(lambda: len(of_service(receiver, service)) >= 6, 10), process.stderr()
    spans = of_service(receiver, service)
    for test_id in ids:
        exchange = exchange_in(spans, test_id)
        assert exchange is not None, test_id
        assert exchange.reason == "completed"


@pytest.mark.slow
@pytest.mark.parametrize(("server", "streams"), [("gunicorn-sync", 1), ("gunicorn-gthread", 4)])
def test_streams_in_flight_at_sigterm_finish_and_their_spans_arrive(
    receiver: OTLPReceiver, server: str, streams: int
) -> None:
    service = f"wsgi-shutdown-{uuid.uuid4().hex[:8]}"
    process = started(server.split("-", 1)[1], receiver, service)
    ids = [uuid.uuid4().hex for _ in range(streams)]
    bodies: dict[str, bytes] = {}
    first_chunks: list[str] = []
    errors: list[BaseException] = []

    def read(test_id: str) -> None:
        try:
            with (
                httpx.Client(timeout=10) as client,
                client.stream(
                    "GET",
                    process.url + "/chat/r1?count=4&pace=0.2",
                    headers={TEST_ID_HEADER: test_id},
                ) as response,
            ):
                body = b""
                for chunk in response.iter_bytes():
                    if chunk and not body:
                        first_chunks.append(test_id)
                    body += chunk
                bodies[test_id] = body
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=read, args=(test_id,)) for test_id in ids]
    try:
        for thread in threads:
            thread.start()
        assert wait_until(lambda: len(first_chunks) == streams, 10), errors
        terminate(process)
    finally:
        for thread in threads:
            thread.join(15)
        process.stop()
    assert errors == []
    expected = b"".join(f"data: r1-{i}\n\n".encode() for i in range(4))
    assert bodies == dict.fromkeys(ids, expected)
    assert wait_until(lambda: len(of_service(receiver, service)) >= 2 * streams, 10)
    spans = of_service(receiver, service)
    for test_id in ids:
        exchange = exchange_in(spans, test_id)
        assert exchange is not None, test_id
        assert exchange.reason == "completed"
        assert exchange.stream is not None
        assert exchange.stream.attributes["http.stream.chunks"] == 4


@pytest.mark.slow
def test_a_stream_whose_worker_gunicorn_aborts_is_cancelled(receiver: OTLPReceiver) -> None:
    """A sync worker reports to the master only between requests: a stream longer than
    ``--timeout`` gets its worker aborted (SystemExit raised in the app)."""
    service = f"wsgi-timeout-{uuid.uuid4().hex[:8]}"
    process = gunicorn_process(
        "sync",
        receiver,
        service,
        "tests.wsgi_served:app",
        "--timeout",
        "1",
        WSGI_TEST_APP="plain",
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST="x-test-id",
    )
    test_id = uuid.uuid4().hex
    try:
        process.start()
        process.wait_ready()
        # the connection breaks mid-stream
        with httpx.Client(timeout=20) as client, contextlib.suppress(httpx.HTTPError):
            client.get(process.url + "/sse?count=40&pace=0.25", headers={TEST_ID_HEADER: test_id})
        assert wait_until(lambda: exchange_in(of_service(receiver, service), test_id), 10)
    finally:
        process.stop()
    exchange = exchange_in(of_service(receiver, service), test_id)
    assert exchange is not None
    assert exchange.reason == "cancelled", process.stderr()[-2000:]
    assert exchange.ended.attributes["error.type"] == "SystemExit"
