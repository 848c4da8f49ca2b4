"""Server processes, apps and fault-injecting endpoints for the hardening tests.

Apps are written into a test's ``tmp_path`` and served by real server processes, the way
a user starts them. ``code_app`` puts the middleware in code with its own SDK providers
(a ``BatchSpanProcessor`` exporting OTLP/HTTP); ``plain_app`` mentions no OpenTelemetry
at all and is instrumented by ``opentelemetry-instrument`` or ``OTEL_STREAM_ENABLED``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.auto_support import LIFESPAN_APP_START, ServerProcess, environment, server_command
from tests.otlp_receiver import OTLPReceiver
from tests.processes import BIN
from tests.servers import free_port

#: What every app streams, and the bytes a client must receive.
CHUNKS = 3
EXPECTED_BODY = b"".join(f"data: {i}\n\n".encode() for i in range(CHUNKS))

_PLAIN_APP = (
    """
import asyncio
"""
    + LIFESPAN_APP_START
    + """    pace = float(scope["path"].rsplit("/", 1)[-1] or 0) if scope["path"] != "/" else 0.01
    await send(
        {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"text/event-stream")]}
    )
    for i in range(CHUNKS):
        await asyncio.sleep(pace)
        await send({"type": "http.response.body", "body": f"data: {i}\\n\\n".encode(),
                    "more_body": True})
    await send({"type": "http.response.body", "body": b""})
"""
).replace("CHUNKS", str(CHUNKS))

_CODE_APP = """
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_stream import StreamingMiddleware
from plain_app import app as plain

resource = Resource.create()
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
meter_provider = MeterProvider(
    resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
)
app = StreamingMiddleware(plain, tracer_provider=tracer_provider, meter_provider=meter_provider)
"""

APPS = {"plain_app": _PLAIN_APP, "code_app": _CODE_APP}

#: The ways otel-stream gets into a process: (command prefix, app, extra variables).
WAYS: dict[str, tuple[list[str], str, dict[str, str]]] = {
    "middleware": ([], "code_app:app", {}),
    "opentelemetry-instrument": ([str(BIN / "opentelemetry-instrument")], "plain_app:app", {}),
    "OTEL_STREAM_ENABLED": ([], "plain_app:app", {"OTEL_STREAM_ENABLED": "true"}),
}

#: Nothing leaves the process on its own schedule while a test runs: only a flush does.
HOLD_EVERYTHING = {
    "OTEL_BSP_SCHEDULE_DELAY": "600000",
    "OTEL_METRIC_EXPORT_INTERVAL": "600000",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "512",
}


def write_apps(directory: Path) -> Path:
    for name, source in APPS.items():
        (directory / f"{name}.py").write_text(source)
    return directory


def server_process(
    directory: Path,
    way: str,
    server: str,
    endpoint: str,
    *extra_args: str,
    **variables: str,
) -> ServerProcess:
    """A server process serving the app of ``way``, exporting OTLP/HTTP to ``endpoint``."""
    prefix, target, way_variables = WAYS[way]
    receiver_env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "none",
    }
    merged = {**receiver_env, **way_variables, **variables}
    env = environment(None, f"hardening-{way}-{server}", directory, **merged)
    port = free_port()
    argv = [*prefix, *server_command(server, target, port), *extra_args]
    return ServerProcess(argv, env, directory, port, name=f"{way}-{server}")


def stream(url: str, timeout: float = 10.0) -> bytes:
    with httpx.Client(timeout=timeout) as client, client.stream("GET", url) as response:
        assert response.status_code == 200, response.status_code
        return response.read()


def streams_at_once(url: str, count: int) -> list[bytes]:
    """``count`` concurrent streams of ``url``; returns each body."""
    bodies: list[bytes] = [b""] * count
    errors: list[BaseException] = []

    def one(index: int) -> None:
        try:
            bodies[index] = stream(url)
        except BaseException as error:  # reported by the caller
            errors.append(error)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return bodies


@contextlib.contextmanager
def hanging_endpoint() -> Iterator[str]:
    """An HTTP endpoint that accepts connections and never answers (nor reads)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)  # the kernel completes handshakes; nobody ever accepts
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def dead_endpoint() -> str:
    """An endpoint where nothing listens: every connection is refused."""
    return f"http://127.0.0.1:{free_port()}"


def otel_stream_spans(receiver: OTLPReceiver, service: str) -> list[str]:
    return sorted(
        span.name
        for span in receiver.spans()
        if span.scope == "otel_stream" and span.resource.get("service.name") == service
    )


def terminate(server: ServerProcess, timeout: float = 30.0) -> float:
    """SIGTERM the server process (only it, as an orchestrator does); seconds until it exited."""
    process = server.process
    assert process is not None
    began = time.monotonic()
    process.terminate()
    process.wait(timeout)
    return time.monotonic() - began
