"""The demo's OpenTelemetry SDK: an in-memory reader always, real exporters when asked.

The in-memory reader is what the report is computed from. The standard variables add
exporters beside it, as ``opentelemetry-instrument`` would:

* ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: comma-separated names of the
  ``opentelemetry_traces_exporter`` / ``opentelemetry_metrics_exporter`` entry points
  (``otlp``, ``otlp_proto_http``, ``console``, ``prometheus``...); ``none`` for none.
* When neither is set but ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the per-signal
  ``..._TRACES_ENDPOINT`` / ``..._METRICS_ENDPOINT``) is, that signal goes to OTLP.
* ``otlp`` means OTLP over ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf`` unless
  ``grpc`` is asked for, which needs ``opentelemetry-exporter-otlp-proto-grpc``).
  Endpoints, headers, timeouts and ``OTEL_SERVICE_NAME`` are read by the SDK itself.

The SDK's own ``_configure`` does the same, but it is private API and it also installs
global providers; the demo keeps its providers local so the report reads only its own
data.

Beside the metrics, a :class:`TraceCatcher` keeps the spans of the traces the demo's
clients start themselves (``traceparent``), and only those: the long stream's row reads
its stream span.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

_PROTOCOLS = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}


class ExporterError(RuntimeError):
    """An ``OTEL_*_EXPORTER`` names an exporter that cannot be loaded."""


def exporter_names(signal: str, environ: Mapping[str, str]) -> list[str]:
    """Entry point names for ``signal`` (``traces`` or ``metrics``) from the variables."""
    upper = signal.upper()
    names = environ.get(f"OTEL_{upper}_EXPORTER", "").strip()
    if not names:
        endpoint = environ.get(f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        names = "otlp" if endpoint else "none"
    if names.lower() == "none":
        return []
    resolved = []
    for name in (part.strip() for part in names.split(",")):
        if name == "otlp":
            protocol = (
                environ.get(f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ).strip()
            if protocol not in _PROTOCOLS:
                raise ExporterError(f"unsupported OTLP protocol {protocol!r} for {signal}")
            name = _PROTOCOLS[protocol]
        if name and name != "none":
            resolved.append(name)
    return resolved


def _load(group: str, name: str) -> Any:
    for entry_point in entry_points(group=group):
        if entry_point.name == name:
            try:
                return entry_point.load()
            except ImportError as error:
                raise ExporterError(f"exporter {name!r} cannot be imported: {error}") from error
    hint = " (pip install opentelemetry-exporter-otlp-proto-grpc)" if "grpc" in name else ""
    raise ExporterError(f"no {group.replace('_', ' ')} named {name!r}{hint}")


class TraceCatcher(SpanProcessor):
    """Keeps the ended spans of the traces it was told to watch, and no other span."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: set[int] = set()
        self._spans: dict[int, list[ReadableSpan]] = {}

    def watch(self, trace_id: int) -> None:
        """Keep the spans of ``trace_id`` from now on."""
        with self._lock:
            self._watched.add(trace_id)

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or context.trace_id not in self._watched:
            return
        with self._lock:
            self._spans.setdefault(context.trace_id, []).append(span)

    def spans(self, trace_id: int) -> list[ReadableSpan]:
        """The ended spans of ``trace_id`` so far."""
        with self._lock:
            return list(self._spans.get(trace_id, ()))


@dataclass
class DemoTelemetry:
    """The SDK providers of a demo run and the readers the report needs."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    reader: InMemoryMetricReader
    traces: TraceCatcher = field(default_factory=TraceCatcher)
    exporters: list[str] = field(default_factory=list)
    prometheus_url: str | None = None
    prometheus_server: Any = None

    @property
    def providers(self) -> dict[str, Any]:
        """Keyword arguments for StreamingMiddleware."""
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def shutdown(self) -> None:
        """Flush and stop every exporter."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        if self.prometheus_server is not None:
            self.prometheus_server.shutdown()
            self.prometheus_server.server_close()


def service_name(environ: Mapping[str, str] | None = None) -> str:
    """The demo's service name: ``OTEL_SERVICE_NAME``, else ``otel-stream-demo``."""
    environ = os.environ if environ is None else environ
    return environ.get("OTEL_SERVICE_NAME") or "otel-stream-demo"


def setup(
    *,
    prometheus_port: int | None = None,
    environ: Mapping[str, str] | None = None,
    service: str | None = None,
) -> DemoTelemetry:
    """Providers for the demo; raises ExporterError for an exporter that cannot load.
    ``service`` names the service instead of ``OTEL_SERVICE_NAME`` (the model behind
    the relay is a service of its own)."""
    environ = os.environ if environ is None else environ
    if service is not None:
        resource = Resource.create({SERVICE_NAME: service})
    else:
        resource = Resource.create(
            {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "otel-stream-demo"}
        )
    tracer_provider = TracerProvider(resource=resource)
    traces = TraceCatcher()
    tracer_provider.add_span_processor(traces)
    exporters: list[str] = []
    for name in exporter_names("traces", environ):
        span_exporter = _load("opentelemetry_traces_exporter", name)
        if not (isinstance(span_exporter, type) and issubclass(span_exporter, SpanExporter)):
            raise ExporterError(f"{name!r} is not a span exporter")
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter()))
        exporters.append(f"traces: {name}")

    reader = InMemoryMetricReader()
    readers: list[MetricReader] = [reader]
    for name in exporter_names("metrics", environ):
        metric_exporter = _load("opentelemetry_metrics_exporter", name)
        if isinstance(metric_exporter, type) and issubclass(metric_exporter, MetricReader):
            readers.append(metric_exporter())
        elif isinstance(metric_exporter, type) and issubclass(metric_exporter, MetricExporter):
            readers.append(PeriodicExportingMetricReader(metric_exporter()))
        else:
            raise ExporterError(f"{name!r} is not a metric exporter")
        exporters.append(f"metrics: {name}")

    prometheus_url = None
    prometheus_server = None
    if prometheus_port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        readers.append(PrometheusMetricReader(registry=registry))
        prometheus_server, _ = start_http_server(
            prometheus_port, addr="127.0.0.1", registry=registry
        )
        prometheus_url = f"http://127.0.0.1:{prometheus_server.server_port}/metrics"

    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return DemoTelemetry(
        tracer_provider,
        meter_provider,
        reader,
        traces,
        exporters,
        prometheus_url,
        prometheus_server,
    )
