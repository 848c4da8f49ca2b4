"""``otel-stream demo`` run as a user runs it, its report checked against the clients.

Tolerance, and why. Counts are exact: the telemetry must count every request the
clients made, by termination reason and phase. A quantile is computed by Prometheus'
``histogram_quantile`` from bucket counts, so it can land anywhere in the bucket that
holds the true value; and the server's and the clients' stopwatches measure one request
a little differently (the client starts before connecting, each side reads its clock
when its event loop gets to it). If every request's two measurements differ by at most
EPSILON, the telemetry's quantile lies between the lower bound of the bucket holding
``client - EPSILON`` and the upper bound of the bucket holding ``client + EPSILON``,
where ``client`` is the clients' exact (nearest-rank) quantile. EPSILON = 0.1 s: the
offsets seen here are a few milliseconds; 0.1 s leaves room for a loaded CI machine and
is still far below any error that matters (a unit slip, a duration cut short, the time
to headers taken for the time to first byte).
"""

from __future__ import annotations

import bisect
import gzip
import json
import math
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests import processes
from tests.cli_support import run_cli
from tests.processes import child_environment

EPSILON = 0.1
EVERY_END = [
    ("completed", "streaming"),
    ("client_disconnect", "waiting"),
    ("client_disconnect", "streaming"),
    ("app_error", "streaming"),
    ("cancelled", "streaming"),
    ("incomplete", "streaming"),
]


class OtlpReceiver(ThreadingHTTPServer):
    """A minimal OTLP/HTTP (protobuf) endpoint that keeps what it is sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OtlpHandler)
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.traces: list[ExportTraceServiceRequest] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _OtlpHandler(BaseHTTPRequestHandler):
    server: OtlpReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path == "/v1/metrics":
            self.server.metrics.append(ExportMetricsServiceRequest.FromString(body))
        elif self.path == "/v1/traces":
            self.server.traces.append(ExportTraceServiceRequest.FromString(body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.shutdown()
    receiver.server_close()
    thread.join(5)


def agreement_range(value: float, bounds: list[float]) -> tuple[float, float]:
    low = bisect.bisect_left(bounds, value - EPSILON)
    high = bisect.bisect_left(bounds, value + EPSILON)
    return (0.0 if low == 0 else bounds[low - 1], bounds[high] if high < len(bounds) else math.inf)


def exported_terminations(receiver: OtlpReceiver) -> float:
    """The last exported value of the terminations counter, summed over its points."""
    total = 0.0
    for request in receiver.metrics[-1:]:
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "http.server.stream.terminations":
                        total += sum(
                            point.as_int or point.as_double for point in metric.sum.data_points
                        )
    return total


@pytest.mark.slow
def test_demo_report_agrees_with_the_clients_and_is_exported(otlp: OtlpReceiver) -> None:
    env = child_environment(
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url, OTEL_SERVICE_NAME="demo-under-test"
    )
    result = run_cli(
        "demo", "--seconds", "5", "--concurrency", "8", "--seed", "7", "--json", env=env
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)

    # Every termination reason the middleware knows, counted exactly like the clients.
    rows = {(row["reason"], row["phase"]): row for row in report["terminations"]}
    for key in EVERY_END:
        assert rows.get(key, {}).get("telemetry", 0) >= 1, (key, report["terminations"])
    for row in rows.values():
        assert row["telemetry"] == row["clients"], row
    assert report["unexpected"] == []
    total = sum(row["telemetry"] for row in rows.values())
    assert total == report["requests"]

    # Time to first byte, first token, and stream duration per reason agree.
    labels = [timing["label"] for timing in report["timings"]]
    assert "time to first byte" in labels
    assert "time to first token" in labels
    for reason in ("completed", "client_disconnect", "app_error", "cancelled", "incomplete"):
        assert f"stream duration, {reason}" in labels
    for timing in report["timings"]:
        server, clients = timing["telemetry"], timing["clients"]
        assert server["count"] == clients["count"] > 0, timing
        for quantile in ("p50", "p90", "p99"):
            lower, upper = agreement_range(clients[quantile], timing["bounds"])
            assert lower - 1e-9 <= server[quantile] <= upper + 1e-9, (timing["label"], quantile)

    # Slow readers held the server back, and the telemetry saw it.
    assert report["backpressure"]["clients_stalled"] >= 1
    assert report["backpressure"]["streams_held_back"] >= 1

    # The same data went to the OTLP endpoint named by the standard variables.
    assert report["exporters"] == ["traces: otlp_proto_http", "metrics: otlp_proto_http"]
    assert exported_terminations(otlp) == total
    span_names = {
        span.name
        for request in otlp.traces
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    }
    assert "POST /v1/chat/completions stream" in span_names
    service = {
        attribute.value.string_value
        for request in otlp.traces
        for resource in request.resource_spans
        for attribute in resource.resource.attributes
        if attribute.key == "service.name"
    }
    assert service == {"demo-under-test"}


def test_demo_prints_a_readable_report() -> None:
    result = run_cli(
        "demo", "--requests", "12", "--concurrency", "6", "--long-stream", "0", "--seed", "1"
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "otel-stream demo: 12 requests" in out
    for text in ("How the requests ended", "time to first byte", "stream duration, completed"):
        assert text in out
    assert "✗" not in out


@pytest.mark.parametrize("command", ["demo", "probe"])
def test_missing_demo_extra_is_explained_without_a_traceback(command: str) -> None:
    missing = "uvicorn" if command == "demo" else "httpx"
    code = (
        f"import sys; sys.modules[{missing!r}] = None; "
        "from otel_stream.cli import main; "
        f"sys.exit(main([{command!r}, 'http://127.0.0.1:9/'] if {command!r} == 'probe' "
        f"else [{command!r}]))"
    )
    result = processes.run([sys.executable, "-c", code], timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"'{missing}'" in result.stderr
    assert "pip install 'otel-stream[demo]'" in result.stderr


def test_bad_exporter_name_is_one_line() -> None:
    result = run_cli(
        "demo", "--requests", "1", env=child_environment(OTEL_TRACES_EXPORTER="no_such_exporter")
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "no_such_exporter" in result.stderr
