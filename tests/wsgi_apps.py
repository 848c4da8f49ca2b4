"""WSGI apps whose streaming behaviour the WSGI tests provoke on purpose.

Three kinds, as users write them: a plain WSGI callable (a generator per response), a
Flask app (``Response(generate())``, ``stream_with_context``, an OpenAI-compatible chat
completions route) and a Django project (``StreamingHttpResponse``), configured here in
code. What a stream does is set by its query string (``count``, ``pace``, ``first``,
``fail``...), so one app serves every case; query values never reach telemetry.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

from opentelemetry import trace
from opentelemetry.trace import TracerProvider

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

#: How many times each response iterable's ``close()`` ran, by the request's X-Test-Id.
CLOSES: Counter[str] = Counter()
_closes_lock = threading.Lock()


def query(environ: Environ) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}


def number(values: dict[str, str], name: str, default: float) -> float:
    return float(values.get(name, default))


def sse_events(values: dict[str, str], tag: str = "") -> Iterator[bytes]:
    """``count`` SSE data events: ``comments`` pings at once, ``first`` s before the
    first event and ``pace`` s between events; ``fail``: raise at that event; ``size``:
    each event's data padded to that many bytes."""
    count = int(number(values, "count", 3))
    pace = number(values, "pace", 0.0)
    fail = values.get("fail")
    size = int(number(values, "size", 0))
    for _ in range(int(number(values, "comments", 0))):
        yield b": ping\n\n"
    time.sleep(number(values, "first", 0.0))
    for index in range(count):
        if fail is not None and index == int(fail):
            raise ValueError("model failed mid-stream")
        if index and pace:
            time.sleep(pace)
        data = f"{tag}{index}"
        yield f"data: {data.ljust(size, '.')}\n\n".encode()


def openai_events(values: dict[str, str]) -> Iterator[bytes]:
    """An OpenAI chat-completions stream: a role delta, ``count`` tokens, the finish chunk
    (``finish``: its reason, ``stop`` by default), the usage chunk, then ``data: [DONE]``
    unless ``done=0``."""
    count = int(number(values, "count", 3))
    pace = number(values, "pace", 0.0)
    time.sleep(number(values, "first", 0.0))

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "test-model",
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    yield event(
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    )
    for index in range(count):
        if pace:
            time.sleep(pace)
        delta = {"content": f"tok{index} "}
        yield event([{"index": 0, "delta": delta, "finish_reason": None}])
    finish = values.get("finish", "stop")
    yield event([{"index": 0, "delta": {}, "finish_reason": finish}])
    usage = {"prompt_tokens": 5, "completion_tokens": count, "total_tokens": 5 + count}
    yield event([], usage=usage)
    if values.get("done", "1") != "0":
        yield b"data: [DONE]\n\n"


class Closing:
    """A response iterable that counts its ``close()`` calls in :data:`CLOSES`."""

    def __init__(self, chunks: Iterable[bytes], test_id: str) -> None:
        self.chunks = iter(chunks)
        self.test_id = test_id

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self.chunks)

    def close(self) -> None:
        with _closes_lock:
            CLOSES[self.test_id] += 1


def plain_wsgi_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """A WSGI app without a framework; the path says what it does."""
    path = environ.get("PATH_INFO", "/")
    values = query(environ)
    test_id = environ.get("HTTP_X_TEST_ID", "")
    sse = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
    if path == "/plain":
        body = b"plain answer"
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return Closing([body], test_id) if test_id else [body]
    if path == "/boom":
        raise RuntimeError("failed before the response")
    if path == "/file":
        body = b"f" * 20_000
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))],
        )
        return environ["wsgi.file_wrapper"](io.BytesIO(body), 8192)  # type: ignore[no-any-return]
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"then returned"]
    if path == "/openai":
        start_response("200 OK", sse)
        return Closing(openai_events(values), test_id)
    if path == "/ndjson":
        start_response("200 OK", [("Content-Type", "application/x-ndjson")])
        lines = (
            json.dumps({"line": i}).encode() + b"\n" for i in range(int(number(values, "count", 3)))
        )
        return Closing(lines, test_id)
    if path == "/empty":
        start_response("204 No Content", [])
        return Closing([], test_id)
    if path.startswith("/sse"):
        start_response("200 OK", sse)
        return Closing(sse_events(values), test_id)
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"not found"]


# Flask -----------------------------------------------------------------------------------


def flask_app(tracer_provider: TracerProvider | None = None) -> Any:
    """``/chat/<room>``, ``/ctx/<room>`` (stream_with_context), ``/v1/chat/completions``,
    ``/plain``, ``/fail/<room>``, ``/spans/<room>`` (the app makes a span per chunk),
    ``/loop/<room>`` (one span around the whole body, a child span per token)."""
    from flask import Flask, Response, request, stream_with_context

    app = Flask("wsgi_test_app")
    tracer = trace.get_tracer("wsgi_test_app", tracer_provider=tracer_provider)

    @app.get("/chat/<room>")
    def chat(room: str) -> Response:
        return Response(
            sse_events(query(request.environ), f"{room}-"), mimetype="text/event-stream"
        )

    @app.get("/ctx/<room>")
    def with_context(room: str) -> Response:
        @stream_with_context
        def generate() -> Iterator[str]:
            # the request is still reachable while the body streams
            for index in range(int(request.args.get("count", "3"))):
                yield f"data: {request.args.get('tag', 'tag')}-{room}-{index}\n\n"

        return Response(generate(), mimetype="text/event-stream")

    @app.post("/v1/chat/completions")
    def completions() -> Response:
        values = query(request.environ)
        values.setdefault("count", str(request.get_json(force=True).get("max_tokens", 3)))
        return Response(openai_events(values), mimetype="text/event-stream")

    @app.get("/plain")
    def plain() -> str:
        return "plain answer"

    @app.get("/fail/<room>")
    def fail(room: str) -> Response:
        values = {**query(request.environ), "fail": "1"}
        return Response(sse_events(values), mimetype="text/event-stream")

    @app.get("/spans/<room>")
    def spans(room: str) -> Response:
        with tracer.start_as_current_span("prepare"):
            pass

        def generate() -> Iterator[bytes]:
            for index in range(3):
                with tracer.start_as_current_span(f"token {index}"):
                    yield f"data: {index}\n\n".encode()

        return Response(generate(), mimetype="text/event-stream")

    @app.get("/loop/<room>")
    def loop(room: str) -> Response:
        def generate() -> Iterator[bytes]:
            with tracer.start_as_current_span("generate"):
                for index in range(3):
                    with tracer.start_as_current_span(f"token {index}"):
                        pass
                    yield f"data: {index}\n\n".encode()

        return Response(generate(), mimetype="text/event-stream")

    return app


# Django ----------------------------------------------------------------------------------

DJANGO_SETTINGS: dict[str, Any] = {
    "DEBUG": False,
    "SECRET_KEY": "wsgi-tests-only",
    "ALLOWED_HOSTS": ["*"],
    "ROOT_URLCONF": "tests.wsgi_apps",
    "INSTALLED_APPS": [],
    "MIDDLEWARE": ["django.middleware.common.CommonMiddleware"],
    "USE_TZ": True,
    "LOGGING_CONFIG": None,
}


def _chat(request: Any, room: str) -> Any:
    from django.http import StreamingHttpResponse

    events = sse_events(query(request.META), f"{room}-")
    return StreamingHttpResponse(events, content_type="text/event-stream")


def _plain(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse(b"plain answer", content_type="text/plain")


def _fail(request: Any, room: str) -> Any:
    from django.http import StreamingHttpResponse

    events = sse_events({**query(request.META), "fail": "1"})
    return StreamingHttpResponse(events, content_type="text/event-stream")


def __getattr__(name: str) -> Any:
    # Django's ROOT_URLCONF: built on first use, so importing this module needs no Django.
    if name == "urlpatterns":
        from django.urls import path

        return [
            path("chat/<str:room>", _chat),
            path("plain", _plain),
            path("fail/<str:room>", _fail),
        ]
    raise AttributeError(name)


def configure_django() -> None:
    """Configure Django for this process once: the settings above, from
    ``DJANGO_SETTINGS_MODULE`` (``tests.wsgi_django_settings``) when it is set."""
    import os

    import django
    from django.conf import settings

    if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
        settings.configure(**DJANGO_SETTINGS)
    django.setup()


def django_app() -> Any:
    """Django's WSGI handler for the project above, as ``get_wsgi_application()`` builds it."""
    configure_django()
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()
