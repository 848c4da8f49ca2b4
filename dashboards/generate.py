"""Build the Grafana dashboards of otel-stream and write them as JSON next to this file.

    python -m dashboards.generate           # write dashboards/*.json
    python -m dashboards.generate --check   # exit 1 if a committed file is stale

Built with grafana-foundation-sdk (its Grafana 11.6 build, pinned in pyproject.toml's
``dashboards`` extra): its typed builders catch misspelt options that hand-written JSON
would carry silently, and the JSON it writes is what Grafana itself would save. Every
PromQL query comes from :mod:`dashboards.promql`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import heatmap, stat, table, timeseries
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode, HeatmapColorScale
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards import promql as q

HERE = Path(__file__).resolve().parent
OVERVIEW_FILE = HERE / "streaming-overview.json"
LLM_FILE = HERE / "llm-streams.json"
TAGS = ["otel-stream", "opentelemetry", "streaming"]
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Colours that keep their meaning on every panel.
REASON_COLORS = {
    "completed": "green",
    "client_disconnect": "orange",
    "app_error": "red",
    "cancelled": "purple",
    "incomplete": "yellow",
}
PHASE_COLORS = {"waiting": "blue", "streaming": "green"}


class Ids:
    """Panel ids, unique within a dashboard and stable across regenerations."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last += 1
        return self.last


def target(expr: str, legend: str, ref_id: str, *, table_format: bool = False) -> Dataquery:
    query = Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).datasource(DATASOURCE)
    return query.instant().format(PromQueryFormat.TABLE) if table_format else query.range()


def targets(*queries: tuple[str, str]) -> list[Dataquery]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def color_override(color: str) -> model.DynamicConfigValue:
    return model.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color})


def graph(
    ids: Ids,
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Dataquery],
    *,
    width: int,
    height: int = 8,
    stacked: bool = False,
    colors: dict[str, str] | None = None,
    log_scale: bool = False,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .id(ids.next())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .span(width)
        .height(height)
        .targets(list(queries))
        .line_width(1)
        .fill_opacity(25 if stacked else 8)
        .show_points(common.VisibilityMode.NEVER)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    if log_scale:
        panel = panel.scale_distribution(
            common_builders.ScaleDistributionConfig().type(common.ScaleDistribution.LOG).log(10)
        )
    for name, color in (colors or {}).items():
        panel = panel.override_by_name(name, [color_override(color)])
    return panel


def bucket_heatmap(
    ids: Ids, title: str, description: str, histogram: str, *, width: int = 12
) -> heatmap.Panel:
    """A heatmap of a classic histogram's buckets (Prometheus computes them, not Grafana)."""
    return (
        heatmap.Panel()
        .id(ids.next())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit("short")
        .span(width)
        .height(8)
        .with_target(
            Dataquery()
            .expr(q.heatmap(histogram))
            .legend_format("{{le}}")
            .ref_id("A")
            .datasource(DATASOURCE)
            .range()
            .format(PromQueryFormat.HEATMAP)
        )
        .calculate(False)
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
        .y_axis(heatmap.YAxisConfig().unit("s").decimals(2))
        .cell_values(heatmap.CellValues().unit("short"))
        .color(
            heatmap.HeatmapColorOptions()
            .mode(HeatmapColorMode.SCHEME)
            .scheme("Spectral")
            .scale(HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
            .reverse(True)
        )
        .filter_values(heatmap.FilterValueRange().le(1e-9))
        .show_value(common.VisibilityMode.NEVER)
        .mode(common.TooltipDisplayMode.SINGLE)
        .show_y_histogram()
        .show_color_scale(True)
    )


def single_stat(
    ids: Ids, title: str, description: str, unit: str, expr: str, *, decimals: int = 2
) -> stat.Panel:
    return (
        stat.Panel()
        .id(ids.next())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .decimals(decimals)
        .span(6)
        .height(4)
        .with_target(target(expr, title, "A"))
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .thresholds(
            ThresholdsConfig()
            .mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=None, color="text")])
        )
    )


def base_dashboard(title: str, uid: str, description: str) -> Dashboard:
    def variable(name: str, label: str, query: str, description: str) -> QueryVariable:
        return (
            QueryVariable(name)
            .label(label)
            .description(description)
            .datasource(DATASOURCE)
            .query(query)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(model.VariableOption(selected=True, text="All", value="$__all"))
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
        )

    source = q.VARIABLE_SOURCE
    return (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .timezone(common.TimeZoneBrowser)
        .link(
            DashboardLink("otel-stream")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags(["otel-stream"])
            .as_dropdown(False)
            .include_vars(True)
            .keep_time(True)
        )
        .with_variable(
            DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
            .description("The Prometheus data source holding otel-stream's metrics.")
        )
        .with_variable(
            variable(
                "job",
                "Job",
                f"label_values({source}, job)",
                "Prometheus job: the scrape job, or service.name when the Collector "
                "exports the metrics and Prometheus scrapes it with honor_labels.",
            )
        )
        .with_variable(
            variable(
                "instance",
                "Instance",
                f'label_values({source}{{job=~"$job"}}, instance)',
                "Prometheus instance: the scraped host:port, or service.instance.id "
                "through the Collector.",
            )
        )
        .with_variable(
            variable(
                "route",
                "Route",
                f'label_values({source}{{job=~"$job", instance=~"$instance"}}, http_route)',
                "http.route of the requests. All also keeps requests without a route "
                "(unmatched paths, and requests still waiting for their first byte).",
            )
        )
    )


def streaming_overview() -> Dashboard:
    ids = Ids()
    reason = "http_stream_termination_reason"
    failed = f'{reason}=~"app_error|cancelled|incomplete"'

    board = base_dashboard(
        "otel-stream / Streaming overview",
        "otel-stream-overview",
        "Streaming HTTP responses measured by otel-stream: the wait for the first byte, "
        "the stream after it, and how every request ended.",
    )
    board = (
        board.with_row(Row("At a glance").id(ids.next()))
        .with_panel(
            single_stat(
                ids,
                "Requests per second",
                "Requests that ended per second, streamed or not "
                "(http.server.stream.terminations).",
                "reqps",
                q.sum_rate(q.TERMINATIONS),
            )
        )
        .with_panel(
            single_stat(
                ids,
                "Completed",
                "Share of requests whose app sent the whole response "
                '(termination reason "completed").',
                "percentunit",
                q.share((f'{reason}="completed"',)),
                decimals=1,
            )
        )
        .with_panel(
            single_stat(
                ids,
                "Time to first byte p99",
                "99th percentile of the time from receiving the request to the first "
                "body byte: what the user waits before anything appears.",
                "s",
                q.quantile(0.99, q.TTFB),
            )
        )
        .with_panel(
            single_stat(
                ids,
                "Streams in flight",
                "Responses streaming their body right now (http.server.stream.active, "
                "phase streaming).",
                "short",
                "sum(" + q.series(q.ACTIVE, 'http_stream_phase="streaming"') + ")",
                decimals=0,
            )
        )
    )

    board = (
        board.with_row(Row("Time to first byte").id(ids.next()))
        .with_panel(
            graph(
                ids,
                "Time to first byte",
                "p50, p90 and p99 of the time from receiving the request to handing the "
                "first body byte to the server (for SSE: the first data event, not a "
                "ping). Headers alone do not count.",
                "s",
                targets(
                    (q.quantile(0.5, q.TTFB), "p50"),
                    (q.quantile(0.9, q.TTFB), "p90"),
                    (q.quantile(0.99, q.TTFB), "p99"),
                ),
                width=12,
            )
        )
        .with_panel(
            bucket_heatmap(
                ids,
                "Time to first byte: distribution",
                "How many requests got their first byte within each bucket of "
                "http.server.stream.time_to_first_byte (5 ms to 300 s).",
                q.TTFB,
            )
        )
    )

    board = (
        board.with_row(Row("Stream duration").id(ids.next()))
        .with_panel(
            graph(
                ids,
                "Stream duration",
                "p50, p90 and p99 of the time from the first body byte to the end of "
                "the stream, however it ended. Buckets reach 2 h, so long streams do "
                "not read as 10 s.",
                "s",
                targets(
                    (q.quantile(0.5, q.DURATION), "p50"),
                    (q.quantile(0.9, q.DURATION), "p90"),
                    (q.quantile(0.99, q.DURATION), "p99"),
                ),
                width=12,
            )
        )
        .with_panel(
            bucket_heatmap(
                ids,
                "Stream duration: distribution",
                "How many streams lasted within each bucket of "
                "http.server.stream.duration (50 ms to 2 h).",
                q.DURATION,
            )
        )
    )

    board = (
        board.with_row(Row("In flight and how requests end").id(ids.next()))
        .with_panel(
            graph(
                ids,
                "Requests in flight by phase",
                "waiting: the request arrived and no body byte has left yet; "
                "streaming: the body is being sent. A waiting request has no route yet, "
                "so picking a route shows streaming requests only.",
                "short",
                targets(
                    (
                        f"sum by (http_stream_phase) ({q.series(q.ACTIVE)})",
                        "{{http_stream_phase}}",
                    )
                ),
                width=8,
                stacked=True,
                colors=PHASE_COLORS,
            )
        )
        .with_panel(
            graph(
                ids,
                "Terminations by reason",
                "Requests that ended per second, by how they ended: completed, "
                "client_disconnect (the client left first), app_error (the app raised), "
                "cancelled (the app's task was cancelled), incomplete (the app returned "
                "without finishing the body, or an LLM stream ended without its end "
                "marker).",
                "reqps",
                targets((q.sum_rate(q.TERMINATIONS, labels=(reason,)), f"{{{{{reason}}}}}")),
                width=8,
                stacked=True,
                colors=REASON_COLORS,
            )
        )
        .with_panel(
            graph(
                ids,
                "Gave up before the first byte",
                "Share of requests whose client disconnected while still waiting for "
                "the first byte: users who gave up on a slow start.",
                "percentunit",
                targets(
                    (
                        q.share(
                            (
                                f'{reason}="client_disconnect"',
                                'http_stream_phase="waiting"',
                            )
                        ),
                        "gave up before the first byte",
                    )
                ),
                width=8,
                colors={"gave up before the first byte": "orange"},
            )
        )
    )

    board = (
        board.with_row(Row("Throughput, stalls and slow clients").id(ids.next()))
        .with_panel(
            graph(
                ids,
                "Body bytes sent",
                "Body bytes per second by route, counted when each stream ends "
                "(http.server.stream.body.size).",
                "Bps",
                targets(
                    (
                        q.sum_rate(q.BODY_SIZE + "_sum", labels=("http_route",)),
                        "{{http_route}}",
                    )
                ),
                width=6,
                stacked=True,
            )
        )
        .with_panel(
            graph(
                ids,
                "Chunks per stream",
                "Non-empty body messages per stream: mean and p90.",
                "short",
                targets(
                    (q.mean(q.CHUNKS), "mean"),
                    (q.quantile(0.9, q.CHUNKS), "p90"),
                ),
                width=6,
            )
        )
        .with_panel(
            graph(
                ids,
                "Longest pause in a stream (p99)",
                "p99 of each stream's longest gap between two body chunks, by route. "
                "Idle timeouts of proxies and load balancers (often 60 s) kill streams "
                "whose gaps come near them; send SSE comments to keep them alive.",
                "s",
                targets(
                    (q.quantile(0.99, q.MAX_CHUNK_GAP, labels=("http_route",)), "{{http_route}}")
                ),
                width=6,
            )
        )
        .with_panel(
            graph(
                ids,
                "Send wait share",
                "Share of stream time spent waiting for the server to accept the next "
                "chunk (client backpressure): high values mean slow clients or a "
                "buffering proxy, not a slow app.",
                "percentunit",
                targets(
                    (
                        f"{q.sum_rate(q.SEND_WAIT + '_sum', labels=('http_route',))}"
                        f" / {q.sum_rate(q.DURATION + '_sum', labels=('http_route',))}",
                        "{{http_route}}",
                    )
                ),
                width=6,
            )
        )
    )

    route = ("http_route",)
    columns = [
        ("Requests/s", "reqps", q.sum_rate(q.TERMINATIONS, labels=route)),
        ("Completed", "percentunit", q.share((f'{reason}="completed"',), labels=route)),
        (
            "Client left",
            "percentunit",
            q.share((f'{reason}="client_disconnect"',), labels=route),
        ),
        ("Failed", "percentunit", q.share((failed,), labels=route)),
        ("TTFB p50", "s", q.quantile(0.5, q.TTFB, labels=route)),
        ("TTFB p99", "s", q.quantile(0.99, q.TTFB, labels=route)),
        ("Duration p99", "s", q.quantile(0.99, q.DURATION, labels=route)),
        ("Longest pause p99", "s", q.quantile(0.99, q.MAX_CHUNK_GAP, labels=route)),
    ]
    board = board.with_row(Row("Per route").id(ids.next()))
    per_route = (
        table.Panel()
        .id(ids.next())
        .title("Per route")
        .description(
            "One row per http.route: request rate, how requests ended (Failed is "
            "app_error, cancelled or incomplete), time to first byte, stream duration "
            "and the longest pause, over the last $__rate_interval."
        )
        .datasource(DATASOURCE)
        .unit("short")
        .span(24)
        .height(8)
        .targets(
            [
                target(expr, name, chr(ord("A") + i), table_format=True)
                for i, (name, _, expr) in enumerate(columns)
            ]
        )
        .with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "indexByName": {"http_route": 0}
                    | {f"Value #{chr(ord('A') + i)}": i + 1 for i in range(len(columns))},
                    "renameByName": {"http_route": "Route"}
                    | {
                        f"Value #{chr(ord('A') + i)}": name
                        for i, (name, _, _) in enumerate(columns)
                    },
                },
            )
        )
        .sort_by([common_builders.TableSortByFieldState().display_name("Requests/s").desc(True)])
    )
    for name, unit, _ in columns:
        per_route = per_route.override_by_name(
            name, [model.DynamicConfigValue(id_val="unit", value=unit)]
        )
    return board.with_panel(per_route)


def llm_streams() -> Dashboard:
    ids = Ids()
    # Routes that served at least one LLM-aware stream (one with a first token).
    llm_routes = f"group by (http_route) ({q.series(q.TTFT + '_count')})"

    def on_llm_routes(expr: str) -> str:
        return f"({expr}) and on (http_route) {llm_routes}"

    def ttfb_quantile(level: float) -> str:
        inner = on_llm_routes(q.rate(q.TTFB + "_bucket"))
        return f"histogram_quantile({level}, sum by (le) ({inner}))"

    board = base_dashboard(
        "otel-stream / LLM streams",
        "otel-stream-llm",
        "LLM token streams (OpenAI, Anthropic, Ollama wire formats over SSE or NDJSON) "
        "read by otel-stream as they pass: first token, pace, finish reasons, "
        "truncated answers.",
    )
    board = (
        board.with_row(Row("Waiting for the answer").id(ids.next()))
        .with_panel(
            graph(
                ids,
                "Time to first token vs time to first byte",
                "p50 and p90 of the time to the first event carrying generated content "
                "(a role-only delta is not a token) and of the time to the first body "
                "byte, on routes that serve LLM streams. A gap between the two is time "
                "the user sees an empty answer.",
                "s",
                targets(
                    (q.quantile(0.5, q.TTFT), "first token p50"),
                    (q.quantile(0.9, q.TTFT), "first token p90"),
                    (ttfb_quantile(0.5), "first byte p50"),
                    (ttfb_quantile(0.9), "first byte p90"),
                ),
                width=12,
            )
        )
        .with_panel(
            bucket_heatmap(
                ids,
                "Time to first token: distribution",
                "How many LLM streams got their first token within each bucket of "
                "http.server.stream.time_to_first_token.",
                q.TTFT,
            )
        )
    )
    board = (
        board.with_row(Row("Generation pace").id(ids.next()))
        .with_panel(
            graph(
                ids,
                "Time per output token",
                "p50, p90 and p99 of (stream end - first token) / (output tokens - 1), "
                "for streams that report usage (OpenAI: stream_options.include_usage).",
                "s",
                targets(
                    (q.quantile(0.5, q.TPOT), "p50"),
                    (q.quantile(0.9, q.TPOT), "p90"),
                    (q.quantile(0.99, q.TPOT), "p99"),
                ),
                width=12,
            )
        )
        .with_panel(
            graph(
                ids,
                "Output tokens per second, per stream",
                "Decode speed one user sees, derived as 1 / time per output token: the "
                "median stream, and the slowest 10 % and 1 % of streams. Not the "
                "total token throughput of the service: no metric counts tokens.",
                "suffix: tokens/s",
                targets(
                    (f"1 / {q.quantile(0.5, q.TPOT)}", "median stream"),
                    (f"1 / {q.quantile(0.9, q.TPOT)}", "slowest 10 %"),
                    (f"1 / {q.quantile(0.99, q.TPOT)}", "slowest 1 %"),
                ),
                width=12,
            )
        )
    )
    finish = "gen_ai_response_finish_reason"
    board = (
        board.with_row(Row("How answers end").id(ids.next()))
        .with_panel(
            graph(
                ids,
                "Finish reasons",
                "LLM streams per second by the model's first finish reason (stop, "
                "length, tool_calls, content_filter, end_turn...).",
                "reqps",
                targets(
                    (
                        q.sum_rate(q.TERMINATIONS, f'{finish}!=""', labels=(finish,)),
                        f"{{{{{finish}}}}}",
                    )
                ),
                width=12,
                stacked=True,
            )
        )
        .with_panel(
            graph(
                ids,
                "Incomplete answers",
                "Answers the user got only part of, per second: streams on LLM routes "
                "that ended without their end marker (data: [DONE], message_stop...), "
                "and answers the model cut short (finish reason length or "
                "content_filter).",
                "reqps",
                targets(
                    (
                        on_llm_routes(
                            q.sum_rate(
                                q.TERMINATIONS,
                                'http_stream_termination_reason="incomplete"',
                                labels=("http_route",),
                            )
                        ),
                        "truncated: {{http_route}}",
                    ),
                    (
                        q.sum_rate(
                            q.TERMINATIONS,
                            f'{finish}=~"length|content_filter"',
                            labels=(finish,),
                        ),
                        f"finish reason {{{{{finish}}}}}",
                    ),
                ),
                width=12,
                stacked=True,
                colors={"finish reason length": "orange", "finish reason content_filter": "red"},
            )
        )
    )
    return with_hop_row(board, ids)


def with_hop_row(board: Dashboard, ids: Ids) -> Dashboard:
    """The hop: what the upstream model took against what this service's clients waited.

    The client side's series carry the upstream host, not a route, so the route variable
    does not filter them; the server side is read on the routes that relay a stream (the
    ones with a hop measurement), so the two halves describe the same requests.
    """
    relaying_routes = f"group by (http_route) ({q.series(q.HOP_TTFB + '_count')})"

    def downstream(level: float, histogram: str) -> str:
        inner = f"({q.rate(histogram + '_bucket')}) and on (http_route) {relaying_routes}"
        return f"histogram_quantile({level}, sum by (le) ({inner}))"

    ended = ("server_address", "http_stream_termination_reason")
    return (
        board.with_row(Row("The hop: upstream vs downstream").id(ids.next()))
        .with_panel(
            graph(
                ids,
                "First byte: upstream vs downstream",
                "p50 and p99 of the time to the upstream's first body byte, as this "
                "service's HTTP client saw it (http.client.stream.time_to_first_byte, "
                "every upstream: the route variable does not apply), and of the time to "
                "this service's own first byte on the routes that relay a stream "
                "(http.server.stream.time_to_first_byte). Downstream above upstream by "
                "more than the hop panel shows: requests that did not relay.",
                "s",
                targets(
                    (q.quantile(0.5, q.CLIENT_TTFB), "upstream p50"),
                    (q.quantile(0.99, q.CLIENT_TTFB), "upstream p99"),
                    (downstream(0.5, q.TTFB), "downstream p50"),
                    (downstream(0.99, q.TTFB), "downstream p99"),
                ),
                width=12,
            )
        )
        .with_panel(
            graph(
                ids,
                "First token: upstream vs downstream",
                "p50 and p99 of the time to the upstream's first generated token "
                "(http.client.stream.time_to_first_token, read from the upstream's "
                "stream) and to the first token this service sent its clients "
                "(http.server.stream.time_to_first_token) on the routes that relay.",
                "s",
                targets(
                    (q.quantile(0.5, q.CLIENT_TTFT), "upstream p50"),
                    (q.quantile(0.99, q.CLIENT_TTFT), "upstream p99"),
                    (downstream(0.5, q.TTFT), "downstream p50"),
                    (downstream(0.99, q.TTFT), "downstream p99"),
                ),
                width=12,
            )
        )
        .with_panel(
            graph(
                ids,
                "Time the hop added to the first byte",
                "p50 and p99 of this service's first byte minus its upstream's first "
                "byte, per relayed request (http.server.stream.hop.time_to_first_byte): "
                "the time the hop itself added. Small here and large upstream: it is the "
                "model; large here: it is the hop.",
                "s",
                targets(
                    (q.quantile(0.5, q.HOP_TTFB), "hop p50"),
                    (q.quantile(0.99, q.HOP_TTFB), "hop p99"),
                ),
                width=12,
            )
        )
        .with_panel(
            graph(
                ids,
                "Upstream streams by how they ended",
                "Streams this service read from each upstream host, per second, by "
                "client termination reason: completed, consumer_closed (this service "
                "stopped reading), server_disconnect (the upstream ended the connection "
                "before the body), error, incomplete (no end marker).",
                "reqps",
                targets(
                    (
                        q.sum_rate(q.CLIENT_TERMINATIONS, labels=ended),
                        "{{server_address}}: {{http_stream_termination_reason}}",
                    )
                ),
                width=12,
                stacked=True,
            )
        )
    )


DASHBOARDS = {OVERVIEW_FILE: streaming_overview, LLM_FILE: llm_streams}


def render(build: Any) -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, build in DASHBOARDS.items():
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            json.loads(text)
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python -m dashboards.generate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
