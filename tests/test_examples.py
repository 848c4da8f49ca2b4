"""The examples run as documented and print otel-stream's two spans; the README shows them.

Each example is served by uvicorn on loopback, in its own process group, as its docstring
says (``--app-dir examples`` stands for starting in that directory); a real streaming
client (httpx) reads the answer, and the spans are read back from what the console
exporter printed.
"""

from __future__ import annotations

import ast
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.auto_support import ServerProcess, console_spans, environment, running
from tests.servers import free_port

REPOSITORY = Path(__file__).resolve().parents[1]
EXAMPLES = REPOSITORY / "examples"
WORDS = ["Hello", " from", " a", " stream", "."]


def serve(module: str, directory: Path) -> ServerProcess:
    """``uvicorn module:app`` as if started in examples/; its output goes to ``directory``."""
    port = free_port()
    argv = [
        *("uvicorn", f"{module}:app", "--app-dir", str(EXAMPLES)),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]
    return ServerProcess(argv, environment(None, module), directory, port, name=module)


def chat(url: str) -> tuple[list[float], str]:
    """POST a streaming chat completion; the arrival time of each read, and the body."""
    arrivals, body = [], b""
    started = time.monotonic()
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{url}/v1/chat/completions", json={"stream": True}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for chunk in response.iter_raw():
            arrivals.append(time.monotonic() - started)
            body += chunk
    return arrivals, body.decode()


def wait_for(server: ServerProcess, name: str, timeout: float = 10.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        spans = console_spans(server.stdout())
        if any(span["name"] == name for span in spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("module", "request_name"),
    [
        ("fastapi_app", "POST /v1/chat/completions"),
        ("asgi_app", "POST"),
    ],
)
def test_the_example_streams_and_prints_the_request_and_stream_spans(
    module: str, request_name: str, tmp_path: Path
) -> None:
    server = serve(module, tmp_path)
    with running(server):
        arrivals, body = chat(server.url)
        spans = wait_for(server, f"{request_name} stream")
    # The answer streamed: its events arrived spread out, not in one piece at the end.
    contents = [
        event["choices"][0]["delta"]["content"]
        for event in (
            json.loads(line.removeprefix("data: "))
            for line in body.split("\n\n")
            if line.startswith("data: {")
        )
    ]
    assert contents == WORDS
    assert body.endswith("data: [DONE]\n\n")
    assert len(arrivals) >= 3, arrivals
    assert arrivals[-1] - arrivals[0] > 0.1, arrivals
    # otel-stream's two spans (FastAPI's own telemetry, when it has some, adds a SERVER span
    # of the same name around them): the request span has the time to first byte.
    (request,) = [
        s
        for s in spans
        if s["name"] == request_name and "http.stream.time_to_first_byte" in s["attributes"]
    ]
    (stream,) = [s for s in spans if s["name"] == f"{request_name} stream"]
    assert stream["parent_id"] == request["context"]["span_id"]
    assert stream["kind"] == "SpanKind.INTERNAL"
    assert request["attributes"]["http.request.method"] == "POST"
    assert request["attributes"]["http.response.status_code"] == 200
    # The split: the request span ends at the first body byte, where the stream span
    # starts; the stream span covers the rest (five tokens 50 ms apart).
    assert abs(seconds_between(request["end_time"], stream["start_time"])) < 0.001
    assert seconds_between(stream["start_time"], stream["end_time"]) > 0.15
    assert seconds_between(request["start_time"], request["end_time"]) < 0.2
    assert stream["attributes"]["http.stream.termination_reason"] == "completed"
    assert stream["attributes"]["http.stream.chunks"] == 6
    assert "Traceback" not in server.stderr()


def seconds_between(start: str, end: str) -> float:
    """Seconds from one console-exporter timestamp (``2026-01-01T00:00:00.000000Z``) to another."""

    def parse(text: str) -> datetime:
        return datetime.fromisoformat(text.removesuffix("Z"))

    return (parse(end) - parse(start)).total_seconds()


# The README's quick start is the FastAPI example ------------------------------------------


def readme_quick_start() -> str:
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n## Quick start\n")
    end = readme.find("\n## ", start + 1)
    (code,) = re.findall(r"```python\n(.*?)```", readme[start:end], flags=re.DOTALL)
    return code


def without_docstring(source: str) -> str:
    module = ast.parse(source)
    first = module.body[0]
    assert isinstance(first, ast.Expr)
    assert isinstance(first.value, ast.Constant)
    lines = source.splitlines(keepends=True)
    return "".join(lines[first.end_lineno :]).lstrip("\n")


def test_the_readme_quick_start_is_the_fastapi_example() -> None:
    example = (EXAMPLES / "fastapi_app.py").read_text(encoding="utf-8")
    assert readme_quick_start() == without_docstring(example)


def test_the_readme_names_the_commands_the_example_documents() -> None:
    example = (EXAMPLES / "fastapi_app.py").read_text(encoding="utf-8")
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    for command in ("uvicorn fastapi_app:app", "curl -N -X POST"):
        assert command in example
        assert command in readme
