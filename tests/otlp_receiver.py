"""An OTLP/HTTP receiver on loopback, for tests that export through a real exporter.

Accepts ``POST /v1/traces``, ``/v1/metrics`` and ``/v1/logs`` (protobuf, optionally gzip
or deflate encoded), decodes them with ``opentelemetry-proto``'s request types, and keeps
every span and metric data point as plain Python values::

    with OTLPReceiver() as receiver:
        env = child_environment(**receiver.environment())  # OTEL_EXPORTER_OTLP_* for a child
        ...
        assert receiver.wait_for(lambda: receiver.spans_named("GET /chat"))
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: str  # "SERVER", "INTERNAL", ...
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    status: str  # "UNSET", "OK", "ERROR"
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class ReceivedPoint:
    metric: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    value: float | None = None  # sums and gauges
    count: int | None = None  # histograms
    total: float | None = None  # histograms
    bounds: tuple[float, ...] = ()


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(pairs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {pair.key: any_value(pair.value) for pair in pairs}


@dataclass
class OTLPReceiver:
    """The receiver; a context manager that serves on a free loopback port."""

    received_spans: list[ReceivedSpan] = field(default_factory=list)
    received_points: list[ReceivedPoint] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                reply = receiver.handle(self.path, body)
                self.send_response(200 if reply is not None else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply or b"")))
                self.end_headers()
                self.wfile.write(reply or b"")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def environment(self) -> dict[str, str]:
        """Variables that point a process' OTLP/HTTP exporters here, exporting quickly."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_METRIC_EXPORT_INTERVAL": "200",
        }

    def __enter__(self) -> OTLPReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def handle(self, path: str, body: bytes) -> bytes | None:
        with self.lock:
            self.requests[path] = self.requests.get(path, 0) + 1
        if path == "/v1/traces":
            self.add_traces(ExportTraceServiceRequest.FromString(body))
            return ExportTraceServiceResponse().SerializeToString()
        if path == "/v1/metrics":
            self.add_metrics(ExportMetricsServiceRequest.FromString(body))
            return ExportMetricsServiceResponse().SerializeToString()
        if path == "/v1/logs":
            ExportLogsServiceRequest.FromString(body)
            return ExportLogsServiceResponse().SerializeToString()
        return None

    def add_traces(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=attributes(span.attributes),
                            resource=resource,
                            scope=scope_spans.scope.name,
                            status=Status.StatusCode.Name(span.status.code).removeprefix(
                                "STATUS_CODE_"
                            ),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                        )
                    )
        with self.lock:
            self.received_spans.extend(found)

    def add_metrics(self, request: ExportMetricsServiceRequest) -> None:
        found = []
        for resource_metrics in request.resource_metrics:
            resource = attributes(resource_metrics.resource.attributes)
            for scope_metrics in resource_metrics.scope_metrics:
                scope = scope_metrics.scope.name
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    data = getattr(metric, kind) if kind else None
                    for point in getattr(data, "data_points", ()):
                        common: dict[str, Any] = {
                            "metric": metric.name,
                            "attributes": attributes(point.attributes),
                            "resource": resource,
                            "scope": scope,
                        }
                        if kind in ("sum", "gauge"):
                            number = point.WhichOneof("value")
                            found.append(ReceivedPoint(**common, value=getattr(point, number)))
                        elif kind == "histogram":
                            found.append(
                                ReceivedPoint(
                                    **common,
                                    count=point.count,
                                    total=point.sum,
                                    bounds=tuple(point.explicit_bounds),
                                )
                            )
                        else:
                            found.append(ReceivedPoint(**common, count=point.count))
        with self.lock:
            self.received_points.extend(found)

    # Reading what arrived ---------------------------------------------------------

    def spans(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.received_spans)

    def points(self, metric: str | None = None) -> list[ReceivedPoint]:
        with self.lock:
            return [p for p in self.received_points if metric is None or p.metric == metric]

    def spans_named(self, name: str) -> list[ReceivedSpan]:
        return [span for span in self.spans() if span.name == name]

    def wait_for(
        self, predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
    ) -> bool:
        """Poll ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() > deadline:
                return bool(predicate())
            time.sleep(interval)
