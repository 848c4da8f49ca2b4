"""Nothing lost on shutdown: real server processes, SIGTERM, spans counted at an OTLP receiver.

Every process exports through a ``BatchSpanProcessor`` whose schedule delay is ten
minutes, so no span leaves the process unless otel-stream flushes it at shutdown.
"""

from __future__ import annotations

import math
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.auto_support import ServerProcess
from tests.hardening_support import (
    EXPECTED_BODY,
    HOLD_EVERYTHING,
    WAYS,
    dead_endpoint,
    hanging_endpoint,
    otel_stream_spans,
    server_process,
    streams_at_once,
    terminate,
    write_apps,
)
from tests.otlp_receiver import OTLPReceiver
from tests.servers import SERVERS, wait_until

STREAMS = 6


@pytest.fixture
def apps(tmp_path: Path) -> Path:
    return write_apps(tmp_path)


def started(server: ServerProcess) -> ServerProcess:
    server.start()
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


class InFlightStreams:
    """``count`` streams of ``url`` at once, one thread each; counts the first chunks received."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.bodies: list[bytes] = [b""] * count
        self.errors: list[BaseException] = []
        self.first_chunks = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.read, args=(i,)) for i in range(count)]
        for thread in self.threads:
            thread.start()

    def read(self, index: int) -> None:
        try:
            with httpx.Client(timeout=10) as client, client.stream("GET", self.url) as response:
                body = b""
                for chunk in response.iter_bytes():
                    if chunk and not body:
                        with self.lock:
                            self.first_chunks += 1
                    body += chunk
                self.bodies[index] = body
        except BaseException as error:  # reported by the test
            self.errors.append(error)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def alive(self) -> int:
        return sum(thread.is_alive() for thread in self.threads)


def terminate_in_flight(server: ServerProcess) -> InFlightStreams:
    """SIGTERM ``server`` once each of ``STREAMS`` slow streams has sent its first chunk."""
    streams = InFlightStreams(server.url + "/0.15", STREAMS)
    try:
        assert wait_until(lambda: streams.first_chunks == STREAMS, timeout=10), streams.errors
        terminate(server)
        streams.join(10)
    finally:
        server.stop()
        streams.join(10)
    assert streams.alive() == 0
    assert streams.errors == []
    return streams


def service(server: ServerProcess) -> str:
    return server.env["OTEL_SERVICE_NAME"]


def expected_spans(count: int) -> list[str]:
    return sorted(["GET", "GET stream"] * count)


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("server_name", SERVERS)
def test_sigterm_right_after_the_streams_loses_no_span(
    receiver: OTLPReceiver, apps: Path, server_name: str, way: str
) -> None:
    server = started(server_process(apps, way, server_name, receiver.endpoint, **HOLD_EVERYTHING))
    try:
        bodies = streams_at_once(server.url + "/", STREAMS)
        assert bodies == [EXPECTED_BODY] * STREAMS
        assert otel_stream_spans(receiver, service(server)) == []  # all held in the queue
        terminate(server)
    finally:
        server.stop()
    assert receiver.wait_for(lambda: len(otel_stream_spans(receiver, service(server))) >= 12)
    assert otel_stream_spans(receiver, service(server)) == expected_spans(STREAMS), server.stderr()


@pytest.mark.parametrize("server_name", SERVERS)
def test_streams_in_flight_at_sigterm_finish_and_their_spans_arrive(
    receiver: OTLPReceiver, apps: Path, server_name: str
) -> None:
    """The graceful shutdown lets running streams end; their spans end after the signal."""
    server = started(
        server_process(apps, "middleware", server_name, receiver.endpoint, **HOLD_EVERYTHING)
    )
    streams = terminate_in_flight(server)
    assert streams.bodies == [EXPECTED_BODY] * STREAMS
    assert receiver.wait_for(lambda: len(otel_stream_spans(receiver, service(server))) >= 12)
    assert otel_stream_spans(receiver, service(server)) == expected_spans(STREAMS)


@pytest.mark.parametrize("way", ["opentelemetry-instrument", "OTEL_STREAM_ENABLED"])
def test_auto_instrumented_uvicorn_without_lifespan_keeps_in_flight_spans(
    receiver: OTLPReceiver, apps: Path, way: str
) -> None:
    server = started(
        server_process(
            apps, way, "uvicorn", receiver.endpoint, "--lifespan", "off", **HOLD_EVERYTHING
        )
    )
    streams = terminate_in_flight(server)
    assert streams.bodies == [EXPECTED_BODY] * STREAMS
    receiver.wait_for(lambda: len(otel_stream_spans(receiver, service(server))) >= 12, 2)
    assert otel_stream_spans(receiver, service(server)) == expected_spans(STREAMS)


FLUSH_TIMEOUT = 1.5
EXPORT_TIMEOUT = 30
LIMIT = FLUSH_TIMEOUT + 5.0  # room for a loaded machine; far below the export timeout


def exit_time(server: ServerProcess) -> float:
    """Seconds from SIGTERM until ``server`` exited (infinite if it outlived twice LIMIT)."""
    try:
        return terminate(server, 2 * LIMIT)
    except subprocess.TimeoutExpired:
        return math.inf


def test_a_dead_or_hanging_exporter_cannot_hold_the_shutdown(apps: Path) -> None:
    """Four processes at once (dead / hanging endpoint x uvicorn / hypercorn), each with
    spans queued and an export timeout of 30 s; each must exit within the flush timeout
    plus 5 s, so a shutdown that waits for the exporter fails."""
    with hanging_endpoint() as hanging:
        endpoints = {"dead": dead_endpoint(), "hanging": hanging}
        variables = {
            **HOLD_EVERYTHING,
            "OTEL_STREAM_SHUTDOWN_FLUSH_TIMEOUT": str(FLUSH_TIMEOUT),
            "OTEL_EXPORTER_OTLP_TIMEOUT": str(EXPORT_TIMEOUT),
        }
        servers = {
            (kind, name): server_process(apps, "middleware", name, endpoint, **variables)
            for kind, endpoint in endpoints.items()
            for name in SERVERS
        }
        exit_times: dict[tuple[str, str], float] = {}
        try:
            for server in servers.values():
                server.start()
            for server in servers.values():
                server.wait_ready()
                assert streams_at_once(server.url + "/", 2) == [EXPECTED_BODY] * 2
            threads = [
                threading.Thread(
                    target=lambda key=key, server=server: exit_times.__setitem__(
                        key, exit_time(server)
                    )
                )
                for key, server in servers.items()
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        finally:
            for server in servers.values():
                server.stop()
    slow = {key: round(took, 2) for key, took in exit_times.items() if took > LIMIT}
    assert len(exit_times) == len(servers)
    assert slow == {}, f"exit took longer than {LIMIT} s: {slow}"
