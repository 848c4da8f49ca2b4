"""The documented install, in a fresh virtual environment, exports out of the box.

A new user runs ``pip install '.[otlp]'`` (and an ASGI server), then one of the two auto
ways in with nothing set but ``OTEL_TRACES_EXPORTER=console``: the metrics and logs
exporters stay at their defaults (the distro's OTLP over gRPC). Both ways must print the
request span and the stream span, and neither may fail to initialize. The environment is
built once per session from this checkout (a wheel, not these sources on PYTHONPATH),
with PyPI for the dependencies; it takes a minute or less.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.auto_support import ServerProcess, running, wait_for_console_spans
from tests.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPOSITORY = Path(__file__).resolve().parents[1]
BODY = "data: 0\n\ndata: 1\n\ndata: 2\n\n"
#: A small streaming app that does not mention otel-stream or OpenTelemetry.
APP = """
import asyncio

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for i in range(3):
        await asyncio.sleep(0.01)
        chunk = f"data: {i}\\n\\n".encode()
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
"""


@dataclass(frozen=True)
class FreshEnvironment:
    bin: Path
    app_dir: Path


@pytest.fixture(scope="session")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> FreshEnvironment:
    """A virtual environment with ``<this checkout>[otlp]`` and uvicorn, nothing else."""
    root = tmp_path_factory.mktemp("fresh-venv")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bin_dir = venv / "bin"
    pip_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [
            *(str(bin_dir / "python"), "-m", "pip", "install", "-q"),
            *("--disable-pip-version-check", "--no-input"),
            f"{REPOSITORY}[otlp]",
            "uvicorn",
        ],
        env=pip_env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    installed = subprocess.run(
        [str(bin_dir / "python"), "-c", "import otel_stream; print(otel_stream.__file__)"],
        env=clean_environment(bin_dir),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert installed.startswith(str(venv)), installed  # the installed wheel, not ./src
    app_dir = root / "app"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(APP)
    return FreshEnvironment(bin_dir, app_dir)


def clean_environment(bin_dir: Path, **variables: str) -> dict[str, str]:
    """What a new user's shell has: no OTEL_* variable, no PYTHONPATH, the venv first."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "FASTAPI_OTEL"))
        and key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(variables)
    return env


@pytest.mark.parametrize(
    ("way", "prefix", "variables"),
    [
        ("opentelemetry-instrument", ["opentelemetry-instrument"], {}),
        ("OTEL_STREAM_ENABLED", [], {"OTEL_STREAM_ENABLED": "true"}),
    ],
)
def test_the_documented_install_exports_both_spans(
    fresh: FreshEnvironment, way: str, prefix: list[str], variables: dict[str, str]
) -> None:
    port = free_port()
    argv = [*prefix, "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)]
    env = clean_environment(fresh.bin, OTEL_TRACES_EXPORTER="console", **variables)
    server = ServerProcess(argv, env, fresh.app_dir, port, name=way)
    with running(server):
        with (
            httpx.Client(timeout=10) as client,
            client.stream("GET", f"{server.url}/chat") as response,
        ):
            assert response.status_code == 200
            assert response.read().decode() == BODY
        spans = wait_for_console_spans(server, 2)
        # The metrics exporter, the distro's OTLP over gRPC, has no collector to reach:
        # only the spans are waited for; a short stop is enough.
        server.stop(timeout=3)
    names = sorted(span["name"] for span in spans)
    assert names == ["GET", "GET stream"], server.stdout()
    request, stream = sorted(spans, key=lambda span: len(span["name"]))
    assert request["kind"] == "SpanKind.SERVER"
    assert stream["parent_id"] == request["context"]["span_id"]
    assert stream["attributes"]["http.stream.termination_reason"] == "completed"
    stderr = server.stderr()
    assert "Failed to auto initialize" not in stderr, stderr
    assert "otel-stream:" not in stderr, stderr  # no skipped signal, no failed start-up
