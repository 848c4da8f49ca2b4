"""One SERVER span and one trace beside contrib's WSGI, Flask and Django instrumentations.

Each test serves a real app on werkzeug's server in this process, with otel-stream and
the contrib instrumentation sharing one in-memory tracer provider, in either order, by
hand and through ``StreamingInstrumentor``; it compares the trace with the tree
docs/wsgi.md shows. Contrib's Flask and Django instrumentations are tested when they are
installed (their latest releases pin other versions of the contrib core than the ones
otel-stream is tested with, so they are not in the test extra).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as ContribWSGIMiddleware

from otel_stream import StreamingInstrumentor, StreamingWSGIMiddleware
from tests import wsgi_apps
from tests.servers import wait_until
from tests.telemetry_harness import Telemetry
from tests.telemetry_harness import span_tree as tree
from tests.wsgi_servers import serve

needs_flask_instrumentation = pytest.mark.skipif(
    importlib.util.find_spec("opentelemetry.instrumentation.flask") is None,
    reason="opentelemetry-instrumentation-flask is not installed",
)
needs_django_instrumentation = pytest.mark.skipif(
    importlib.util.find_spec("opentelemetry.instrumentation.django") is None,
    reason="opentelemetry-instrumentation-django is not installed",
)


def served_trace(app: Any, telemetry: Telemetry, target: str, spans: int) -> list[str]:
    """Serve ``app``, stream ``target``, and return the trace once ``spans`` spans ended."""
    with serve(app, "werkzeug") as url, httpx.Client(timeout=10) as client:
        response = client.get(url + target)
        assert response.status_code == 200
        assert response.text.startswith("data: ")
        wait_until(lambda: len(telemetry.spans()) >= spans)
    finished = telemetry.spans()
    assert len({span.context.trace_id for span in finished}) == 1, tree(finished)
    kinds = [span.kind.name for span in finished]
    assert kinds.count("SERVER") == 1, tree(finished)
    return tree(finished)


OURS_UNDER_CONTRIB_WSGI = [
    "GET /chat/r1 (SERVER, opentelemetry.instrumentation.wsgi)",  # contrib names it by the path
    "  GET /chat/<room> (INTERNAL, otel_stream)",
    "    GET /chat/<room> stream (INTERNAL, otel_stream)",
]


# By hand ----------------------------------------------------------------------------------


def test_contrib_wsgi_middleware_outside(telemetry: Telemetry) -> None:
    app = wsgi_apps.flask_app(telemetry.tracer_provider)
    app.wsgi_app = ContribWSGIMiddleware(
        StreamingWSGIMiddleware(app.wsgi_app, **telemetry.providers), **telemetry.providers
    )
    assert served_trace(app, telemetry, "/chat/r1", 3) == OURS_UNDER_CONTRIB_WSGI


def test_contrib_wsgi_middleware_inside(telemetry: Telemetry) -> None:
    app = wsgi_apps.flask_app(telemetry.tracer_provider)
    app.wsgi_app = StreamingWSGIMiddleware(
        ContribWSGIMiddleware(app.wsgi_app, **telemetry.providers), **telemetry.providers
    )
    assert served_trace(app, telemetry, "/chat/r1", 3) == [
        "GET /chat/<room> (SERVER, otel_stream)",
        "  GET /chat/r1 (INTERNAL, opentelemetry.instrumentation.wsgi)",
        "  GET /chat/<room> stream (INTERNAL, otel_stream)",
    ]


@needs_flask_instrumentation
def test_contrib_flask_instrumentation_and_the_middleware(telemetry: Telemetry) -> None:
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    app = wsgi_apps.flask_app(telemetry.tracer_provider)
    FlaskInstrumentor().instrument_app(app, **telemetry.providers)
    try:
        app.wsgi_app = StreamingWSGIMiddleware(app.wsgi_app, **telemetry.providers)
        assert served_trace(app, telemetry, "/chat/r1", 3) == [
            "GET /chat/<room> (SERVER, otel_stream)",
            "  GET /chat/<room> (INTERNAL, opentelemetry.instrumentation.flask)",
            "  GET /chat/<room> stream (INTERNAL, otel_stream)",
        ]
    finally:
        FlaskInstrumentor().uninstrument_app(app)


@needs_django_instrumentation
def test_contrib_django_instrumentation_and_the_middleware(telemetry: Telemetry) -> None:
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    wsgi_apps.configure_django()
    DjangoInstrumentor().instrument(**telemetry.providers)
    try:
        app = StreamingWSGIMiddleware(wsgi_apps.django_app(), **telemetry.providers)
        assert served_trace(app, telemetry, "/chat/r1", 3) == [
            "GET chat/<str:room> (SERVER, otel_stream)",
            "  GET chat/<str:room> (INTERNAL, opentelemetry.instrumentation.django)",
            "  GET chat/<str:room> stream (INTERNAL, otel_stream)",
        ]
    finally:
        DjangoInstrumentor().uninstrument()


# StreamingInstrumentor, either order ------------------------------------------------------


@pytest.fixture
def instrumented(telemetry: Telemetry) -> Iterator[Telemetry]:
    instrumentor = StreamingInstrumentor()
    instrumentor.instrument(**telemetry.providers)
    yield telemetry
    instrumentor.uninstrument()


def test_auto_under_contrib_wsgi_middleware_around_the_app(instrumented: Telemetry) -> None:
    app = ContribWSGIMiddleware(
        wsgi_apps.flask_app(instrumented.tracer_provider), **instrumented.providers
    )
    assert served_trace(app, instrumented, "/chat/r1", 3) == OURS_UNDER_CONTRIB_WSGI


def test_auto_over_contrib_wsgi_middleware_around_wsgi_app(instrumented: Telemetry) -> None:
    app = wsgi_apps.flask_app(instrumented.tracer_provider)
    app.wsgi_app = ContribWSGIMiddleware(app.wsgi_app, **instrumented.providers)
    assert served_trace(app, instrumented, "/chat/r1", 3) == [
        "GET /chat/<room> (SERVER, otel_stream)",
        "  GET /chat/r1 (INTERNAL, opentelemetry.instrumentation.wsgi)",
        "  GET /chat/<room> stream (INTERNAL, otel_stream)",
    ]


ContribInstrumentor = Callable[[], Any]


def _flask_instrumentor() -> Any:
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    return FlaskInstrumentor()


def _django_instrumentor() -> Any:
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    wsgi_apps.configure_django()
    return DjangoInstrumentor()


@pytest.mark.parametrize("contrib_first", [True, False], ids=["contrib-first", "ours-first"])
@pytest.mark.parametrize(
    ("framework", "route", "scope"),
    [
        pytest.param(
            "flask",
            "/chat/<room>",
            "opentelemetry.instrumentation.flask",
            marks=needs_flask_instrumentation,
        ),
        pytest.param(
            "django",
            "chat/<str:room>",
            "opentelemetry.instrumentation.django",
            marks=needs_django_instrumentation,
        ),
    ],
)
def test_auto_beside_contrib_framework_instrumentation(
    telemetry: Telemetry, framework: str, route: str, scope: str, contrib_first: bool
) -> None:
    contrib = _flask_instrumentor() if framework == "flask" else _django_instrumentor()
    ours = StreamingInstrumentor()
    first, second = (contrib, ours) if contrib_first else (ours, contrib)
    first.instrument(**telemetry.providers)
    second.instrument(**telemetry.providers)
    try:
        if framework == "flask":
            app = wsgi_apps.flask_app(telemetry.tracer_provider)
        else:
            app = wsgi_apps.django_app()
        assert served_trace(app, telemetry, "/chat/r1", 3) == [
            f"GET {route} (SERVER, otel_stream)",
            f"  GET {route} (INTERNAL, {scope})",
            f"  GET {route} stream (INTERNAL, otel_stream)",
        ]
    finally:
        second.uninstrument()
        first.uninstrument()
