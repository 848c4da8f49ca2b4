"""``otel-stream probe`` through a real nginx in front of ``otel-stream demo --serve``.

The upstream is the demo's fake model (about 1.2 s of tokens after a 0.35 s wait), so an
answer produced over time is what each configuration has to pass on.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cli_support import NGINX, clean_env, demo_server, nginx, run_cli

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx-light)"
)

GZIP_SSE = "gzip on; gzip_types text/event-stream; gzip_proxied any;"


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with demo_server() as (url, _):
        yield url


def probe(url: str) -> tuple[int, list[str]]:
    result = run_cli("probe", url + "/v1/chat/completions", "--timeout", "20")
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


def test_proxy_buffering_off_without_gzip_streams(upstream: str) -> None:
    with nginx(upstream, "gzip off; proxy_buffering off;") as url:
        code, lines = probe(url)
    assert lines[-1].startswith("streams: "), lines
    assert code == 0
    assert "  content-encoding: (none)" in lines
    assert "  server: nginx/" in "\n".join(lines)  # the probe went through nginx


def test_accel_buffering_header_from_the_app_makes_gzip_stream() -> None:
    """With the middleware's ``accel_buffering_header``, nginx turns its buffering off for
    that response, and its gzip filter then flushes every chunk: the stream survives
    the very configuration that buffers above."""
    env = clean_env(OTEL_STREAM_ACCEL_BUFFERING_HEADER="true")
    with demo_server(env=env) as (app_url, _):
        direct_code, direct = probe(app_url)
        with nginx(app_url, GZIP_SSE) as url:
            code, lines = probe(url)
    assert direct_code == 0
    assert "  x-accel-buffering: no" in direct  # nginx consumes the header: ask the app
    assert lines[-1].startswith("streams: "), lines
    assert code == 0
    assert "  content-encoding: gzip" in lines
