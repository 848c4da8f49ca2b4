"""The OTEL_STREAM_ENABLED start-up hook: nothing without the variable, once with it."""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

import pytest

from otel_stream import autoinstrument, sdk
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
    with sdk._service_instance_id():
        inside = os.environ["OTEL_RESOURCE_ATTRIBUTES"]
    assert inside.startswith("deployment.environment=test,service.instance.id=")
    assert len(inside.rsplit("=", 1)[1]) == 36
    assert os.environ["OTEL_RESOURCE_ATTRIBUTES"] == "deployment.environment=test"


def test_an_invalid_value_warns_once_with_the_start_up_default_and_is_removed() -> None:
    """``ture``: one warning saying the process is not instrumented; a middleware added in
    code afterwards records as usual without a second, contradicting warning."""
    code = textwrap.dedent(
        """
        import os
        import uvicorn.config
        from otel_stream import StreamingMiddleware
        from otel_stream.config import Settings
        StreamingMiddleware(lambda scope, receive, send: None)
        print(os.environ.get("OTEL_STREAM_ENABLED"), Settings.from_options().enabled,
              hasattr(uvicorn.config.Config.load, "__wrapped__"))
        """
    )
    env = child_environment(OTEL_STREAM_ENABLED="ture")
    result = processes.run(
        [sys.executable, "-c", code],
        env=env,
        timeout=60,
        check=True,
    )
    assert result.stdout.split() == ["None", "True", "False"]
    (warning,) = result.stderr.strip().splitlines()
    assert warning == (
        "otel-stream: invalid OTEL_STREAM_ENABLED='ture' (expected true or false); using the "
        "default unset (this process is not instrumented at start-up; a StreamingMiddleware "
        "added in code records as usual)"
    )


def _imported_modules(module: str) -> set[str]:

    spec = importlib.util.find_spec(module)
    assert spec is not None
    assert spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("otel_stream")}


def test_the_start_up_hook_the_instrumentor_and_the_sdk_set_up_import_no_circle() -> None:
    """autoinstrument -> instrumentor -> sdk, never back."""
    assert "otel_stream.instrumentor" in _imported_modules("otel_stream.autoinstrument")
    assert not {"otel_stream.sdk", "otel_stream.sdk.configure_sdk"} & _imported_modules(
        "otel_stream.autoinstrument"
    )
    instrumentor = _imported_modules("otel_stream.instrumentor")
    assert "otel_stream.sdk" in instrumentor
    assert not any(name.startswith("otel_stream.autoinstrument") for name in instrumentor)
    sdk_imports = _imported_modules("otel_stream.sdk")
    assert not any(
        name.startswith(("otel_stream.autoinstrument", "otel_stream.instrumentor"))
        for name in sdk_imports
    )
