"""Apps and real server processes for the auto-instrumentation tests.

Each test writes the app modules it needs into its own ``tmp_path`` and starts servers
as separate processes on free loopback ports, exactly as a user would type them
(``uvicorn app:app``, ``opentelemetry-instrument uvicorn app:app``, ...). Nothing in
the apps mentions otel-stream: instrumentation comes from the command or the variable.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests import processes
from tests.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.processes import child_environment
from tests.servers import free_port

_STREAM = """
import asyncio
import os

async def tokens():
    for i in range(3):
        await asyncio.sleep(0.01)
        yield f"data: {i}\\n\\n"
"""

#: The start of a bare ASGI app's source that answers the lifespan protocol; the app's
#: HTTP handling follows, indented under ``async def app``.
LIFESPAN_APP_START = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
"""

APPS: dict[str, str] = {
    # A bare ASGI app: only the server-level patches can reach it.
    "plain_app": _STREAM
    + LIFESPAN_APP_START
    + """
    headers = [(b"content-type", b"text/event-stream"), (b"x-pid", str(os.getpid()).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    async for chunk in tokens():
        await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b""})
""",
    "starlette_app": _STREAM
    + """
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

async def chat(request):
    return StreamingResponse(tokens(), media_type="text/event-stream")

app = Starlette(routes=[Route("/chat/{room}", chat)])
""",
    # FastAPI with its built-in telemetry (on whenever a tracer provider is set).
    "fastapi_app": _STREAM
    + """
from fastapi import Depends, FastAPI
from fastapi.responses import StreamingResponse

def room_of(room: str) -> str:
    return room

app = FastAPI()

@app.get("/chat/{room}")
async def chat(room: str = Depends(room_of)):
    return StreamingResponse(tokens(), media_type="text/event-stream")
""",
    # Starlette's own OpenTelemetry middleware.
    "starlette_otel_app": _STREAM
    + """
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.opentelemetry import OpenTelemetryMiddleware
from starlette.responses import StreamingResponse
from starlette.routing import Route

async def chat(request):
    return StreamingResponse(tokens(), media_type="text/event-stream")

app = Starlette(
    routes=[Route("/chat/{room}", chat)], middleware=[Middleware(OpenTelemetryMiddleware)]
)
""",
    # An app that configures OpenTelemetry itself, in its startup handler.
    "self_configured_app": _STREAM
    + """
import contextlib

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

@contextlib.asynccontextmanager
async def lifespan(app):
    resource = Resource.create({"service.name": "configured-by-the-app"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(resource=resource))
    yield

async def chat(request):
    return StreamingResponse(tokens(), media_type="text/event-stream")

app = Starlette(routes=[Route("/chat/{room}", chat)], lifespan=lifespan)
""",
    # `python -m serve_plain PORT`: a module that runs uvicorn itself.
    "serve_plain": """
import sys

import uvicorn

from plain_app import app

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
""",
}


def write_apps(directory: Path) -> Path:
    for name, source in APPS.items():
        (directory / f"{name}.py").write_text(source)
    return directory


def server_command(server: str, target: str, port: int) -> list[str]:
    """The usual command line that serves ``target`` (``module:attribute``) on ``port``."""
    host, where = "127.0.0.1", str(port)
    commands = {
        "uvicorn": ["uvicorn", target, "--host", host, "--port", where],
        "hypercorn": ["hypercorn", target, "--bind", f"{host}:{where}"],
        "granian": ["granian", "--interface", "asgi", "--host", host, "--port", where, target],
        "daphne": ["daphne", "-b", host, "-p", where, target],
        "gunicorn": [
            *("gunicorn", "-k", "uvicorn.workers.UvicornWorker"),
            *("-b", f"{host}:{where}", target),
        ],
        "python -m": [sys.executable, "-m", target.split(":")[0], where],
    }
    return commands[server]


def environment(
    receiver: OTLPReceiver | None, service: str, *first_on_path: Path, **extra: str
) -> dict[str, str]:
    """``child_environment(*first_on_path)`` exporting to ``receiver`` (when given) as
    ``service``, plus the given variables."""
    receiver_env = receiver.environment() if receiver is not None else {}
    return child_environment(
        *first_on_path, **{**receiver_env, "OTEL_SERVICE_NAME": service, **extra}
    )


@dataclass
class ServerProcess:
    """One server process, its output kept in files (no pipe can fill up and block it)."""

    argv: Sequence[str]
    env: dict[str, str]
    cwd: Path
    port: int
    name: str = "server"
    process: subprocess.Popen[bytes] | None = None
    outputs: dict[str, Path] = field(default_factory=dict)

    def start(self) -> ServerProcess:
        files = {}
        for stream in ("stdout", "stderr"):
            self.outputs[stream] = self.cwd / f"{self.name}.{self.port}.{stream}"
            files[stream] = self.outputs[stream].open("wb")
        self.process = processes.start(
            self.argv, env=self.env, cwd=self.cwd, stdout=files["stdout"], stderr=files["stderr"]
        )
        for handle in files.values():
            handle.close()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.stderr()}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server gracefully (SIGTERM to its process group, so telemetry flushes),
        and whatever its group still holds once it has exited (a worker of a parent that
        was killed or terminated alone)."""
        if self.process is not None:
            processes.stop(self.process, timeout)

    def kill(self) -> None:
        """SIGKILL the server and its whole group: no shutdown, nothing flushes."""
        if self.process is not None:
            processes.kill(self.process)

    def stdout(self) -> str:
        return self.outputs["stdout"].read_text(errors="replace")

    def stderr(self) -> str:
        return self.outputs["stderr"].read_text(errors="replace")


@contextlib.contextmanager
def running(*servers: ServerProcess) -> Iterator[tuple[ServerProcess, ...]]:
    """Start all ``servers`` at once, wait until each listens, stop them all on exit."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield servers
    except BaseException:
        for server in servers:
            server.stop()
            print(f"--- {' '.join(server.argv)}: stderr ---\n{server.stderr()[-4000:]}")
        raise
    finally:
        for server in servers:
            server.stop()


def serve_process(
    directory: Path,
    argv_prefix: Sequence[str],
    server: str,
    target: str,
    env: dict[str, str],
    *extra: str,
) -> ServerProcess:
    port = free_port()
    argv = [*argv_prefix, *server_command(server, target, port), *extra]
    name = env.get("OTEL_SERVICE_NAME", "server")
    return ServerProcess(argv, env, directory, port, name=name)


def stream(url: str) -> str:
    """GET ``url`` and read the whole streamed body."""
    with httpx.Client(timeout=10) as client, client.stream("GET", url) as response:
        assert response.status_code == 200, response.status_code
        return response.read().decode()


def of_service(spans: Sequence[ReceivedSpan], service: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.resource.get("service.name") == service]


def tree(spans: Sequence[ReceivedSpan]) -> list[str]:
    """Spans of one trace as indented ``name (KIND, scope)`` lines, children in start order."""
    by_parent: dict[str, list[ReceivedSpan]] = {}
    ids = {span.span_id for span in spans}
    for span in sorted(spans, key=lambda s: (s.start_ns, s.name)):
        parent = span.parent_span_id if span.parent_span_id in ids else ""
        by_parent.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in by_parent.get(parent, []):
            lines.append(f"{'  ' * depth}{span.name} ({span.kind}, {span.scope})")
            walk(span.span_id, depth + 1)

    walk("", 0)
    return lines


def console_spans(text: str) -> list[dict[str, Any]]:
    """The spans the SDK's console exporter printed in ``text`` (other output skipped).

    The exporter writes each span as an indented JSON object starting on a line of its own.
    """
    decoder = json.JSONDecoder()
    spans = []
    for match in re.finditer(r"^\{", text, flags=re.MULTILINE):
        with contextlib.suppress(ValueError):
            value, _ = decoder.raw_decode(text, match.start())
            if isinstance(value, dict) and "context" in value and "kind" in value:
                spans.append(value)
    return spans


def wait_for_console_spans(
    process: ServerProcess, count: int, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """The console spans ``process`` printed, once ``count`` are there or ``timeout`` passed.

    The batch span processor prints every 5 s; a loaded machine can take several rounds.
    """
    deadline = time.monotonic() + timeout
    while True:
        spans = console_spans(process.stdout())
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)
