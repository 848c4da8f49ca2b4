"""``otel-stream probe``: the verdict rule, and the command against real servers."""

from __future__ import annotations

import io
import re
import urllib.request
from collections.abc import Iterator

import pytest

from otel_stream import probe
from otel_stream.probe import (
    EXIT_BUFFERS,
    EXIT_ERROR,
    EXIT_STREAMS,
    Observation,
    judge,
    request_for,
)
from tests.cli_support import demo_server, run_cli, wait_for_port
from tests.servers import free_port

SSE = [("content-type", "text/event-stream")]


def spread(count: int, start: float, step: float, size: int = 100) -> list[tuple[float, int]]:
    return [(start + index * step, size) for index in range(count)]


def test_reads_spread_over_the_answer_stream() -> None:
    verdict = judge(Observation(200, SSE, 0.01, spread(40, 0.4, 0.025)))
    assert verdict.exit_code == EXIT_STREAMS
    assert verdict.line.startswith("streams: 40 reads")


def test_one_read_at_the_end_buffers() -> None:
    verdict = judge(Observation(200, SSE, 1.5, [(1.6, 900)]))
    assert verdict.exit_code == EXIT_BUFFERS
    assert verdict.line.startswith("buffers: 100% of the body")


def test_a_read_holding_most_of_the_body_buffers() -> None:
    # A proxy releasing a full buffer, then the tail as it comes.
    arrivals = [(0.9, 4096), *spread(10, 1.0, 0.05, 100)]
    assert judge(Observation(200, SSE, 0.01, arrivals)).exit_code == EXIT_BUFFERS


def test_many_small_reads_all_at_the_end_buffer() -> None:
    # The lump split into many reads by the network still arrives at once.
    verdict = judge(Observation(200, SSE, 0.01, spread(30, 1.50, 0.001, 100)))
    assert verdict.exit_code == EXIT_BUFFERS


def test_many_events_per_read_buffers() -> None:
    # A proxy releasing 4 kB pieces: each read completes a score of events.
    observation = Observation(200, SSE, 0.01, [(0.9, 3931), (1.45, 4096), (1.53, 708)])
    observation.events_per_read = [22, 23, 6]
    verdict = judge(observation)
    assert verdict.exit_code == EXIT_BUFFERS
    assert verdict.line.startswith("buffers: 51 events arrived in 3 reads of up to 4096 bytes")


def test_one_event_per_read_streams() -> None:
    observation = Observation(200, SSE, 0.01, spread(40, 0.4, 0.025))
    observation.events_per_read = [0] + [1] * 38 + [3]
    assert judge(observation).exit_code == EXIT_STREAMS


def test_a_broken_connection_is_an_error() -> None:
    observation = Observation(200, SSE, 0.01, spread(3, 0.4, 0.025), broken="peer closed")
    verdict = judge(observation)
    assert verdict.exit_code == EXIT_ERROR
    assert verdict.line == "error: the connection broke after 300 bytes in 3 reads: peer closed"


def test_a_short_exchange_is_inconclusive() -> None:
    verdict = judge(Observation(200, SSE, 0.01, spread(5, 0.02, 0.01)))
    assert verdict.exit_code == EXIT_ERROR
    assert verdict.line.startswith("error: inconclusive")


def test_one_json_body_is_not_a_stream() -> None:
    observation = Observation(200, [("content-type", "application/json")], 2.0, [(2.0, 300)])
    verdict = judge(observation)
    assert verdict.exit_code == EXIT_ERROR
    assert verdict.line == "error: not a stream: one 300-byte application/json body"


def test_chunked_plain_text_over_time_is_a_stream() -> None:
    observation = Observation(200, [("content-type", "text/plain")], 0.01, spread(20, 0.3, 0.05))
    assert judge(observation).exit_code == EXIT_STREAMS


def test_non_2xx_and_empty_bodies_are_errors() -> None:
    assert judge(Observation(502, SSE)).line == "error: HTTP 502: not a successful response"
    assert judge(Observation(200, SSE)).line == "error: the response has no body"
    timed_out = Observation(200, SSE, timed_out=True)
    assert judge(timed_out).line == "error: no body byte arrived before the timeout"


def test_request_defaults_look_like_a_browser() -> None:
    method, headers, body = request_for("http://h/v1/chat/completions", None, None, [])
    assert method == "POST"
    assert headers["accept-encoding"] == "gzip, deflate, br"
    assert headers["content-type"] == "application/json"
    assert body is not None
    assert b'"stream": true' in body

    method, headers, body = request_for("http://h/events", None, None, ["Accept: text/plain"])
    assert (method, body) == ("GET", None)
    assert headers["accept"] == "text/plain"
    with pytest.raises(ValueError, match="Name: value"):
        request_for("http://h/events", None, None, ["no colon"])


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    prometheus_port = free_port()
    with demo_server("--prometheus-port", str(prometheus_port)) as (url, process):
        wait_for_port(prometheus_port, process)
        yield url, prometheus_port


def test_probe_of_the_demo_server_streams_and_is_measured(server: tuple[str, int]) -> None:
    url, prometheus_port = server
    result = run_cli("probe", url + "/v1/chat/completions")
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stdout
    assert lines[-1].startswith("streams: ")
    assert lines[0] == f"POST {url}/v1/chat/completions -> HTTP 200"
    assert "  content-type: text/event-stream; charset=utf-8" in lines
    assert "  transfer-encoding: chunked" in lines
    events = re.search(r", (\d+) events,", result.stdout)
    assert events is not None
    assert int(events.group(1)) > 10

    with urllib.request.urlopen(f"http://127.0.0.1:{prometheus_port}/metrics") as response:
        exposition = response.read().decode()
    assert re.search(
        r'http_server_stream_terminations_total\{[^}]*http_stream_termination_reason="completed"',
        exposition,
    )
    assert "http_server_stream_time_to_first_byte_seconds_bucket" in exposition


def test_unreachable_url_is_a_one_line_error() -> None:
    port = free_port()  # nothing listens there
    result = run_cli("probe", f"http://127.0.0.1:{port}/v1/chat/completions")
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: cannot reach http://127.0.0.1:{port}/v1/chat/completions: ")
    assert "refused" in lines[0]


def test_non_streaming_response_is_an_error(server: tuple[str, int]) -> None:
    url, _ = server
    result = run_cli("probe", url + "/v1/models")
    assert result.returncode == 1
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"error: not a stream: one \d+-byte application/json body", last)


def test_http_error_status_is_an_error(server: tuple[str, int]) -> None:
    url, _ = server
    result = run_cli("probe", url + "/v1/chat/completions", "--data", "{}")
    assert result.returncode == 1
    assert result.stdout.strip().splitlines()[-1] == "error: HTTP 400: not a successful response"


def test_usage_errors_exit_1_not_2() -> None:
    result = run_cli("probe")
    assert result.returncode == 1  # 2 means "buffers"
    assert "the following arguments are required: url" in result.stderr


ERROR_STYLE = re.compile(r"error: [a-zA-Z0-9]")  # one prefix, lower case, then the reason


@pytest.mark.parametrize(
    "observation",
    [
        Observation(404, SSE),
        Observation(200, SSE, 0.01, [], timed_out=True),
        Observation(200, SSE, 0.01, []),
        Observation(200, SSE, 0.01, [(0.02, 10)], broken="peer closed"),
        Observation(200, [("content-type", "application/json")], 0.3, [(0.4, 50)]),
        Observation(200, SSE, 0.01, spread(5, 0.02, 0.01)),
    ],
)
def test_every_error_verdict_has_the_one_error_style(observation: Observation) -> None:
    verdict = judge(observation)
    assert verdict.exit_code == EXIT_ERROR
    assert ERROR_STYLE.match(verdict.line), verdict.line


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/chat/completions", []),  # nothing listens: cannot reach
        ("/", ["no colon here"]),  # a bad --header
    ],
)
def test_errors_before_any_answer_have_the_same_style(path: str, headers: list[str]) -> None:
    """No answer to judge: still one line, in the style of the error verdicts."""
    out = io.StringIO()
    url = f"http://127.0.0.1:{free_port()}{path}"
    assert probe.main(url, headers=headers, timeout=2, out=out) == EXIT_ERROR
    (line,) = out.getvalue().splitlines()
    assert ERROR_STYLE.match(line), line
