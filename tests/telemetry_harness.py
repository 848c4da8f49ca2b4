"""An SDK tracer and meter provider with in-memory exporters, and readers for tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@dataclass
class Telemetry:
    tracer_provider: TracerProvider = field(default_factory=TracerProvider)
    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)
    meter_provider: MeterProvider = field(init=False)

    def __post_init__(self) -> None:
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    @property
    def providers(self) -> dict[str, Any]:
        """Keyword arguments for StreamingMiddleware."""
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        matches = [span for span in self.spans() if span.name == name]
        assert len(matches) == 1, f"{len(matches)} spans named {name!r}: {self.names()}"
        return matches[0]

    def names(self) -> list[str]:
        return [span.name for span in self.spans()]

    def points(self, metric: str) -> list[Any]:
        """The data points of ``metric`` (cumulative), one per attribute set."""
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for item in scope_metrics.metrics:
                    if item.name == metric:
                        found.extend(item.data.data_points)
        return found

    def counts(self, metric: str, *keys: str) -> dict[tuple[Any, ...], float]:
        """Sum (counters) or count (histograms) of ``metric`` grouped by attribute ``keys``."""
        result: dict[tuple[Any, ...], float] = {}
        for point in self.points(metric):
            key = tuple(point.attributes.get(k) for k in keys)
            value = point.count if hasattr(point, "count") else point.value
            result[key] = result.get(key, 0) + value
        return result

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def span_tree(spans: list[ReadableSpan]) -> list[str]:
    """``name (KIND, scope)`` lines, indented under their parent, children by start time."""
    ids = {span.context.span_id for span in spans}
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in sorted(spans, key=lambda s: (s.start_time or 0, s.name)):
        parent = span.parent.span_id if span.parent and span.parent.span_id in ids else None
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in children.get(parent, []):
            scope = span.instrumentation_scope.name if span.instrumentation_scope else ""
            lines.append(f"{'  ' * depth}{span.name} ({span.kind.name}, {scope})")
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return lines
