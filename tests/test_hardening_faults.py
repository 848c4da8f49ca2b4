"""Faults of the telemetry pipeline never touch the response.

Real server processes export OTLP/HTTP every 20 ms to an endpoint that is down, that
accepts and never answers, or that never answers while the span queue holds two spans:
every response is still complete and byte-identical, and the server keeps serving. Each
case also checks that its fault happened (a refused export logged, a connection waiting
at the hanging endpoint, spans dropped from the full queue). A
propagator that raises is tested in-process (the tracer and meter that raise are in
tests/test_robustness.py).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import propagate
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from otel_stream import StreamingMiddleware
from tests.apps import starlette_app
from tests.auto_support import ServerProcess
from tests.hardening_support import (
    EXPECTED_BODY,
    dead_endpoint,
    hanging_endpoint,
    server_process,
    streams_at_once,
    write_apps,
)
from tests.servers import SERVERS, serve, wait_until
from tests.telemetry_harness import Telemetry

EXPORT_OFTEN = {
    "OTEL_BSP_SCHEDULE_DELAY": "20",
    "OTEL_METRIC_EXPORT_INTERVAL": "100",
    "OTEL_EXPORTER_OTLP_TIMEOUT": "30",  # a hanging export stays hanging through the test
}
FAULTS: dict[str, dict[str, str]] = {
    "exporter down": {},
    "exporter hanging": {},
    "span queue full": {"OTEL_BSP_MAX_QUEUE_SIZE": "2", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1"},
}
ROUNDS = 4
STREAMS = 8


def refused_export_logged(server: ServerProcess) -> bool:
    return any(
        "/v1/traces" in line and "Connection refused" in line
        for line in server.stderr().splitlines()
    )


def exporter_connected(listener: socket.socket) -> bool:
    """True if a connection waits in ``listener``'s accept queue (taken, then closed)."""
    try:
        connection, _ = listener.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


@contextlib.contextmanager
def endpoint_for(fault: str) -> Iterator[tuple[str, Callable[[ServerProcess], bool]]]:
    """The OTLP endpoint of ``fault``, and a check that the server process met the fault."""
    if fault == "exporter down":
        yield dead_endpoint(), refused_export_logged
    elif fault == "exporter hanging":
        with socket.socket() as listener:  # like hanging_endpoint(), but the test can look
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)  # the kernel completes handshakes; nobody accepts meanwhile
            listener.setblocking(False)
            endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
            yield endpoint, lambda server: exporter_connected(listener)
    else:
        with hanging_endpoint() as endpoint:
            yield endpoint, lambda server: "Queue full, dropping" in server.stderr()


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("server_name", SERVERS)
def test_a_broken_export_pipeline_leaves_every_response_intact(
    tmp_path: Path, server_name: str, fault: str
) -> None:
    write_apps(tmp_path)
    with endpoint_for(fault) as (endpoint, fault_happened):
        server = server_process(
            tmp_path, "middleware", server_name, endpoint, **EXPORT_OFTEN, **FAULTS[fault]
        )
        server.start()
        try:
            server.wait_ready()
            for _ in range(ROUNDS):  # exports are attempted (and fail) between the rounds
                assert streams_at_once(server.url + "/0", STREAMS) == [EXPECTED_BODY] * STREAMS
            assert server.process is not None
            assert server.process.poll() is None
            assert wait_until(lambda: fault_happened(server)), server.stderr()
        finally:
            server.kill()  # the whole group; its shutdown is the subject of another test


class Boom(Exception):
    pass


class RaisingPropagator(TextMapPropagator):
    """A propagator that declares ``traceparent`` and raises whenever it is used."""

    def extract(
        self, carrier: CarrierT, context: Any = None, getter: Getter[CarrierT] = default_getter
    ) -> Any:
        raise Boom("propagator down")

    def inject(
        self, carrier: CarrierT, context: Any = None, setter: Setter[CarrierT] = default_setter
    ) -> None:
        raise Boom("propagator down")

    @property
    def fields(self) -> set[str]:
        return {"traceparent"}


class RaisingFieldsPropagator(RaisingPropagator):
    @property
    def fields(self) -> set[str]:
        raise Boom("fields down")


@pytest.fixture
def raising_propagator(request: pytest.FixtureRequest) -> Iterator[None]:
    original = propagate.get_global_textmap()
    propagate.set_global_textmap(request.param())
    try:
        yield
    finally:
        propagate.set_global_textmap(original)


TRACEPARENT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def bodies(url: str, count: int, headers: dict[str, str]) -> Sequence[bytes]:
    with httpx.Client(timeout=10) as client:
        return [client.get(url, headers=headers).content for _ in range(count)]


@pytest.mark.parametrize(
    "raising_propagator",
    [RaisingPropagator, RaisingFieldsPropagator],
    ids=["extract raises", "fields raises"],
    indirect=True,
)
@pytest.mark.parametrize("server_name", SERVERS)
@pytest.mark.usefixtures("raising_propagator")
def test_a_raising_propagator_leaves_the_response_intact(
    caplog: pytest.LogCaptureFixture, telemetry: Telemetry, server_name: str
) -> None:
    app = StreamingMiddleware(starlette_app(), **telemetry.providers)
    with caplog.at_level(logging.WARNING, "otel_stream"), serve(app, server_name) as url:
        got = bodies(url + "/stream/1", 3, TRACEPARENT)
    assert got == [b"data: 0\n\ndata: 1\n\ndata: 2\n\n"] * 3
    failures = [r for r in caplog.records if "telemetry failed" in r.getMessage()]
    assert len(failures) == 1  # logged once, not once per request
