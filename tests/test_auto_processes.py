"""Auto-instrumentation of real server processes, exported through real exporters.

Every server here is a separate process started the way users start theirs, with an app
that does not mention otel-stream. Telemetry goes over OTLP/HTTP to the receiver of
tests/otlp_receiver.py, or to stdout through the console exporter.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from otel_stream import buckets
from tests.auto_support import (
    ServerProcess,
    environment,
    of_service,
    running,
    serve_process,
    stream,
    write_apps,
)
from tests.otlp_receiver import OTLPReceiver, ReceivedSpan

BODY = "data: 0\n\ndata: 1\n\ndata: 2\n\n"
INSTRUMENT = ["opentelemetry-instrument"]


@pytest.fixture
def apps(tmp_path: Path) -> Path:
    return write_apps(tmp_path)


def our_spans(receiver: OTLPReceiver, service: str) -> list[ReceivedSpan]:
    return [s for s in of_service(receiver.spans(), service) if s.scope == "otel_stream"]


def assert_request_and_stream(receiver: OTLPReceiver, service: str, name: str = "GET") -> None:
    assert receiver.wait_for(lambda: len(our_spans(receiver, service)) >= 2), receiver.spans()
    spans = our_spans(receiver, service)
    (request,) = [s for s in spans if s.name == name]
    (stream_span,) = [s for s in spans if s.name == f"{name} stream"]
    assert request.kind == "SERVER"
    assert request.attributes["http.request.method"] == "GET"
    assert request.attributes["url.path"].startswith("/chat")
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["http.stream.time_to_first_byte"] > 0
    assert stream_span.kind == "INTERNAL"
    assert stream_span.parent_span_id == request.span_id
    assert stream_span.attributes["http.stream.termination_reason"] == "completed"
    assert stream_span.attributes["http.stream.chunks"] == 3
    assert stream_span.attributes["http.stream.bytes"] == len(BODY)
    assert request.resource["service.instance.id"]


def assert_stream_metrics(receiver: OTLPReceiver, service: str) -> None:
    def counted() -> list[int]:
        points = receiver.points("http.server.stream.duration")
        return [p.count or 0 for p in points if p.resource.get("service.name") == service]

    assert receiver.wait_for(lambda: sum(counted()) >= 1)
    (point, *_) = [
        p
        for p in receiver.points("http.server.stream.time_to_first_byte")
        if p.resource.get("service.name") == service
    ]
    assert point.bounds == buckets.TTFB_BUCKETS
    assert point.attributes["http.request.method"] == "GET"


WAYS = [
    pytest.param(INSTRUMENT, "uvicorn", id="opentelemetry-instrument uvicorn"),
    pytest.param(INSTRUMENT, "hypercorn", id="opentelemetry-instrument hypercorn"),
    pytest.param(INSTRUMENT, "granian", id="opentelemetry-instrument granian"),
    pytest.param(INSTRUMENT, "daphne", id="opentelemetry-instrument daphne"),
    pytest.param([], "uvicorn", id="OTEL_STREAM_ENABLED uvicorn"),
    pytest.param([], "hypercorn", id="OTEL_STREAM_ENABLED hypercorn"),
    pytest.param([], "granian", id="OTEL_STREAM_ENABLED granian"),
    pytest.param([], "daphne", id="OTEL_STREAM_ENABLED daphne"),
    pytest.param([], "gunicorn", id="OTEL_STREAM_ENABLED gunicorn UvicornWorker"),
    pytest.param([], "python -m", id="OTEL_STREAM_ENABLED python -m"),
]


@pytest.mark.parametrize(("prefix", "server"), WAYS)
def test_each_way_of_starting_a_service_exports_request_and_stream_spans(
    receiver: OTLPReceiver, apps: Path, prefix: list[str], server: str
) -> None:
    service = f"svc-{server.replace(' ', '')}"
    extra = {} if prefix else {"OTEL_STREAM_ENABLED": "true"}
    target = "serve_plain:app" if server == "python -m" else "plain_app:app"
    process = serve_process(apps, prefix, server, target, environment(receiver, service, **extra))
    with running(process):
        assert stream(process.url + "/chat") == BODY
        assert_request_and_stream(receiver, service)
    assert_stream_metrics(receiver, service)
    assert "Traceback" not in process.stderr()


@pytest.mark.parametrize("prefix", [INSTRUMENT, []], ids=["opentelemetry-instrument", "env"])
def test_console_exporter(apps: Path, prefix: list[str]) -> None:
    env = environment(
        None,
        "console-svc",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="console",
        OTEL_LOGS_EXPORTER="none",
        OTEL_BSP_SCHEDULE_DELAY="50",
        OTEL_METRIC_EXPORT_INTERVAL="60000",
    )
    if not prefix:
        env["OTEL_STREAM_ENABLED"] = "true"
    process = serve_process(apps, prefix, "uvicorn", "starlette_app:app", env)
    with running(process):
        assert stream(process.url + "/chat/a") == BODY
    output = process.stdout()  # complete: the process flushed its exporters and exited
    assert output.count('"name": "GET /chat/{room}"') == 1
    assert output.count('"name": "GET /chat/{room} stream"') == 1
    assert '"http.stream.termination_reason": "completed"' in output
    assert '"name": "http.server.stream.time_to_first_byte"' in output


def test_the_disable_switches(receiver: OTLPReceiver, apps: Path) -> None:
    disabled = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "otel_stream,fastapi"}
    servers = {
        # FastAPI's own telemetry still exports: the pipeline works, otel-stream is off.
        "instrument-disabled": (INSTRUMENT, disabled),
        "instrument-false": (
            INSTRUMENT,
            {"OTEL_STREAM_ENABLED": "false", **disabled}
            | {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "fastapi"},
        ),
        "env-disabled": ([], {"OTEL_STREAM_ENABLED": "true", **disabled}),
        "env-enabled": ([], {"OTEL_STREAM_ENABLED": "true"}),  # the twin that must export
    }
    processes = {
        service: serve_process(
            apps, prefix, "uvicorn", "fastapi_app:app", environment(receiver, service, **extra)
        )
        for service, (prefix, extra) in servers.items()
    }
    with running(*processes.values()):
        for process in processes.values():
            assert stream(process.url + "/chat/a") == BODY
        assert receiver.wait_for(lambda: len(our_spans(receiver, "env-enabled")) == 2)
    # Every process has exited, so each has flushed all it would ever export.
    spans = receiver.spans()
    for service in ("instrument-disabled", "instrument-false"):
        exported = of_service(spans, service)
        assert [s.name for s in exported if s.kind == "SERVER"] == ["GET /chat/{room}"], service
        assert {s.scope for s in exported} == {"fastapi"}, service
    assert of_service(spans, "env-disabled") == []


def test_bad_values_warn_once_and_the_app_starts(receiver: OTLPReceiver, apps: Path) -> None:
    bad = {
        "OTEL_STREAM_TTFB_BUCKETS": "1,abc",
        "OTEL_STREAM_PAYLOADS": "maybe",
        "OTEL_STREAM_EXCLUDED_URLS": "(unclosed",
        "OTEL_STREAM_TYPO": "1",
    }
    processes = [
        serve_process(
            apps, prefix, "uvicorn", "starlette_app:app", environment(receiver, service, **env)
        )
        for prefix, service, env in [
            (INSTRUMENT, "bad-instrument", bad),
            ([], "bad-env", {**bad, "OTEL_STREAM_ENABLED": "true"}),
            ([], "bad-enabled", {"OTEL_STREAM_ENABLED": "ture"}),
        ]
    ]
    with running(*processes):
        for process in processes:
            assert stream(process.url + "/chat/a") == BODY
        assert_request_and_stream(receiver, "bad-instrument", "GET /chat/{room}")
        assert_request_and_stream(receiver, "bad-env", "GET /chat/{room}")
    assert_stream_metrics(receiver, "bad-env")  # TTFB buckets: the defaults
    for process in processes[:2]:
        warnings = process.stderr()
        for name, value in bad.items():
            assert warnings.count(f"{name}={value!r}") == 1, (name, warnings)
    warnings = processes[2].stderr()
    assert warnings.count("invalid OTEL_STREAM_ENABLED='ture'") == 1, warnings
    assert of_service(receiver.spans(), "bad-enabled") == []


def test_every_worker_exports_its_own_data(receiver: OTLPReceiver, apps: Path) -> None:
    processes = [
        serve_process(
            apps,
            prefix,
            "uvicorn",
            "plain_app:app",
            environment(receiver, service, **env),
            "--workers",
            "2",
        )
        for prefix, service, env in [
            (INSTRUMENT, "workers-instrument", {}),
            ([], "workers-env", {"OTEL_STREAM_ENABLED": "true"}),
        ]
    ]
    with running(*processes):
        for process in processes:
            pids = serve_until_two_workers_answered(process)
            assert len(pids) == 2
    for process in processes:
        service = process.env["OTEL_SERVICE_NAME"]
        spans = our_spans(receiver, service)
        instances = {s.resource["service.instance.id"] for s in spans if s.name == "GET"}
        assert len(instances) == 2, service
        metric_instances = {
            p.resource["service.instance.id"]
            for p in receiver.points("http.server.stream.duration")
            if p.resource.get("service.name") == service
        }
        assert metric_instances == instances


def serve_until_two_workers_answered(process: ServerProcess) -> set[str]:
    """Send rounds of concurrent requests until two worker pids have answered (bounded)."""
    import httpx

    pids: set[str] = set()
    lock = threading.Lock()

    def one() -> None:
        response = httpx.get(process.url + "/chat", timeout=10)
        assert response.text == BODY
        with lock:
            pids.add(response.headers["x-pid"])

    for _ in range(20):
        threads = [threading.Thread(target=one) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if len(pids) >= 2:
            break
    return pids
