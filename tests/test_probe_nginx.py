"""``otel-stream probe`` through a real nginx in front of ``otel-stream demo --serve``.

The upstream is the demo's fake model (about 1.2 s of tokens after a 0.35 s wait), so an
answer produced over time is what each configuration has to pass on.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from tests.cli_support import NGINX, demo_server, nginx, run_cli, wait_for_port
from tests.processes import child_environment
from tests.servers import free_port, wait_until

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx)"
)

GZIP_SSE = "gzip on; gzip_types text/event-stream; gzip_proxied any;"


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def upstream(metrics_port: int) -> Iterator[str]:
    with demo_server("--prometheus-port", str(metrics_port)) as (url, process):
        wait_for_port(metrics_port, process)
        yield url


def probe(url: str, *options: str) -> tuple[int, list[str]]:
    result = run_cli("probe", url + "/v1/chat/completions", "--timeout", "20", *options)
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    return result.returncode, lines


def test_gzip_on_event_streams_buffers(upstream: str) -> None:
    with nginx(upstream, GZIP_SSE) as url:
        code, lines = probe(url)
    assert lines[-1].startswith("buffers: "), lines
    assert code == 2
    assert "  content-encoding: gzip" in lines
    assert any("hint: a hop compresses the stream" in line for line in lines)


def test_default_proxy_buffering_releases_events_in_batches(upstream: str) -> None:
    """nginx's defaults (proxy_buffering on, HTTP/1.0 to the upstream): the answer comes
    in a few 4 kB pieces, many events each."""
    with nginx(upstream, "") as url:
        code, lines = probe(url)
    assert lines[-1].startswith("buffers: "), lines
    assert code == 2
    assert " at a time " in lines[-1]


def test_proxy_buffering_off_without_gzip_streams(upstream: str) -> None:
    with nginx(upstream, "gzip off; proxy_buffering off;") as url:
        code, lines = probe(url)
    assert lines[-1].startswith("streams: "), lines
    assert code == 0
    assert "  content-encoding: (none)" in lines
    assert "  server: nginx/" in "\n".join(lines)  # the probe went through nginx


def test_accel_buffering_header_from_the_app_rescues_both_buffering_configurations() -> None:
    """With the middleware's ``accel_buffering_header``, nginx turns its buffering off for
    that response, and its gzip filter then flushes every chunk: the stream survives
    both configurations that buffer above."""
    env = child_environment(OTEL_STREAM_ACCEL_BUFFERING_HEADER="true")
    with demo_server(env=env) as (app_url, _):
        direct_code, direct = probe(app_url)
        with nginx(app_url, GZIP_SSE) as url:
            gzip_code, gzip_lines = probe(url)
        with nginx(app_url, "") as url:
            default_code, default_lines = probe(url)
    assert direct_code == 0
    assert "  x-accel-buffering: no" in direct  # nginx consumes the header: ask the app
    assert gzip_lines[-1].startswith("streams: "), gzip_lines
    assert gzip_code == 0
    assert "  content-encoding: gzip" in gzip_lines
    assert default_lines[-1].startswith("streams: "), default_lines
    assert default_code == 0


def test_read_timeout_shorter_than_the_first_token_cuts_the_stream(
    upstream: str, metrics_port: int
) -> None:
    """nginx gives up on a model that thinks longer than proxy_read_timeout: the client
    gets the headers and then a broken body; the app records a client disconnect while it
    was still waiting for its first token."""

    def disconnects_while_waiting() -> int:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url) as response:
            text = response.read().decode()
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            if line.startswith("http_server_stream_terminations_total{")
            and 'http_stream_phase="waiting"' in line
            and 'http_stream_termination_reason="client_disconnect"' in line
        )

    before = disconnects_while_waiting()
    with nginx(upstream, "proxy_read_timeout 1s;") as url:
        code, lines = probe(url, "--header", "x-demo-ttft: 3")
    assert code == 1
    assert lines[-1].startswith("error: the connection broke after 0 bytes"), lines
    assert wait_until(lambda: disconnects_while_waiting() == before + 1)
