"""StreamingInstrumentor on WSGI: Flask and Django apps, in this process and as gunicorn
processes started the way a user types it (``opentelemetry-instrument gunicorn ...``,
``OTEL_STREAM_ENABLED=true gunicorn ...``), with apps that mention no OpenTelemetry."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from otel_stream import StreamingInstrumentor, StreamingWSGIMiddleware
from tests import wsgi_apps
from tests.otlp_receiver import OTLPReceiver
from tests.processes import BIN
from tests.servers import wait_until
from tests.telemetry_harness import Telemetry
from tests.wsgi_servers import TEST_ID_HEADER, exchange_in, gunicorn_process, serve


@pytest.fixture
def instrumented(telemetry: Telemetry) -> Iterator[Telemetry]:
    instrumentor = StreamingInstrumentor()
    instrumentor.instrument(**telemetry.providers)
    yield telemetry
    instrumentor.uninstrument()


def stream(url: str) -> str:
    with httpx.Client(timeout=10) as client:
        response = client.get(url)
        assert response.status_code == 200
        return response.text


def names_when(telemetry: Telemetry, count: int) -> list[str]:
    wait_until(lambda: len(telemetry.spans()) >= count)
    return sorted(telemetry.names())


@pytest.mark.parametrize(
    ("framework", "route"), [("flask", "/chat/<room>"), ("django", "chat/<str:room>")]
)
def test_flask_and_django_apps_are_instrumented(
    instrumented: Telemetry, framework: str, route: str
) -> None:
    app = wsgi_apps.flask_app() if framework == "flask" else wsgi_apps.django_app()
    with serve(app, "werkzeug") as url:
        assert stream(url + "/chat/r1?count=2") == "data: r1-0\n\ndata: r1-1\n\n"
        assert names_when(instrumented, 2) == [f"GET {route}", f"GET {route} stream"]
    (request,) = [span for span in instrumented.spans() if span.kind.name == "SERVER"]
    assert request.attributes["http.route"] == route


def test_a_hand_added_middleware_wins(instrumented: Telemetry) -> None:
    """Its options hold (payload reading off: no events counted), and one pair of spans."""
    app = wsgi_apps.flask_app()
    app.wsgi_app = StreamingWSGIMiddleware(app.wsgi_app, payloads=False, **instrumented.providers)
    with serve(app, "werkzeug") as url:
        stream(url + "/chat/r1?count=2")
        assert names_when(instrumented, 2) == ["GET /chat/<room>", "GET /chat/<room> stream"]
    stream_span = next(span for span in instrumented.spans() if span.name.endswith("stream"))
    assert "http.stream.events" not in stream_span.attributes


def test_a_middleware_around_the_whole_app_wins(instrumented: Telemetry) -> None:
    app = StreamingWSGIMiddleware(wsgi_apps.flask_app(), payloads=False, **instrumented.providers)
    with serve(app, "werkzeug") as url:
        stream(url + "/chat/r1?count=2")
        assert names_when(instrumented, 2) == ["GET /chat/<room>", "GET /chat/<room> stream"]
    stream_span = next(span for span in instrumented.spans() if span.name.endswith("stream"))
    assert "http.stream.events" not in stream_span.attributes


def test_uninstrument_passes_requests_through(telemetry: Telemetry) -> None:
    instrumentor = StreamingInstrumentor()
    instrumentor.instrument(**telemetry.providers)
    app = wsgi_apps.flask_app()
    with serve(app, "werkzeug") as url:
        stream(url + "/chat/r1?count=1")
        assert len(names_when(telemetry, 2)) == 2
        instrumentor.uninstrument()
        assert stream(url + "/chat/r2?count=1") == "data: r2-0\n\n"
        assert len(telemetry.spans()) == 2


# Processes ------------------------------------------------------------------------------


WAYS = {
    "opentelemetry-instrument": ([str(BIN / "opentelemetry-instrument")], {}),
    "OTEL_STREAM_ENABLED": ([], {"OTEL_STREAM_ENABLED": "true"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize(
    ("framework", "route"), [("flask", "/chat/<room>"), ("django", "chat/<str:room>")]
)
def test_gunicorn_serving_an_uninstrumented_app(
    receiver: OTLPReceiver, way: str, framework: str, route: str
) -> None:
    prefix, variables = WAYS[way]
    service = f"wsgi-auto-{framework}-{uuid.uuid4().hex[:8]}"
    process = gunicorn_process(
        "gthread",
        receiver,
        service,
        WSGI_TEST_APP=framework,
        WSGI_TEST_WRAP="auto",
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST="x-test-id",
        **variables,
    )
    process.argv = [*prefix, *process.argv]
    test_id = uuid.uuid4().hex
    try:
        process.start()
        process.wait_ready()
        with httpx.Client(timeout=10) as client:
            response = client.get(
                process.url + "/chat/r1?count=3&pace=0.01", headers={TEST_ID_HEADER: test_id}
            )
        assert response.text == "".join(f"data: r1-{i}\n\n" for i in range(3))

        def exchange() -> object:
            spans = [s for s in receiver.spans() if s.resource.get("service.name") == service]
            return exchange_in(spans, test_id)

        assert wait_until(exchange, 15), process.stderr()[-3000:]
    finally:
        process.stop()
    found = exchange()
    assert found is not None
    assert found.request.name == f"GET {route}"  # type: ignore[attr-defined]
    assert found.request.kind == "SERVER"  # type: ignore[attr-defined]
    assert found.reason == "completed"  # type: ignore[attr-defined]
    servers = [
        span
        for span in receiver.spans()
        if span.resource.get("service.name") == service and span.kind == "SERVER"
    ]
    assert len(servers) == 1
