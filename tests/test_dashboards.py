"""The dashboards as files: regenerated identically, only DESIGN.md's metric names, the
variable filters everywhere, a unit and a description on every panel, fixed uids, the
datasource variable, and valid configs next to them."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboards import live, promql

from tests import processes

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
FILES = {"streaming-overview.json": "otel-stream-overview", "llm-streams.json": "otel-stream-llm"}
PREVIEWS = ("dashboard-streaming-overview.png", "dashboard-llm-streams.png")
FILTERS = ('job=~"$job"', 'instance=~"$instance"', 'http_route=~"$route"')
#: The client side's metrics carry no route: job and instance only.
CLIENT_FILTERS = FILTERS[:2]

# PromQL words that are not metric names: aggregations, set operators, modifiers.
KEYWORDS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
    }
)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARDS / name).read_text())
    return data


def all_dashboards() -> list[dict[str, Any]]:
    return [load(name) for name in FILES]


def all_queries() -> list[live.PanelQuery]:
    return [query for board in all_dashboards() for query in live.panel_queries(board)]


def variable_queries() -> list[str]:
    return [
        variable["query"]
        for board in all_dashboards()
        for variable in board["templating"]["list"]
        if variable["type"] == "query"
    ]


def without_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    """Every metric name an expression selects (identifiers not followed by "(")."""
    text = without_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        if word in KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def label_names(expr: str) -> set[str]:
    text = without_strings(expr)
    labels = set()
    for matchers in re.findall(r"\{([^}]*)\}", text):
        labels.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        labels.update(part.strip() for part in clause.split(",") if part.strip())
    return labels


def allowed_series() -> set[str]:
    names = set()
    for name, kind in promql.ALL_METRICS.items():
        names.add(name)
        if kind == "histogram":
            names.update(name + suffix for suffix in promql.HISTOGRAM_SUFFIXES)
    return names


def test_regenerating_yields_the_committed_json() -> None:
    pytest.importorskip("grafana_foundation_sdk", reason="the generator needs Python 3.11+")
    from dashboards import generate

    for path, build in generate.DASHBOARDS.items():
        assert path.read_text() == generate.render(build), (
            f"{path.name} is stale: run python -m dashboards.generate"
        )


def test_the_grafana_11_6_model_reads_every_field_we_write() -> None:
    """Decoded by the SDK's Grafana 11.6 schema, nothing of ours is dropped or renamed."""
    pytest.importorskip("grafana_foundation_sdk", reason="the SDK needs Python 3.11+")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    def contained(ours: Any, theirs: Any, where: str) -> None:
        if isinstance(ours, dict):
            assert isinstance(theirs, dict), where
            for key, value in ours.items():
                assert key in theirs, f"{where}.{key} dropped by the model"
                contained(value, theirs[key], f"{where}.{key}")
        elif isinstance(ours, list):
            assert isinstance(theirs, list), where
            assert len(ours) == len(theirs), where
            for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
                contained(a, b, f"{where}[{index}]")
        else:
            assert ours == theirs, where

    register_default_plugins()
    for name in FILES:
        data = load(name)
        decoded = Dashboard.from_json(data)
        contained(data, json.loads(JSONEncoder().encode(decoded)), name)
        assert data["schemaVersion"] == 41


def test_the_metric_names_are_what_the_exporter_writes() -> None:
    """promql.METRICS equals the families opentelemetry-exporter-prometheus writes for
    the instruments otel_stream creates."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, generate_latest

    from otel_stream.config import Settings
    from otel_stream.recorder import Instruments, get_meter

    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    try:
        instruments = Instruments(get_meter(provider), Settings())
        attributes = {"http.route": "/r", "http.stream.termination_reason": "completed"}
        for value in vars(instruments).values():
            if hasattr(value, "record"):
                value.record(0.5, attributes)
            else:
                value.add(1, attributes)
        text = generate_latest(registry).decode()
    finally:
        provider.shutdown()
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    families.pop("target_info", None)
    exposed = {
        (name + "_total" if kind == "counter" and not name.endswith("_total") else name): kind
        for name, kind in families.items()
    }
    assert exposed == promql.METRICS
    assert 'http_route="/r"' in text
    assert 'http_stream_termination_reason="completed"' in text


def test_the_hop_metric_names_are_what_the_exporter_writes() -> None:
    """promql.HOP_METRICS equals the families opentelemetry-exporter-prometheus writes for
    DESIGN.md's client-side and hop instruments, recorded by name (live.HopStandIn), and
    their attributes become the labels the hop row uses."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    try:
        live.HopStandIn(provider).relay(
            upstream=("api.example.com", 443),
            first_byte=0.2,
            first_token=0.3,
            hop=0.004,
            reason="completed",
        )
        text = generate_latest(registry).decode()
    finally:
        provider.shutdown()
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    families.pop("target_info", None)
    exposed = {
        (name + "_total" if kind == "counter" and not name.endswith("_total") else name): kind
        for name, kind in families.items()
    }
    assert exposed == promql.HOP_METRICS
    # The server side records the hop histogram; the client side's are the rest.
    assert set(promql.HOP_METRICS) & set(promql.METRICS) == {promql.HOP_TTFB}
    client_line = next(
        line for line in text.splitlines() if line.startswith(promql.CLIENT_TERMINATIONS + "{")
    )

    def attributes(line: str) -> set[str]:  # the labels, without the exporter's scope ones
        return {name for name in re.findall(r"(\w+)=", line) if not name.startswith("otel_scope_")}

    client_labels = attributes(client_line)
    assert client_labels == {
        "http_request_method",
        "server_address",
        "server_port",
        "http_response_status_code",
        "http_stream_termination_reason",
    }
    assert client_labels <= promql.LABELS
    hop_line = next(
        line for line in text.splitlines() if line.startswith(promql.HOP_TTFB + "_count")
    )
    assert attributes(hop_line) == {"http_request_method", "http_route"}


def test_the_metric_names_are_design_md_s() -> None:
    candidates = [ROOT.parent / "shared" / "DESIGN.md", Path("/work/shared/DESIGN.md")]
    design = next((path for path in candidates if path.exists()), None)
    if design is None:
        pytest.skip("shared/DESIGN.md is not beside this checkout")
    text = design.read_text()
    in_table = set(re.findall(r"`(http_server_stream_[a-z_]+)`", text))
    assert in_table <= set(promql.METRICS)
    for name in set(promql.METRICS) - in_table:
        # The LLM histograms: DESIGN.md names the instrument; seconds get "_seconds".
        instrument = name.removesuffix("_seconds").replace("_", ".")
        instrument = instrument.replace("time.to.first.token", "time_to_first_token")
        instrument = instrument.replace("time.per.output.token", "time_per_output_token")
        instrument = instrument.replace("time.to.first.byte", "time_to_first_byte")
        assert f"`{instrument}`" in text, name
    # The client side and the hop: DESIGN.md names the instruments of live.HOP_INSTRUMENTS.
    assert "`http.server.stream.hop.time_to_first_byte`" in text
    assert "under `http.client.stream.*`" in text
    for instrument in live.HOP_INSTRUMENTS:
        if instrument.startswith("http.client.stream."):
            assert f"`{instrument.removeprefix('http.client.stream.')}`" in text, instrument


def test_queries_name_only_design_metrics_and_labels() -> None:
    allowed = allowed_series()
    for query in all_queries():
        names = metric_names(query.expr)
        assert names, query
        assert names <= allowed, (query.title, names - allowed)
        assert label_names(query.expr) <= promql.LABELS, (query.title, query.expr)
    for query in variable_queries():
        inner = query.removeprefix("label_values(").removesuffix(")")
        selector, label = inner.rsplit(",", 1)
        assert metric_names(selector) == {promql.VARIABLE_SOURCE}
        assert label.strip() in promql.LABELS


def test_the_name_check_would_catch_a_stranger() -> None:
    assert metric_names('sum by (le) (rate(http_server_requests_total{a="b"}[5m]))') == {
        "http_server_requests_total"
    }
    assert metric_names("1 / histogram_quantile(0.5, sum(x_bucket) or vector(0))") == {"x_bucket"}


def test_every_selector_is_filtered_by_job_instance_and_route() -> None:
    """Server-side selectors by job, instance and route; the client side's (no route on
    them: a route filter would drop them all) by job and instance, never by route."""
    client_side = 0
    for query in all_queries():
        text = without_strings(query.expr)
        # Every metric name is followed by its matchers...
        for name in metric_names(query.expr):
            assert re.search(rf"\b{name}(?!\{{)\b", re.sub(r"\{[^}]*\}", "{}", text)) is None, (
                f"{name} without matchers in {query.title}"
            )
        # ...and every set of matchers holds the variable filters of its metric.
        selectors = re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}", query.expr)
        assert selectors
        for name, selector in selectors:
            if promql.base_name(name).startswith("http_client_"):
                client_side += 1
                assert all(wanted in selector for wanted in CLIENT_FILTERS), (query.title, selector)
                assert "http_route" not in selector, (query.title, selector)
            else:
                assert all(wanted in selector for wanted in FILTERS), (query.title, selector)
    assert client_side >= 5
    instance, route = variable_queries()[1:3]
    assert 'job=~"$job"' in instance
    assert 'job=~"$job"' in route
    assert 'instance=~"$instance"' in route


def test_the_filter_check_would_catch_a_route_filter_on_the_client_side() -> None:
    assert promql.filter_of(promql.CLIENT_TTFB + "_bucket") == promql.CLIENT_FILTER
    assert promql.filter_of(promql.HOP_TTFB + "_bucket") == promql.FILTER  # server-side
    assert "http_route" not in promql.series(promql.CLIENT_TERMINATIONS)
    with pytest.raises(ValueError, match="not one of otel-stream's metrics"):
        promql.series("http_client_stream_requests_total")


def test_rates_and_increases_are_over_the_rate_interval() -> None:
    for query in all_queries():
        ranges = re.findall(r"\[([^\]]*)\]", query.expr)
        assert all(window == "$__rate_interval" for window in ranges), query.title
        functions = len(re.findall(r"\b(?:rate|increase)\(", query.expr))
        assert functions == len(ranges), query.title
        assert "irate(" not in query.expr


def test_every_panel_has_a_unit_and_a_description() -> None:
    for board in all_dashboards():
        panels = [panel for panel in board["panels"] if panel["type"] != "row"]
        assert len(panels) >= 6
        for panel in panels:
            assert len(panel.get("description", "")) > 20, panel["title"]
            assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
            assert panel.get("targets"), panel["title"]
            if panel["type"] == "heatmap":
                assert panel["options"]["yAxis"]["unit"] == "s"
                assert panel["options"]["calculate"] is False
                assert {target["format"] for target in panel["targets"]} == {"heatmap"}
            if panel["type"] == "table":
                units = {
                    override["matcher"]["options"]: override["properties"][0]["value"]
                    for override in panel["fieldConfig"]["overrides"]
                }
                renamed = panel["transformations"][1]["options"]["renameByName"]
                assert set(units) == set(renamed.values()) - {"Route"}


def test_uids_are_fixed_and_ids_unique() -> None:
    for name, uid in FILES.items():
        board = load(name)
        assert board["uid"] == uid
        assert "id" not in board or board["id"] is None
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids))
        assert all(isinstance(i, int) and i > 0 for i in ids)
        positions = [(panel["gridPos"]["x"], panel["gridPos"]["y"]) for panel in board["panels"]]
        assert len(positions) == len(set(positions))
        assert all(panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24 for panel in board["panels"])


def test_the_datasource_is_a_variable_never_a_fixed_uid() -> None:
    def datasources(node: Any) -> list[dict[str, Any]]:
        found = []
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                found.append(node["datasource"])
            for value in node.values():
                found += datasources(value)
        elif isinstance(node, list):
            for value in node:
                found += datasources(value)
        return found

    for board in all_dashboards():
        variables = {variable["name"]: variable for variable in board["templating"]["list"]}
        assert list(variables) == ["datasource", "job", "instance", "route"]
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for name in ("job", "instance", "route"):
            assert variables[name]["type"] == "query"
            assert variables[name]["includeAll"]
            assert variables[name]["allValue"] == ".*"
            assert variables[name]["multi"]
        refs = datasources(board)
        assert len(refs) > 10
        assert all(ref == {"type": "prometheus", "uid": "${datasource}"} for ref in refs)
        assert "__inputs" not in board


def test_prometheus_configs_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    configs = sorted((DASHBOARDS / "prometheus").glob("*.yml"))
    assert [path.name for path in configs] == [
        "direct.yml",
        "native-histograms.yml",
        "via-collector.yml",
    ]
    result = processes.run(
        [promtool, "check", "config", *map(str, configs)],
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    via_collector = yaml.safe_load((DASHBOARDS / "prometheus" / "via-collector.yml").read_text())
    (job,) = via_collector["scrape_configs"]
    assert job["honor_labels"] is True


def test_collector_configs_wire_what_they_define() -> None:
    """The Collector cannot be installed here: check the pipelines' wiring by reading."""
    ports = {}
    for name, exporter in (
        ("otel-collector.yml", "prometheus"),
        ("otel-collector-native-histograms.yml", "prometheusremotewrite"),
    ):
        config = yaml.safe_load((DASHBOARDS / "collector" / name).read_text())
        pipeline = config["service"]["pipelines"]["metrics"]
        assert pipeline["exporters"] == [exporter]
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline[kind]) <= set(config[kind]), (name, kind)
        assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
        ports[exporter] = config["exporters"][exporter]["endpoint"]
    scraped = yaml.safe_load((DASHBOARDS / "prometheus" / "via-collector.yml").read_text())
    assert scraped["scrape_configs"][0]["static_configs"][0]["targets"] == [ports["prometheus"]]
    assert ports["prometheusremotewrite"].endswith("/api/v1/write")


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    provider = yaml.safe_load((DASHBOARDS / "provisioning" / "dashboards.yml").read_text())
    assert provider["apiVersion"] == 1
    (entry,) = provider["providers"]
    assert entry["type"] == "file"
    assert entry["options"]["path"].startswith("/")
    sources = yaml.safe_load((DASHBOARDS / "provisioning" / "datasources.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    assert "uid" not in source


def test_previews_are_committed_pngs() -> None:
    for name in PREVIEWS:
        data = (ROOT / "docs" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 1200, (name, width)
        assert height >= 600, (name, height)
        assert len(data) > 40_000, name
