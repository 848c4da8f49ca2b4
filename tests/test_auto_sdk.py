"""SDK set-up for OTEL_STREAM_ENABLED=true: a missing exporter skips its signal, not the rest.

The SDK's configurator imports every exporter the OTEL_*_EXPORTER variables name before
it sets up any signal, and fails on the first one that is not installed. These tests
name exporters that cannot be loaded and check that the other signals still export, with
one warning per skipped signal.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from pathlib import Path

import pytest

from otel_stream import sdk
from tests.auto_support import (
    environment,
    running,
    serve_process,
    stream,
    wait_for_console_spans,
    write_apps,
)

BODY = "data: 0\n\ndata: 1\n\ndata: 2\n\n"


def _installed(entry_point: str, group: str = "opentelemetry_traces_exporter") -> bool:
    return bool(importlib.metadata.entry_points(group=group, name=entry_point))


@pytest.mark.parametrize(
    ("variables", "entry_point"),
    [
        ({}, "otlp_proto_grpc"),  # the SDK's default protocol, not the specification's
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "otlp_proto_http"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "otlp_proto_grpc"),
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            "otlp_proto_http",
        ),
    ],
)
def test_otlp_resolves_by_protocol_as_the_sdk_does(
    variables: dict[str, str], entry_point: str
) -> None:
    environ = {"OTEL_TRACES_EXPORTER": "otlp", **variables}
    missing = sdk.missing_exporters(environ)
    if _installed(entry_point):
        assert missing == []
    else:
        (item,) = missing
        assert (item.signal, item.name, item.entry_point) == ("traces", "otlp", entry_point)
        assert item.reason == "is not installed"


def test_installed_and_unset_exporters_are_not_missing() -> None:
    environ = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": " console ",
        "OTEL_LOGS_EXPORTER": " None ",
    }
    assert sdk.missing_exporters(environ) == []
    assert sdk.missing_exporters({}) == []


def test_an_unsupported_otlp_protocol_is_reported_for_its_signal_only() -> None:
    environ = {
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json",
        "OTEL_TRACES_EXPORTER": "console",
    }
    (item,) = sdk.missing_exporters(environ)
    assert item.signal == "metrics"
    assert "'http/json' is not an OTLP protocol" in item.reason
    assert item.remedies() == ["set OTEL_EXPORTER_OTLP_PROTOCOL to grpc or http/protobuf"]


def test_the_missing_exporters_are_left_out_meanwhile_with_one_warning_per_signal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,no_such_exporter")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "console")
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "no_such_exporter, another_missing_one")
    caplog.set_level(logging.WARNING, logger="otel_stream")
    with sdk.installed_exporters_only() as missing:
        inside = {name: os.environ[name] for _, name, _, _ in sdk.SIGNALS}
    assert inside == {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "console",
        "OTEL_LOGS_EXPORTER": "none",
    }
    assert [item.name for item in missing] == [
        "no_such_exporter",
        "no_such_exporter",
        "another_missing_one",
    ]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages
    traces, logs = messages
    assert traces.startswith("otel-stream: traces exported with console only: ")
    assert "the exporter 'no_such_exporter' is not installed" in traces
    assert "opentelemetry_traces_exporter" in traces  # where an unknown one must come from
    assert logs.startswith("otel-stream: logs not exported: ")
    assert "'another_missing_one' is not installed" in logs
    assert "OTEL_LOGS_EXPORTER=none does without it" in logs
    # Put back afterwards: the app and the processes it starts see what the user set.
    assert os.environ["OTEL_TRACES_EXPORTER"] == "console,no_such_exporter"
    assert os.environ["OTEL_LOGS_EXPORTER"] == "no_such_exporter, another_missing_one"


def test_the_advice_for_otlp_over_grpc_names_the_package_the_extra_and_the_protocol() -> None:
    item = sdk.MissingExporter(
        "logs", "OTEL_LOGS_EXPORTER", "otlp", "otlp_proto_grpc", "is not installed"
    )
    assert item.describe() == "'otlp' here means 'otlp_proto_grpc', which is not installed"
    assert item.remedies() == [
        "pip install opentelemetry-exporter-otlp-proto-grpc"
        " (or otel-stream's otlp extra, which has both OTLP protocols)",
        "set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
    ]


def test_a_signal_without_its_exporter_is_skipped_and_the_others_export(tmp_path: Path) -> None:
    """The report that started this: with the distro and no gRPC exporter, nothing at all
    was exported. Here metrics name an exporter that is not installed and logs an OTLP
    protocol the SDK lacks; traces still reach the console."""
    apps = write_apps(tmp_path)
    env = environment(
        None,
        "skip-missing",
        OTEL_STREAM_ENABLED="true",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="no_such_metrics_exporter",
        OTEL_LOGS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_LOGS_PROTOCOL="http/json",
    )
    process = serve_process(apps, [], "uvicorn", "starlette_app:app", env)
    with running(process):
        assert stream(process.url + "/chat/a") == BODY
        spans = wait_for_console_spans(process, 2)
    assert sorted(span["name"] for span in spans) == ["GET /chat/{room}", "GET /chat/{room} stream"]
    stderr = process.stderr()
    assert stderr.count("otel-stream: metrics not exported: ") == 1, stderr
    assert "'no_such_metrics_exporter' is not installed" in stderr
    assert stderr.count("otel-stream: logs not exported: ") == 1, stderr
    assert "traces not exported" not in stderr
    assert "start-up failed" not in stderr
    assert "Traceback" not in stderr


@pytest.mark.skipif(
    _installed("otlp_proto_grpc") or not _installed("distro", "opentelemetry_distro"),
    reason="needs opentelemetry-distro without the gRPC exporter (the test extra's set)",
)
def test_the_distros_grpc_defaults_without_the_grpc_exporter(tmp_path: Path) -> None:
    """The distro defaults every signal to OTLP over gRPC; with only the HTTP exporter
    installed, traces set to console still export, and metrics and logs are skipped."""
    apps = write_apps(tmp_path)
    env = environment(None, "distro-defaults", OTEL_STREAM_ENABLED="true")
    env["OTEL_TRACES_EXPORTER"] = "console"
    process = serve_process(apps, [], "uvicorn", "plain_app:app", env)
    with running(process):
        assert stream(process.url + "/chat/a") == BODY
        spans = wait_for_console_spans(process, 2)
    assert sorted(span["name"] for span in spans) == ["GET", "GET stream"]
    stderr = process.stderr()
    for signal in ("metrics", "logs"):
        assert stderr.count(f"otel-stream: {signal} not exported: ") == 1, stderr
    assert "'otlp' here means 'otlp_proto_grpc', which is not installed" in stderr
    assert "start-up failed" not in stderr


@pytest.mark.skipif(_installed("otlp_proto_grpc"), reason="the gRPC exporter is installed here")
def test_the_warning_docs_auto_instrumentation_shows_is_the_real_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for _, variable, protocol, _ in sdk.SIGNALS:
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(protocol, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "otlp")
    caplog.set_level(logging.WARNING, logger="otel_stream")
    with sdk.installed_exporters_only():
        pass
    (message,) = [record.getMessage() for record in caplog.records]
    doc = Path(__file__).resolve().parents[1] / "docs" / "auto-instrumentation.md"
    assert f"\n{message}\n" in doc.read_text(encoding="utf-8")
