"""``promtool test rules`` on synthetic series: every panel query computes what its title
says (the quantiles by Prometheus' interpolation inside a bucket, the shares, the rates),
and the job/instance/route filters keep other targets and routes out."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboards import live, promql

from tests import processes

ROUTE = "/v1/chat/completions"
TARGET = {"job": "api", "instance": "10.0.0.1:9464", "http_route": ROUTE}
# Noise the filters must keep out: another route of the same target, another job.
OTHER_ROUTE = {**TARGET, "http_route": "/v1/other"}
OTHER_JOB = {"job": "batch", "instance": "10.0.0.2:9464", "http_route": ROUTE}
# The client side: the same target's calls to its upstreams (no route), and noise from
# another instance of the job and from another job.
UPSTREAM = {
    "job": "api",
    "instance": "10.0.0.1:9464",
    "http_request_method": "POST",
    "server_address": "api.openai.com",
    "server_port": "443",
    "http_response_status_code": "200",
}
CLIENT_NOISE = (
    {**UPSTREAM, "instance": "10.0.0.3:9464"},
    {**UPSTREAM, "job": "batch", "instance": "10.0.0.2:9464"},
)
CLIENT_TERMINATIONS = [  # per minute, the target: (host, reason, count)
    ("api.openai.com", "completed", 50),
    ("api.openai.com", "consumer_closed", 5),
    ("api.anthropic.com", "completed", 20),
    ("api.anthropic.com", "server_disconnect", 3),
]
PICKED = {"job": "api", "instance": "10.0.0.1:9464", "route": ROUTE, "__rate_interval": "5m"}
ALL = {"job": "api", "instance": ".*", "route": ".*", "__rate_interval": "5m"}

# Per-minute increments of the target's buckets (le -> cumulative count): a quantile of
# these lands inside a bucket, so Prometheus' linear interpolation is exercised.
BUCKETS = {"0.1": 20, "0.25": 40, "0.5": 80, "1": 100, "+Inf": 100}
# Prometheus: rank q * 100, bucket (a, b] holding ranks c_a..c_b -> a + (b - a) *
# (rank - c_a) / (c_b - c_a). p50: 0.25 + 0.25 * 10 / 40; p90: 0.5 + 0.5 * 10 / 20; ...
QUANTILES = {0.5: 0.3125, 0.9: 0.75, 0.99: 0.975}
SUMS = {promql.SEND_WAIT: 3, promql.BODY_SIZE: 6000}  # per minute; the others: 30
TERMINATIONS = [  # per minute, the target
    ({"http_stream_termination_reason": "completed", "gen_ai_response_finish_reason": "stop"}, 80),
    (
        {"http_stream_termination_reason": "completed", "gen_ai_response_finish_reason": "length"},
        10,
    ),
    ({"http_stream_termination_reason": "client_disconnect", "http_stream_phase": "waiting"}, 6),
    ({"http_stream_termination_reason": "app_error"}, 2),
    ({"http_stream_termination_reason": "incomplete"}, 2),
]

# What each panel query must return with PICKED (label set -> value), beyond the
# quantiles and heatmaps, which are checked generically.
R = f'{{http_route="{ROUTE}"}}'
EXPECTED: dict[tuple[str, str, str], dict[str, float]] = {
    ("otel-stream-overview", "Requests per second", "A"): {"{}": 100 / 60},
    ("otel-stream-overview", "Completed", "A"): {"{}": 0.9},
    ("otel-stream-overview", "Streams in flight", "A"): {"{}": 5},
    ("otel-stream-overview", "Requests in flight by phase", "A"): {
        '{http_stream_phase="streaming"}': 5
    },
    ("otel-stream-overview", "Terminations by reason", "A"): {
        '{http_stream_termination_reason="completed"}': 90 / 60,
        '{http_stream_termination_reason="client_disconnect"}': 6 / 60,
        '{http_stream_termination_reason="app_error"}': 2 / 60,
        '{http_stream_termination_reason="incomplete"}': 2 / 60,
    },
    ("otel-stream-overview", "Gave up before the first byte", "A"): {"{}": 0.06},
    ("otel-stream-overview", "Body bytes sent", "A"): {R: 100},
    ("otel-stream-overview", "Chunks per stream", "A"): {"{}": 0.3},
    ("otel-stream-overview", "Send wait share", "A"): {R: 0.1},
    ("otel-stream-overview", "Per route", "A"): {R: 100 / 60},
    ("otel-stream-overview", "Per route", "B"): {R: 0.9},
    ("otel-stream-overview", "Per route", "C"): {R: 0.06},
    ("otel-stream-overview", "Per route", "D"): {R: 0.04},
    ("otel-stream-llm", "Finish reasons", "A"): {
        '{gen_ai_response_finish_reason="stop"}': 80 / 60,
        '{gen_ai_response_finish_reason="length"}': 10 / 60,
    },
    ("otel-stream-llm", "Incomplete answers", "A"): {R: 2 / 60},
    ("otel-stream-llm", "Upstream streams by how they ended", "A"): {
        f'{{http_stream_termination_reason="{reason}", server_address="{host}"}}': count / 60
        for host, reason, count in CLIENT_TERMINATIONS
    },
    ("otel-stream-llm", "Incomplete answers", "B"): {
        '{gen_ai_response_finish_reason="length"}': 10 / 60
    },
}
# With "All" picked: the waiting requests (no route) and the other route come in.
EXPECTED_ALL: dict[tuple[str, str, str], dict[str, float]] = {
    ("otel-stream-overview", "Requests in flight by phase", "A"): {
        '{http_stream_phase="waiting"}': 3,
        '{http_stream_phase="streaming"}': 12,
    },
    ("otel-stream-overview", "Requests per second", "A"): {"{}": 200 / 60},
    # The downstream side of the hop row stays on the routes that relay (the other
    # route has no hop series): the target's quantiles, though its TTFB is in the mix.
    ("otel-stream-llm", "First byte: upstream vs downstream", "C"): {"{}": QUANTILES[0.5]},
    ("otel-stream-llm", "First token: upstream vs downstream", "D"): {"{}": QUANTILES[0.99]},
}


def labels(values: dict[str, str]) -> str:
    return "{" + ", ".join(f'{key}="{value}"' for key, value in values.items()) + "}"


def input_series() -> list[dict[str, str]]:
    series = []

    def add(name: str, label_set: dict[str, str], per_minute: float) -> None:
        series.append({"series": name + labels(label_set), "values": f"0+{per_minute}x15"})

    noise = dict.fromkeys(BUCKETS, 100)
    for name, kind in promql.ALL_METRICS.items():
        if kind != "histogram":
            continue
        if name.startswith("http_client_"):
            owners = [(UPSTREAM, BUCKETS), *((other, noise) for other in CLIENT_NOISE)]
        elif name == promql.HOP_TTFB:  # the other route relays nothing
            owners = [(TARGET, BUCKETS), (OTHER_JOB, noise)]
        else:
            owners = [(TARGET, BUCKETS), (OTHER_ROUTE, noise), (OTHER_JOB, noise)]
        for owner, counts in owners:
            for le, count in counts.items():
                add(f"{name}_bucket", {**owner, "le": le}, count)
            add(f"{name}_count", owner, 100)
            add(f"{name}_sum", owner, SUMS.get(name, 30) if owner is TARGET else 1)
    for extra, per_minute in TERMINATIONS:
        add(promql.TERMINATIONS, {**TARGET, **extra}, per_minute)
    for host, reason, per_minute in CLIENT_TERMINATIONS:
        ended = {"server_address": host, "http_stream_termination_reason": reason}
        add(promql.CLIENT_TERMINATIONS, {**UPSTREAM, **ended}, per_minute)
    for other in CLIENT_NOISE:
        ended = {"http_stream_termination_reason": "completed"}
        add(promql.CLIENT_TERMINATIONS, {**other, **ended}, 100)
    waiting = {
        "http_stream_termination_reason": "client_disconnect",
        "http_stream_phase": "waiting",
    }
    add(promql.TERMINATIONS, {**OTHER_ROUTE, **waiting}, 100)
    add(promql.TERMINATIONS, {**OTHER_JOB, "http_stream_termination_reason": "completed"}, 50)
    for owner, phase, value in (
        ({"job": "api", "instance": TARGET["instance"]}, "waiting", 3),
        (TARGET, "streaming", 5),
        (OTHER_ROUTE, "streaming", 7),
        (OTHER_JOB, "streaming", 11),
    ):
        gauge = {**owner, "http_stream_phase": phase}
        series.append({"series": promql.ACTIVE + labels(gauge), "values": f"{value}x15"})
    return series


def generic(query: live.PanelQuery) -> dict[str, float] | None:
    """Expectations every quantile and heatmap query shares, from the synthetic buckets."""
    expr = query.expr
    by_route = "by (le, http_route)" in expr
    key = R if by_route else "{}"
    for level, value in QUANTILES.items():
        if expr.startswith(f"histogram_quantile({level}, "):
            return {key: value}
        if expr.startswith(f"1 / histogram_quantile({level}, "):
            return {key: 1 / value}
    if expr.startswith("sum by (le) (increase("):
        return {f'{{le="{le}"}}': count * 5 for le, count in BUCKETS.items()}
    return None


def case(expr: str, expected: dict[str, float]) -> dict[str, Any]:
    """A test case that holds when ``expr`` returns exactly ``expected``, to 1e-9."""
    if len(expected) == 1 and "{}" in expected:
        value = expected["{}"]
        check = f"abs(({expr}) - {value!r}) <= bool {1e-9 * max(1.0, abs(value))!r}"
    else:
        label_sets = [dict(re.findall(r'(\w+)="([^"]*)"', key)) for key in expected]
        (names,) = {tuple(sorted(labels)) for labels in label_sets}

        def vector_of(value: float, labels: dict[str, str]) -> str:
            text = f"vector({value!r})"
            for name, label_value in labels.items():
                text = f'label_replace({text}, "{name}", "{label_value}", "", "")'
            return text

        reference = " or ".join(
            vector_of(value, labels)
            for labels, value in zip(label_sets, expected.values(), strict=True)
        )
        check = f"abs(({expr}) - on ({', '.join(names)}) ({reference})) <= bool 1e-9"
    return {
        "expr": check,
        "eval_time": "10m",
        "exp_samples": [{"labels": key, "value": 1} for key in expected],
    }


def test_panel_queries_compute_what_they_say(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    cases = []
    for board in live.load_dashboards().values():
        for query in live.panel_queries(board):
            key = (query.dashboard, query.title, query.ref_id)
            expected = EXPECTED.get(key) or generic(query)
            assert expected is not None, f"no expectation for {key}: {query.expr}"
            cases.append(case(live.substitute(query.expr, PICKED), expected))
            if key in EXPECTED_ALL:
                cases.append(case(live.substitute(query.expr, ALL), EXPECTED_ALL[key]))
    assert len(cases) >= 40
    spec = {
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series(), "promql_expr_test": cases}],
    }
    path = tmp_path / "dashboards_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, width=10_000))
    result = processes.run([promtool, "test", "rules", str(path)], timeout=60)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


BROKEN = {
    # Without the route filter, p50 moves (the other route's buckets come in).
    "route filter dropped": (
        promql.quantile(0.5, promql.TTFB).replace('http_route=~"$route"', 'http_route=~".*"'),
        PICKED,
    ),
    # The hop row's downstream side without its "routes that relay" restriction.
    "relaying routes dropped": (promql.quantile(0.5, promql.TTFB), ALL),
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_filter_would_fail(tmp_path: Path, broken: str) -> None:
    """The synthetic noise is there to be kept out: without a filter p50 moves."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    expr, variables = BROKEN[broken]
    spec = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series(),
                "promql_expr_test": [case(live.substitute(expr, variables), {"{}": 0.3125})],
            }
        ],
    }
    path = tmp_path / "broken_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, width=10_000))
    result = processes.run([promtool, "test", "rules", str(path)], timeout=60)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr
