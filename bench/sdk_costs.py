"""What each span and measurement of a stream costs in the OpenTelemetry SDK.

Run ``python bench/sdk_costs.py`` (a few seconds). It times, with the real SDK (a
``BatchSpanProcessor`` exporting to nothing, an ``InMemoryMetricReader``), each kind of
call otel-stream makes once per stream: starting and ending a span with the attributes
it carries, setting attributes one by one or at once, recording a histogram value or a
counter increment with the attribute sets the stream metrics use, with and without an
exemplar (a sampled span in the context, the SDK's default ``trace_based`` filter). It
then adds them up as otel-stream's recorder does for one stream and one single-message
response, so the fixed cost per stream in ``bench/overhead.py`` can be read part by
part. Medians of interleaved rounds; it is a report, not a test.
"""

from __future__ import annotations

import argparse
import gc
import statistics
from collections.abc import Callable
from time import perf_counter_ns, time_ns

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

REQUEST_ATTRIBUTES = {
    "http.request.method": "GET",
    "url.scheme": "http",
    "url.path": "/v1/chat/completions",
    "server.address": "127.0.0.1",
    "server.port": 8000,
    "network.protocol.version": "1.1",
    "client.address": "127.0.0.1",
    "client.port": 50000,
    "user_agent.original": "python-httpx/0.28.1",
}
METHOD_ROUTE = {"http.request.method": "POST", "http.route": "/v1/chat/completions"}
WITH_REASON = {**METHOD_ROUTE, "http.stream.termination_reason": "completed"}
FULL = {
    **METHOD_ROUTE,
    "url.scheme": "http",
    "network.protocol.version": "1.1",
    "http.response.status_code": 200,
    "http.stream.termination_reason": "completed",
}
STREAM_END = {
    "http.stream.termination_reason": "completed",
    "http.stream.chunks": 200,
    "http.stream.bytes": 24000,
    "http.stream.max_chunk_gap": 0.02,
    "http.stream.send_wait": 0.001,
    "http.stream.time_to_first_byte": 0.3,
    "http.response.status_code": 200,
}


class _Discard(SpanExporter):
    def export(self, spans: object) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_Discard(), max_queue_size=1 << 20))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    # Exemplars off for one row: a measurement given an empty context (falsy) still takes
    # the current one, so only the filter can leave the exemplar out.
    no_exemplars = MeterProvider(
        metric_readers=[InMemoryMetricReader()], exemplar_filter=AlwaysOffExemplarFilter()
    )
    plain_histogram = no_exemplars.get_meter("bench").create_histogram("h", unit="s")
    tracer = tracer_provider.get_tracer("bench")
    meter = meter_provider.get_meter("bench")
    histogram = meter.create_histogram("h", unit="s")
    counter = meter.create_counter("c")
    sampled = otel_context.attach(
        trace.set_span_in_context(tracer.start_span("outer"))
    )  # a sampled span is current: exemplars are taken

    def span_with(attributes: dict[str, object]) -> Callable[[], None]:
        def run() -> None:
            tracer.start_span("GET /x", attributes=attributes, start_time=time_ns()).end()

        return run

    def set_one_by_one() -> None:
        span = tracer.start_span("s")
        for key, value in STREAM_END.items():
            span.set_attribute(key, value)
        span.end()

    def set_at_once() -> None:
        span = tracer.start_span("s")
        span.set_attributes(STREAM_END)
        span.end()

    def bare_span() -> None:
        tracer.start_span("s").end()

    cases: dict[str, Callable[[], None]] = {
        "span, no attributes (start + end)": bare_span,
        "span with the request's 9 attributes": span_with(REQUEST_ATTRIBUTES),
        "span with 2 attributes (stream span start)": span_with(METHOD_ROUTE),
        "7 stream-end attributes, one set_attribute each (incl. span)": set_one_by_one,
        "7 stream-end attributes, one set_attributes (incl. span)": set_at_once,
        "histogram record, 2 attributes, exemplar": lambda: histogram.record(0.5, METHOD_ROUTE),
        "histogram record, 3 attributes, exemplar": lambda: histogram.record(0.5, WITH_REASON),
        "histogram record, 6 attributes, exemplar": lambda: histogram.record(0.5, FULL),
        "histogram record, 6 attributes, no exemplar": lambda: plain_histogram.record(0.5, FULL),
        "counter add, 6 attributes, exemplar": lambda: counter.add(1, FULL),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            run = cases[name]
            gc.disable()
            started = perf_counter_ns()
            for _ in range(args.calls):
                run()
            elapsed = perf_counter_ns() - started
            gc.enable()
            results[name].append(elapsed / args.calls / 1000)
        tracer_provider.force_flush()
    otel_context.detach(sampled)

    median = {name: statistics.median(values) for name, values in results.items()}
    print("One call each, median of rounds (µs):\n")
    print("| call | µs |")
    print("|---|---|")
    for name in names:
        print(f"| {name} | {median[name]:.2f} |")
    span_end = median["7 stream-end attributes, one set_attributes (incl. span)"]
    stream = (
        median["span with the request's 9 attributes"]
        + median["span with 2 attributes (stream span start)"]
        + span_end
        + median["histogram record, 6 attributes, exemplar"] * 2  # time to first byte, duration
        + median["histogram record, 3 attributes, exemplar"] * 2  # chunks, body size
        + median["histogram record, 2 attributes, exemplar"] * 2  # max chunk gap, send wait
        + median["counter add, 6 attributes, exemplar"]  # terminations
    )
    single = (
        median["span with the request's 9 attributes"]
        + median["histogram record, 6 attributes, exemplar"]
        + median["counter add, 6 attributes, exemplar"]
    )
    print(
        f"\nSDK work of one stream (2 spans, 6 histogram values, 1 counter): {stream:.1f} µs"
        f"\nSDK work of one single-message response (1 span, 1 value, 1 counter): {single:.1f} µs"
    )
    exemplar = (
        median["histogram record, 6 attributes, exemplar"]
        - median["histogram record, 6 attributes, no exemplar"]
    )
    print(
        f"Of each measurement taken in a sampled span, the exemplar is {exemplar:.2f} µs "
        f"({7 * exemplar:.1f} µs of a stream's 7); OTEL_METRICS_EXEMPLAR_FILTER=always_off "
        "leaves them out"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
