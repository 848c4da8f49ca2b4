"""One SERVER span per request, in real processes started with auto-instrumentation.

The in-process tests of tests/test_integrations.py cover every combination in detail;
these check that the same trees come out of ``opentelemetry-instrument`` (which also
loads contrib's FastAPI instrumentor when it is installed) and of
``OTEL_STREAM_ENABLED=true``, through the OTLP exporter.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.auto_support import (
    environment,
    of_service,
    running,
    serve_process,
    stream,
    tree,
    write_apps,
)
from tests.otlp_receiver import OTLPReceiver

BODY = "data: 0\n\ndata: 1\n\ndata: 2\n\n"
ROUTE = "GET /chat/{room}"
INSTRUMENT = ["opentelemetry-instrument"]
NO_CONTRIB_FASTAPI = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "fastapi"}
ENABLED = {"OTEL_STREAM_ENABLED": "true"}

FASTAPI_BUILTIN = [
    f"{ROUTE} (SERVER, fastapi)",
    f"  {ROUTE} (INTERNAL, otel_stream)",
    "    fastapi.dependencies (INTERNAL, fastapi)",
    "    fastapi.endpoint (INTERNAL, fastapi)",
    f"    {ROUTE} stream (INTERNAL, otel_stream)",
]
STARLETTE_BUILTIN = [
    f"{ROUTE} (SERVER, starlette)",
    f"  {ROUTE} (INTERNAL, otel_stream)",
    f"    {ROUTE} stream (INTERNAL, otel_stream)",
]
ALONE = [f"{ROUTE} (SERVER, otel_stream)", f"  {ROUTE} stream (INTERNAL, otel_stream)"]


@pytest.mark.parametrize(
    ("prefix", "app", "extra", "expected", "args"),
    [
        pytest.param(
            INSTRUMENT,
            "fastapi_app",
            NO_CONTRIB_FASTAPI,
            FASTAPI_BUILTIN,
            [],
            id="instrument-fastapi",
        ),
        # The SDK is configured when the lifespan startup completes, before FastAPI
        # decides, at the first request, whether its telemetry is on.
        pytest.param([], "fastapi_app", ENABLED, FASTAPI_BUILTIN, [], id="env-fastapi"),
        # With no lifespan, when uvicorn has loaded the app.
        pytest.param(
            [],
            "fastapi_app",
            ENABLED,
            FASTAPI_BUILTIN,
            ["--lifespan", "off"],
            id="env-fastapi-lifespan-off",
        ),
        pytest.param(
            [], "starlette_otel_app", ENABLED, STARLETTE_BUILTIN, [], id="env-starlette-otel"
        ),
        pytest.param(INSTRUMENT, "starlette_app", {}, ALONE, [], id="instrument-starlette"),
    ],
)
def test_one_server_span_per_request(
    receiver: OTLPReceiver,
    tmp_path: Path,
    prefix: list[str],
    app: str,
    extra: dict[str, str],
    expected: list[str],
    args: list[str],
) -> None:
    env = environment(receiver, "combo", **extra)
    apps = write_apps(tmp_path)
    process = serve_process(apps, prefix, "uvicorn", f"{app}:app", env, *args)
    with running(process):
        assert stream(process.url + "/chat/a") == BODY
        assert receiver.wait_for(lambda: len(receiver.spans()) >= len(expected))
    spans = of_service(receiver.spans(), "combo")
    assert tree(spans) == expected


def test_contrib_fastapi_instrumentor_loaded_by_opentelemetry_instrument(
    receiver: OTLPReceiver, tmp_path: Path
) -> None:
    env = environment(receiver, "contrib")
    process = serve_process(write_apps(tmp_path), INSTRUMENT, "uvicorn", "fastapi_app:app", env)
    with running(process):
        assert stream(process.url + "/chat/a") == BODY
        assert receiver.wait_for(
            lambda: {s.name for s in receiver.spans()} >= {ROUTE, f"{ROUTE} stream"}
        )
    lines = tree(of_service(receiver.spans(), "contrib"))
    assert lines[0] == f"{ROUTE} (SERVER, opentelemetry.instrumentation.fastapi)"
    assert f"  {ROUTE} (INTERNAL, otel_stream)" in lines
    assert f"    {ROUTE} stream (INTERNAL, otel_stream)" in lines
    assert sum("SERVER" in line for line in lines) == 1
    assert not any("(INTERNAL, fastapi)" in line for line in lines)  # FastAPI stood down


def test_an_app_that_configures_opentelemetry_keeps_its_providers(
    receiver: OTLPReceiver, tmp_path: Path
) -> None:
    env = environment(receiver, "not-this-name", **ENABLED)
    apps = write_apps(tmp_path)
    process = serve_process(apps, [], "uvicorn", "self_configured_app:app", env)
    with running(process):
        assert stream(process.url + "/chat/a") == BODY
        assert receiver.wait_for(lambda: len(receiver.spans()) >= 2)
    assert tree(of_service(receiver.spans(), "configured-by-the-app")) == ALONE
    assert of_service(receiver.spans(), "not-this-name") == []
    assert "Overriding of current" not in process.stderr()
