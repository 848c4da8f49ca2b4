"""The dashboards work unchanged on a WSGI service: every panel query of both dashboards
returns data from a real Prometheus scraping a Flask app behind StreamingWSGIMiddleware
(werkzeug's server, opentelemetry-exporter-prometheus on /metrics) that served real
streams ending in every way a WSGI server can end them. (The LLM dashboard's hop row,
which needs a relayed upstream stream, is left out.)"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from dashboards import live

from otel_stream import StreamingWSGIMiddleware
from tests import wsgi_apps
from tests.dashboards_support import Scraped, check_every_query
from tests.wsgi_servers import open_raw, reset, serve

pytestmark = pytest.mark.slow

#: Every reason but ``cancelled``: a WSGI app runs in a thread nobody cancels.
REASONS = {"completed", "client_disconnect", "app_error", "incomplete"}


def flask_service() -> Any:
    """The test Flask app with ``/v1/events`` (SSE) beside its chat completions route."""
    from flask import Response, request

    app = wsgi_apps.flask_app()

    @app.get("/v1/events")
    def events() -> Response:
        return Response(
            wsgi_apps.sse_events(wsgi_apps.query(request.environ)), mimetype="text/event-stream"
        )

    return app


@contextlib.contextmanager
def served_with_metrics() -> Iterator[tuple[str, str]]:
    """The WSGI service on werkzeug's server and its /metrics on prometheus_client."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    resource = Resource.create({"service.name": "wsgi-dashboards"})
    meter_provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], resource=resource
    )
    tracer_provider = TracerProvider(resource=resource)
    metrics_port = live.free_port()
    metrics_server, metrics_thread = start_http_server(
        metrics_port, addr="127.0.0.1", registry=registry
    )
    app = flask_service()
    app.wsgi_app = StreamingWSGIMiddleware(
        app.wsgi_app, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    try:
        with serve(app, "werkzeug") as url:
            yield url, f"127.0.0.1:{metrics_port}"
    finally:
        metrics_server.shutdown()
        metrics_server.server_close()
        metrics_thread.join(5)
        meter_provider.shutdown()
        tracer_provider.shutdown()


def wave(url: str) -> int:
    """One request of every kind, concurrently; returns how many were made."""

    def read(target: str, method: str = "GET") -> None:
        with contextlib.suppress(httpx.HTTPError), httpx.Client(timeout=10) as client:
            client.request(method, url + target).read()

    def chat(done: str, finish: str = "stop") -> None:
        client = openai.OpenAI(base_url=url + "/v1", api_key="test", max_retries=0)
        try:
            stream = client.chat.completions.create(
                model="test-model",
                messages=[{"role": "user", "content": "Say something."}],
                stream=True,
                max_tokens=6,
                extra_query={"done": done, "pace": "0.005", "finish": finish},
            )
            for _ in stream:
                pass
        finally:
            client.close()

    def leave_mid_stream() -> None:
        sock = open_raw(url, "/v1/events?count=40&pace=0.02")
        with sock:
            sock.recv(4096)
            time.sleep(0.05)
        # the close above is a FIN: the server sees it at its next writes

    def leave_before_the_first_byte() -> None:
        sock = open_raw(url, "/v1/events?count=5&first=0.5")
        time.sleep(0.1)
        reset(sock)

    jobs: list[tuple[Any, tuple[Any, ...]]] = [
        *((read, ("/v1/events?count=6&pace=0.01&first=0.02",)) for _ in range(4)),
        (chat, ("1",)),
        (chat, ("1", "length")),
        (chat, ("0",)),  # incomplete: no [DONE]
        (read, ("/fail/r1?count=5",)),  # app_error
        (leave_mid_stream, ()),
        (leave_before_the_first_byte, ()),
        (read, ("/plain",)),
    ]
    threads = [threading.Thread(target=job, args=args) for job, args in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    return len(jobs)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    binary = live.prometheus_binary()
    if binary is None:
        pytest.skip("no prometheus binary: apt-get install prometheus (.ci/run does)")
    workdir: Path = tmp_path_factory.mktemp("prometheus")
    total = f'sum(http_server_stream_terminations_total{{job="{live.JOB}"}})'
    with (
        served_with_metrics() as (url, target),
        live.running_prometheus(binary, workdir, target) as prometheus,
    ):
        first = wave(url)
        prometheus.wait_until(total, first, timeout=30)
        second = wave(url)
        prometheus.wait_until(total, first + second, timeout=30)
        yield Scraped(prometheus, target)


#: The LLM dashboard's hop row reads what a relay records: the client side's series and
#: the hop histogram, recorded when an instrumented client stream runs inside the
#: server's exchange. This app relays nothing, so those queries are left out here.
RELAY_SERIES = ("http_client_stream_", "http_server_stream_hop_")


def test_every_streaming_overview_query_returns_data(scraped: Scraped) -> None:
    assert check_every_query(scraped, "streaming-overview", "/v1/events") >= 20


def test_every_llm_streams_query_returns_data(scraped: Scraped) -> None:
    """Every query but the hop row's (a relay's series)."""
    assert check_every_query(scraped, "llm-streams", "/v1/chat/completions", RELAY_SERIES) >= 12


def test_the_panels_show_how_the_wsgi_streams_ended(scraped: Scraped) -> None:
    board = live.load_dashboards()["streaming-overview"]
    by_title = {(q.title, q.ref_id): q.expr for q in live.panel_queries(board)}
    reasons = scraped.label_values(
        by_title[("Terminations by reason", "A")], "http_stream_termination_reason"
    )
    assert reasons == REASONS
    routes = scraped.label_values(by_title[("Per route", "A")], "http_route")
    assert {"/v1/events", "/v1/chat/completions", "/fail/<room>", "/plain"} <= routes
    everything = scraped.variables(None)
    (gave_up,) = scraped.values(by_title[("Gave up before the first byte", "A")], everything)
    assert 0 < gave_up < 0.5  # one raw client per wave leaves before the first byte
    (completed,) = scraped.values(by_title[("Completed", "A")], everything)
    assert 0.3 < completed < 1
