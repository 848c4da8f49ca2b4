"""``otel-stream demo`` run as a user runs it, its report checked against the clients.

The report's own marks are the check: each quantile row carries the telemetry's
estimate, the clients' exact value, the relative error and the tolerance derived in
``otel_stream.demo.report`` (the bucket's edge on the error's side plus EPSILON = 0.1 s of
clock offset, never looser than the default buckets allow). With the default buckets that
tolerance is a bound, so every mark passes and the exit status is 0; with buckets that
are too coarse, or that end below the values, marks fail and the exit status is 2.
"""

from __future__ import annotations

import gzip
import json
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

from otel_stream.cli import main
from tests import processes
from tests.cli_support import run_cli
from tests.processes import child_environment

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

    # Time to first byte, first token, and stream duration per reason agree, each
    # quantile within its tolerance, and the report says so.
    labels = [timing["label"] for timing in report["timings"]]
    assert "time to first byte" in labels
    assert "time to first token" in labels
    for reason in ("completed", "client_disconnect", "app_error", "cancelled", "incomplete"):
        assert f"stream duration, {reason}" in labels
    for timing in report["timings"]:
        count = timing["count"]
        assert count["telemetry"] == count["clients"] > 0, timing
        assert [row["quantile"] for row in timing["quantiles"]] == ["p50", "p90", "p99"]
        for row in timing["quantiles"]:
            assert row["ok"] is True, (timing["label"], row)
            error = (row["telemetry"] - row["exact"]) / row["exact"]
            assert row["error"] == pytest.approx(error)
            assert abs(row["error"]) <= row["tolerance"] <= 0.34 + 1.34 * 0.1 / row["exact"]
    assert report["ok"] is True
    assert report["failed"] == []

    # The counts add up: every request sent a first byte or ended waiting; every one that
    # sent a byte streamed or answered in a single message.
    counts = report["counts"]
    timings = {timing["label"]: timing for timing in report["timings"]}
    waiting = sum(counts["ended_before_first_byte"].values())
    single = sum(counts["single_message"].values())
    assert counts["requests"] == total
    assert timings["time to first byte"]["count"]["telemetry"] == total - waiting
    assert counts["ended_before_first_byte"] == {"client_disconnect": waiting}
    assert waiting > 0
    assert counts["single_message"] == {"completed": single}
    assert single > 0
    streamed = sum(t["count"]["telemetry"] for t in timings.values() if "duration" in t["label"])
    assert streamed == counts["streamed"] == total - waiting - single

    # The long stream (half the run: 2.5 s) has its row, timed by its stream span.
    long_stream = report["long_stream"]
    assert long_stream["ok"] is True, long_stream
    assert long_stream["exact"] > 2.0
    assert abs(long_stream["telemetry"] - long_stream["exact"]) <= 0.1

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
        "demo", "--requests", "12", "--concurrency", "6", "--long-stream", "1", "--seed", "1"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "otel-stream demo: 12 requests" in out
    for text in (
        "How the requests ended",
        "Counts: 12 requests;",
        "time to first byte",
        "stream duration, completed",
        "long stream (its stream span)",
        "telemetry   exact     error   tolerance",
        "✓ every mark passed.",
    ):
        assert text in out
    marks = [line.rstrip()[-1] for line in out.splitlines() if line.rstrip()[-1:] in ("✓", "✗")]
    assert len(marks) >= 6 + 3 * 5 + 1  # terminations, quantile rows, the long stream
    assert set(marks) == {"✓"}


COARSE = {
    # Too coarse for the stream durations (a 0.5 to 5 s bucket holds nearly all of them).
    "OTEL_STREAM_DURATION_BUCKETS": "0.5,5,50",
    # Ending below most times to first byte: histogram_quantile reads them as 0.1 s.
    "OTEL_STREAM_TTFB_BUCKETS": "0.05,0.1",
}


def test_coarse_buckets_fail_the_report_and_its_exit_status() -> None:
    args = ("demo", "--requests", "12", "--concurrency", "6", "--long-stream", "1", "--seed", "1")
    result = run_cli(*args, env=child_environment(**COARSE))
    assert result.returncode == 2, result.stdout + result.stderr
    out = result.stdout
    assert "✓ every mark passed." not in out
    assert "marks failed:" in out
    first_byte = next(line for line in out.splitlines() if "time to first byte" in line)
    assert "> 0.1 s" in first_byte
    assert first_byte.rstrip().endswith("✗")
    assert "is coarser than the default buckets allow there" in out

    as_json = run_cli(*args, "--json", env=child_environment(**COARSE))
    assert as_json.returncode == 2, as_json.stderr
    assert "Infinity" not in as_json.stdout  # strict JSON: --requests leaves seconds unset
    report = json.loads(as_json.stdout)
    assert report["seconds"] is None
    assert report["ok"] is False
    timings = {timing["label"]: timing for timing in report["timings"]}
    p50 = timings["time to first byte"]["quantiles"][0]
    assert (p50["telemetry"], p50["bucket"], p50["tolerance"], p50["ok"]) == (
        0.1,
        [0.1, None],
        None,
        False,
    )
    completed = timings["stream duration, completed"]["quantiles"]
    assert any(row["ok"] is False and row["held_to"] == "default" for row in completed)
    assert all(abs(row["error"]) > row["tolerance"] for row in completed if not row["ok"])
    # The long stream is timed by its span, not the buckets: it still agrees.
    assert report["long_stream"]["ok"] is True


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["demo", "--bogus"], "usage: otel-stream demo "),
        (["probe", "http://127.0.0.1:9/", "--bogus"], "usage: otel-stream probe "),
    ],
)
def test_an_unknown_option_gets_the_commands_usage(
    argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(usage)
    assert f"otel-stream {argv[0]}: error: unrecognized arguments: --bogus" in err


def test_demo_help_documents_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Exit status: 0 every mark is ✓, 2 a mark is ✗" in help_text


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
