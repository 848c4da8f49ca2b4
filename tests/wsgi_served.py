"""The test apps of ``tests.wsgi_apps`` wrapped in ``StreamingWSGIMiddleware``, as served.

In the test process, :func:`build` wraps an app with the test's in-memory providers. A
gunicorn process imports ``tests.wsgi_served:app``: the app named by ``WSGI_TEST_APP``
(``plain``, ``flask`` or ``django``; ``WSGI_TEST_WRAP=none`` serves it bare, ``auto``
bare and without any OpenTelemetry set-up, for auto-instrumentation), with SDK
providers exporting OTLP/HTTP to the endpoint in the ``OTEL_EXPORTER_OTLP_*`` variables:
spans one by one as they end (so a test sees them at once; ``WSGI_TEST_BATCH=1``: through
a ``BatchSpanProcessor``), metrics every ``OTEL_METRIC_EXPORT_INTERVAL`` ms and at shutdown.
"""

from __future__ import annotations

import os
from typing import Any

from tests import wsgi_apps


def bare(name: str, tracer_provider: Any = None) -> Any:
    if name == "plain":
        return wsgi_apps.plain_wsgi_app
    if name == "flask":
        return wsgi_apps.flask_app(tracer_provider)
    if name == "django":
        return wsgi_apps.django_app()
    raise ValueError(name)


def build(name: str, tracer_provider: Any, meter_provider: Any, **options: Any) -> Any:
    """The app ``name`` with otel-stream (``wrap="none"``: without)."""
    from otel_stream import StreamingWSGIMiddleware

    wrap = options.pop("wrap", "middleware")
    app = bare(name, tracer_provider)
    if wrap == "none":
        return app
    return StreamingWSGIMiddleware(
        app, tracer_provider=tracer_provider, meter_provider=meter_provider, **options
    )


def _served() -> Any:
    name = os.environ.get("WSGI_TEST_APP", "plain")
    wrap = os.environ.get("WSGI_TEST_WRAP", "middleware")
    if wrap == "auto":  # no OpenTelemetry here: instrumented by the command or variable
        return bare(name)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create()
    tracer_provider = TracerProvider(resource=resource)
    batch = os.environ.get("WSGI_TEST_BATCH") == "1"
    processor = BatchSpanProcessor if batch else SimpleSpanProcessor
    tracer_provider.add_span_processor(processor(OTLPSpanExporter()))
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
    )
    return build(name, tracer_provider, meter_provider, wrap=wrap)


_app: Any = None


def __getattr__(name: str) -> Any:
    # Built when gunicorn asks for it, not when the test process imports this module.
    global _app
    if name == "app":
        if _app is None:
            _app = _served()
        return _app
    raise AttributeError(name)
