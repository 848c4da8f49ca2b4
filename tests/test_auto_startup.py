"""The OTEL_STREAM_ENABLED start-up hook: nothing without the variable, once with it."""

from __future__ import annotations

import json
import logging
import os
import textwrap

import pytest

from otel_stream import autoinstrument
from tests import processes
from tests.processes import child_environment

_PROBE = textwrap.dedent(
    """
    import json, sys
    import otel_stream
    import uvicorn.config
    load = uvicorn.config.Config.load
    print(json.dumps({
        "patched": hasattr(load, "__wrapped__"),
        "patched_twice": hasattr(getattr(load, "__wrapped__", None), "__wrapped__"),
        "instrumentor_loaded": "otel_stream.instrumentor" in sys.modules,
    }))
    """
)


def probe(prefix: list[str], **variables: str) -> tuple[dict[str, bool], str]:
    exporters = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    env = child_environment(**{**exporters, **variables, "OTEL_LOGS_EXPORTER": "none"})
    result = processes.run([*prefix, "python", "-c", _PROBE], env=env, timeout=60, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.mark.parametrize("value", [None, "", "false", "0", "off"])
def test_without_the_variable_importing_changes_nothing(value: str | None) -> None:
    variables = {} if value is None else {"OTEL_STREAM_ENABLED": value}
    report, stderr = probe([], **variables)
    assert report == {"patched": False, "patched_twice": False, "instrumentor_loaded": False}
    assert stderr == ""


def test_the_variable_instruments_at_start_up() -> None:
    report, stderr = probe([], OTEL_STREAM_ENABLED="true")
    assert report == {"patched": True, "patched_twice": False, "instrumentor_loaded": True}
    assert stderr == ""


def test_with_opentelemetry_instrument_too_it_is_instrumented_once() -> None:
    report, stderr = probe(["opentelemetry-instrument"], OTEL_STREAM_ENABLED="true")
    assert report == {"patched": True, "patched_twice": False, "instrumentor_loaded": True}
    assert "already instrumented" not in stderr


def test_the_disable_list_wins_over_the_variable() -> None:
    report, _ = probe(
        [],
        OTEL_STREAM_ENABLED="true",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="requests, otel_stream",
    )
    assert report["patched"] is False


def test_disabled_by_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, disabled in [("otel_stream", True), ("fastapi, otel_stream ", True), ("*", True)]:
        monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", value)
        assert autoinstrument.disabled_by_opentelemetry() is disabled
    monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "otel_streaming,fastapi")
    assert autoinstrument.disabled_by_opentelemetry() is False


def test_start_never_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(autoinstrument, "_started", False)
    monkeypatch.setattr(autoinstrument, "_start", broken)
    caplog.set_level(logging.WARNING, logger="otel_stream")
    autoinstrument.start()
    autoinstrument.start()  # once per process
    (record,) = caplog.records
    assert "runs without otel-stream" in record.getMessage()


def test_a_process_gets_a_service_instance_id_even_from_an_old_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.sdk.resources import Resource

    monkeypatch.setattr(Resource, "create", classmethod(lambda cls, *a, **k: Resource({})))
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    with autoinstrument._service_instance_id():
        inside = os.environ["OTEL_RESOURCE_ATTRIBUTES"]
    assert inside.startswith("deployment.environment=test,service.instance.id=")
    assert len(inside.rsplit("=", 1)[1]) == 36
    assert os.environ["OTEL_RESOURCE_ATTRIBUTES"] == "deployment.environment=test"
