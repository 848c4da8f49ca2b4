"""StreamingWSGIMiddleware in detail, on werkzeug's and waitress' servers in this process.

What the cross-server tests (test_wsgi.py) do not cover: ``close()`` of the app's
iterable, ``wsgi.file_wrapper``, SSE comments, the spans an app makes while its body
streams, metrics, propagation, exclusion, the never-twice rule, telemetry failures.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace

from otel_stream import StreamingWSGIMiddleware
from tests import wsgi_apps
from tests.rawclient import read_until
from tests.telemetry_harness import Telemetry
from tests.wsgi_servers import IN_PROCESS, open_raw, read_all, received, serve


def get(url: str, **headers: str) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.get(url, headers=headers)


def stream_spans(telemetry: Telemetry) -> list[Any]:
    return [span for span in telemetry.spans() if span.name.endswith(" stream")]


def wait_for_spans(telemetry: Telemetry, count: int, timeout: float = 5.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while len(telemetry.spans()) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    return telemetry.spans()


# close() ----------------------------------------------------------------------------------


@pytest.mark.parametrize("server", IN_PROCESS)
@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/sse?count=3", "completed"),
        ("/sse?count=5&fail=2", "app_error"),
        ("/plain", "completed"),
        ("/sse?count=500&pace=0.02", "client_disconnect"),
    ],
)
def test_the_apps_iterable_is_closed_exactly_once(
    telemetry: Telemetry, server: str, target: str, reason: str
) -> None:
    app = StreamingWSGIMiddleware(wsgi_apps.plain_wsgi_app, **telemetry.providers)
    test_id = uuid.uuid4().hex
    with serve(app, server) as url:
        if reason == "client_disconnect":
            sock = open_raw(url, target, {"X-Test-Id": test_id})
            read_until(sock, b"data: 2\n")
            sock.close()
        else:
            read_all(url, target, test_id)
        spans = wait_for_spans(telemetry, 1 if target == "/plain" else 2)
        deadline = time.monotonic() + 5
        while wsgi_apps.CLOSES[test_id] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
    assert wsgi_apps.CLOSES[test_id] == 1
    ended = [span for span in spans if "http.stream.termination_reason" in (span.attributes or {})]
    assert [span.attributes["http.stream.termination_reason"] for span in ended] == [reason]


def test_close_before_iterating_closes_the_app_and_ends_the_exchange(telemetry: Telemetry) -> None:
    """A server may close the iterable without asking for an item (it gave up)."""
    app = StreamingWSGIMiddleware(wsgi_apps.plain_wsgi_app, **telemetry.providers)
    environ = wsgi_environ("/sse?count=3", HTTP_X_TEST_ID="early")
    body = app(environ, lambda status, headers, exc_info=None: lambda data: None)
    body.close()  # type: ignore[attr-defined]
    body.close()  # type: ignore[attr-defined]
    assert wsgi_apps.CLOSES["early"] == 1
    (span,) = telemetry.spans()
    assert span.attributes["http.stream.termination_reason"] == "client_disconnect"
    assert span.name == "GET"  # no first byte: the request span only


def wsgi_environ(target: str, **extra: Any) -> dict[str, Any]:
    path, _, query = target.partition("?")
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    environ.update(extra)
    return environ


# file_wrapper, non-streamed, SSE comments -------------------------------------------------


def test_a_file_wrapper_response_passes_through_untouched(telemetry: Telemetry) -> None:
    app = StreamingWSGIMiddleware(wsgi_apps.plain_wsgi_app, **telemetry.providers)

    class FileWrapper:
        def __init__(self, file: Any, block_size: int = 8192) -> None:
            self.file = file

    environ = wsgi_environ("/file", **{"wsgi.file_wrapper": FileWrapper})
    result = app(environ, lambda status, headers, exc_info=None: lambda data: None)
    assert type(result) is FileWrapper  # the server can still send it zero-copy
    (span,) = telemetry.spans()
    assert span.attributes["http.stream.termination_reason"] == "completed"
    assert "http.stream.chunks" not in span.attributes


def test_waitress_serves_a_file_wrapper_response_as_one_chunk(telemetry: Telemetry) -> None:
    app = StreamingWSGIMiddleware(wsgi_apps.plain_wsgi_app, **telemetry.providers)
    with serve(app, "waitress") as url:
        response = get(url + "/file")
    assert response.content == b"f" * 20_000
    (span,) = wait_for_spans(telemetry, 1)
    assert span.name == "GET"
    assert span.attributes["http.stream.termination_reason"] == "completed"
    assert span.attributes["http.stream.time_to_first_byte"] > 0


@pytest.mark.parametrize("server", IN_PROCESS)
def test_sse_comments_are_not_the_first_byte(telemetry: Telemetry, server: str) -> None:
    app = StreamingWSGIMiddleware(wsgi_apps.plain_wsgi_app, **telemetry.providers)
    with serve(app, server) as url:
        response = get(url + "/sse?count=2&comments=2&first=0.2")
    assert response.content.startswith(b": ping\n\n: ping\n\ndata: 0\n\n")
    request, stream = sorted(wait_for_spans(telemetry, 2), key=lambda span: span.start_time)
    assert request.attributes["http.stream.time_to_first_byte"] >= 0.2
    assert request.attributes["http.stream.time_to_first_raw_byte"] < 0.1
    assert stream.attributes["http.stream.chunks"] == 4  # the pings are chunks all the same


@pytest.mark.parametrize("server", IN_PROCESS)
def test_a_generator_of_one_item_is_a_stream_of_one_chunk(
    telemetry: Telemetry, server: str
) -> None:
    """Without a length or Content-Length the middleware cannot know the first item is the
    last: as a StreamingResponse with one chunk on ASGI, it is a stream."""
    app = StreamingWSGIMiddleware(wsgi_apps.plain_wsgi_app, **telemetry.providers)
    with serve(app, server) as url:
        assert get(url + "/sse?count=1").content == b"data: 0\n\n"
    (stream,) = [span for span in wait_for_spans(telemetry, 2) if span.name.endswith("stream")]
    assert stream.attributes["http.stream.chunks"] == 1


def test_a_body_that_says_it_does_not_stream_gets_the_request_span_only(
    telemetry: Telemetry,
) -> None:
    """Django's HttpResponse without CommonMiddleware has no Content-Length, but it says
    ``streaming = False``: its content is whole."""

    class WholeBody:
        streaming = False

        def __iter__(self) -> Iterator[bytes]:
            return iter([b"whole answer"])

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return WholeBody()

    with serve(StreamingWSGIMiddleware(app, **telemetry.providers), "werkzeug") as url:
        assert get(url + "/").content == b"whole answer"
    (span,) = wait_for_spans(telemetry, 1)
    time.sleep(0.05)
    assert [s.name for s in telemetry.spans()] == ["GET"]
    assert span.attributes["http.stream.termination_reason"] == "completed"


# The app's own spans ----------------------------------------------------------------------


@pytest.mark.parametrize("server", IN_PROCESS)
def test_spans_the_app_makes_while_streaming_are_children_of_the_request_span(
    telemetry: Telemetry, server: str
) -> None:
    app = wsgi_apps.flask_app(telemetry.tracer_provider)
    app.wsgi_app = StreamingWSGIMiddleware(app.wsgi_app, **telemetry.providers)
    with serve(app, server) as url:
        assert get(url + "/spans/r1").content == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    spans = {span.name: received(span) for span in wait_for_spans(telemetry, 6)}
    request = spans["GET /spans/<room>"]
    assert spans["GET /spans/<room> stream"].parent_span_id == request.span_id
    for name in ("prepare", "token 0", "token 1", "token 2"):
        assert spans[name].trace_id == request.trace_id, name
        assert spans[name].parent_span_id == request.span_id, name
    # "token 1" and "token 2" started after the first byte: the request span had ended
    assert spans["token 1"].start_ns >= request.end_ns


@pytest.mark.parametrize("server", IN_PROCESS)
def test_a_span_the_app_keeps_open_across_items_stays_the_parent(
    telemetry: Telemetry, server: str
) -> None:
    """The app's context between two items is kept for the next item: a span opened around
    the whole loop is the parent of the spans made inside it, item after item."""
    app = wsgi_apps.flask_app(telemetry.tracer_provider)
    app.wsgi_app = StreamingWSGIMiddleware(app.wsgi_app, **telemetry.providers)
    with serve(app, server) as url:
        assert get(url + "/loop/r1").status_code == 200
    spans = {span.name: received(span) for span in wait_for_spans(telemetry, 6)}
    generate = spans["generate"]
    assert generate.parent_span_id == spans["GET /loop/<room>"].span_id
    for index in range(3):
        assert spans[f"token {index}"].parent_span_id == generate.span_id, index


def test_the_servers_context_is_left_as_it_was(telemetry: Telemetry) -> None:
    app = StreamingWSGIMiddleware(wsgi_apps.plain_wsgi_app, **telemetry.providers)
    environ = wsgi_environ("/sse?count=3")
    before = trace.get_current_span()
    body = app(environ, lambda status, headers, exc_info=None: lambda data: None)
    for _ in body:
        assert trace.get_current_span() is before
    body.close()  # type: ignore[attr-defined]
    assert trace.get_current_span() is before


# Metrics ---------------------------------------------------------------------------------


def test_metrics_of_streams_and_plain_responses(telemetry: Telemetry) -> None:
    app = wsgi_apps.flask_app(telemetry.tracer_provider)
    app.wsgi_app = StreamingWSGIMiddleware(app.wsgi_app, **telemetry.providers)
    with serve(app, "werkzeug") as url:
        get(url + "/chat/a?count=3")
        get(url + "/chat/b?count=2")
        get(url + "/plain")
        get(url + "/no/such/page")
        wait_for_spans(telemetry, 6)
    terminations = telemetry.counts(
        "http.server.stream.terminations",
        "http.route",
        "http.stream.termination_reason",
        "http.stream.phase",
    )
    assert terminations == {
        ("/chat/<room>", "completed", "streaming"): 2,
        ("/plain", "completed", "streaming"): 1,
        (None, "completed", "streaming"): 1,  # the 404: no route, never the raw path
    }
    durations = telemetry.counts(
        "http.server.stream.duration", "http.route", "http.stream.termination_reason"
    )
    assert durations == {("/chat/<room>", "completed"): 2}  # streams only
    chunks = telemetry.points("http.server.stream.chunks")
    assert sum(point.sum for point in chunks) == 5
    ttfb = telemetry.counts("http.server.stream.time_to_first_byte", "http.route")
    assert ttfb == {("/chat/<room>",): 2, ("/plain",): 1, (None,): 1}
    active = telemetry.points("http.server.stream.active")
    assert all(point.value == 0 for point in active)
    for point in telemetry.points("http.server.stream.time_to_first_byte"):
        assert "url.path" not in point.attributes
        assert "/no/such/page" not in point.attributes.values()


# Propagation, exclusion, never twice, failures --------------------------------------------


def test_the_incoming_trace_context_is_the_parent(telemetry: Telemetry) -> None:
    app = StreamingWSGIMiddleware(wsgi_apps.plain_wsgi_app, **telemetry.providers)
    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    with serve(app, "werkzeug") as url:
        get(url + "/sse?count=2", traceparent=f"00-{trace_id}-{span_id}-01")
    request = next(received(span) for span in wait_for_spans(telemetry, 2) if span.name == "GET")
    assert (request.trace_id, request.parent_span_id, request.kind) == (trace_id, span_id, "SERVER")


def test_excluded_urls_get_no_telemetry(telemetry: Telemetry) -> None:
    app = StreamingWSGIMiddleware(
        wsgi_apps.plain_wsgi_app, excluded_urls="plain", **telemetry.providers
    )
    with serve(app, "werkzeug") as url:
        assert get(url + "/plain").content == b"plain answer"
        get(url + "/sse?count=1")
        wait_for_spans(telemetry, 2)
    assert sorted(span.name for span in telemetry.spans()) == ["GET", "GET stream"]


def test_an_app_wrapped_twice_is_instrumented_once(telemetry: Telemetry) -> None:
    inner = StreamingWSGIMiddleware(wsgi_apps.plain_wsgi_app, **telemetry.providers)
    app = StreamingWSGIMiddleware(inner, **telemetry.providers)
    with serve(app, "werkzeug") as url:
        get(url + "/sse?count=2")
        wait_for_spans(telemetry, 2)
        time.sleep(0.05)
    assert sorted(span.name for span in telemetry.spans()) == ["GET", "GET stream"]


def test_a_misspelt_option_names_the_class_and_the_valid_ones() -> None:
    with pytest.raises(TypeError, match=r"StreamingWSGIMiddleware\(\).*'payload'.*payloads"):
        StreamingWSGIMiddleware(wsgi_apps.plain_wsgi_app, payload=False)  # type: ignore[call-arg]


def test_a_failing_hook_is_logged_once_and_the_response_is_whole(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(span: Any, environ: Any) -> None:
        raise RuntimeError("hook broke")

    app = StreamingWSGIMiddleware(
        wsgi_apps.plain_wsgi_app, server_request_hook=hook, **telemetry.providers
    )
    with caplog.at_level(logging.WARNING, logger="otel_stream"), serve(app, "werkzeug") as url:
        for _ in range(2):
            assert get(url + "/sse?count=2").content == b"data: 0\n\ndata: 1\n\n"
    warnings = [record for record in caplog.records if "server_request_hook" in record.getMessage()]
    assert len(warnings) == 1


def test_accel_buffering_header_is_added_to_streams_only(telemetry: Telemetry) -> None:
    app = StreamingWSGIMiddleware(
        wsgi_apps.plain_wsgi_app, accel_buffering_header=True, **telemetry.providers
    )
    with serve(app, "werkzeug") as url:
        assert get(url + "/sse?count=1").headers.get("x-accel-buffering") == "no"
        assert "x-accel-buffering" not in get(url + "/plain").headers


def test_disabled_passes_every_request_through(telemetry: Telemetry) -> None:
    app = StreamingWSGIMiddleware(wsgi_apps.plain_wsgi_app, enabled=False, **telemetry.providers)
    with serve(app, "werkzeug") as url:
        assert get(url + "/sse?count=2").status_code == 200
    assert telemetry.spans() == []


def test_the_wsgi_middleware_takes_the_asgi_middlewares_options() -> None:
    import inspect

    from otel_stream import StreamingMiddleware

    def options(cls: type) -> list[str]:
        parameters = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]

    assert options(StreamingWSGIMiddleware) == options(StreamingMiddleware)


def test_a_malformed_content_length_keeps_the_status_and_the_reader(
    telemetry: Telemetry,
) -> None:
    """Reading the headers never fails the response start's telemetry."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response(
            "200 OK", [("Content-Type", "text/event-stream"), ("Content-Length", "many")]
        )
        return iter([b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n', b"x"])

    middleware = StreamingWSGIMiddleware(app, **telemetry.providers)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    body = middleware(environ, lambda status, headers, exc_info=None: lambda data: None)
    assert b"".join(body).startswith(b"data:")
    close = getattr(body, "close", None)
    if close is not None:
        close()
    request = telemetry.span("GET")
    assert request.attributes["http.response.status_code"] == 200
    stream = telemetry.span("GET stream")
    assert stream.attributes["http.stream.events"] == 1  # the reader was made
