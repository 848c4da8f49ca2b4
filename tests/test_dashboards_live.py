"""Every panel query of both dashboards returns data from a real Prometheus scraping a real
instrumented server (uvicorn, opentelemetry-exporter-prometheus on /metrics) that served
real streams ending in every way docs/architecture.md names."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboards import live

from tests.dashboards_support import Scraped, check_every_query

pytestmark = pytest.mark.slow

REASONS = {"completed", "client_disconnect", "app_error", "cancelled", "incomplete"}


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    binary = live.prometheus_binary()
    if binary is None:
        pytest.skip("no prometheus binary: apt-get install prometheus (.ci/run does)")
    workdir: Path = tmp_path_factory.mktemp("prometheus")
    total = f'sum(http_server_stream_terminations_total{{job="{live.JOB}"}})'
    with (
        live.serve_demo() as service,
        live.running_prometheus(binary, workdir, service.metrics_target) as prometheus,
    ):
        # Two waves, each scraped: every series exists before the second wave, so every
        # rate() over the run is positive.
        first = asyncio.run(live.wave(service.url, hop=service.hop))
        prometheus.wait_until(total, first, timeout=30)
        second = asyncio.run(live.wave(service.url, hop=service.hop))
        prometheus.wait_until(total, first + second, timeout=30)
        yield Scraped(prometheus, service.metrics_target)


def test_every_streaming_overview_query_returns_data(scraped: Scraped) -> None:
    assert check_every_query(scraped, "streaming-overview", "/v1/events") >= 20


def test_every_llm_streams_query_returns_data(scraped: Scraped) -> None:
    assert check_every_query(scraped, "llm-streams", "/v1/chat/completions") >= 25


def test_the_panels_show_how_the_streams_ended(scraped: Scraped) -> None:
    board = live.load_dashboards()["streaming-overview"]
    by_title = {(q.title, q.ref_id): q.expr for q in live.panel_queries(board)}
    reasons = scraped.label_values(
        by_title[("Terminations by reason", "A")], "http_stream_termination_reason"
    )
    assert reasons == REASONS
    phases = scraped.label_values(
        by_title[("Requests in flight by phase", "A")], "http_stream_phase"
    )
    assert phases == {"waiting", "streaming"}
    routes = scraped.label_values(by_title[("Per route", "A")], "http_route")
    assert {"/v1/events", "/v1/chat/completions", "/v1/jobs/{job_id}/logs", "/v1/legacy"} <= routes
    everything = scraped.variables(None)
    (gave_up,) = scraped.values(by_title[("Gave up before the first byte", "A")], everything)
    assert 0 < gave_up < 0.5  # one raw client per wave leaves before the first byte
    (completed,) = scraped.values(by_title[("Completed", "A")], everything)
    assert 0.3 < completed < 1
    (p50,) = scraped.values(by_title[("Time to first byte", "A")], everything)
    (p99,) = scraped.values(by_title[("Time to first byte", "C")], everything)
    assert 0 < p50 <= p99 < 5


def test_the_hop_row_shows_each_upstream_and_the_hop(scraped: Scraped) -> None:
    """The client side's and the hop's series (recorded by name: live.HopStandIn) come
    back through the hop row's queries, per upstream host and reason."""
    board = live.load_dashboards()["llm-streams"]
    by_title = {(q.title, q.ref_id): q.expr for q in live.panel_queries(board)}
    ended = by_title[("Upstream streams by how they ended", "A")]
    assert scraped.label_values(ended, "server_address") == {host for host, _ in live.UPSTREAMS}
    reasons = scraped.label_values(ended, "http_stream_termination_reason")
    assert reasons == {"completed", "server_disconnect", "consumer_closed", "incomplete"}
    for route in (None, "/v1/chat/completions"):  # the route variable leaves the client side
        variables = scraped.variables(route)
        (upstream_p50,) = scraped.values(
            by_title[("First byte: upstream vs downstream", "A")], variables
        )
        (hop_p50,) = scraped.values(
            by_title[("Time the hop added to the first byte", "A")], variables
        )
        (hop_p99,) = scraped.values(
            by_title[("Time the hop added to the first byte", "B")], variables
        )
        assert 0 < hop_p50 <= hop_p99 < upstream_p50, (route, hop_p50, hop_p99, upstream_p50)
    # On a route that relays nothing, the downstream side is empty.
    other = scraped.variables("/v1/events")
    assert scraped.values(by_title[("First byte: upstream vs downstream", "C")], other) == []
