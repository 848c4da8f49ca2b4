"""``otel-stream demo --relay``: the relay, and the report's "is it the model or the hop?".

The relay (Starlette under uvicorn with ``StreamingMiddleware``, streaming each answer on
from the fake model with ``httpx.AsyncClient``, its calls recorded by
``StreamingClientInstrumentor``) is run as a user runs it, and its report's marks are
the check: every row passes with the default buckets. Each new kind of row is also shown
failing: coarse buckets, a layer in front of the relay that holds the first chunk where
the relay's telemetry cannot see it, a hop or an upstream reading that breaks the
derivation, a count behind the relay that differs.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from otel_stream import buckets
from otel_stream.cli import main
from otel_stream.demo import load, report, run
from otel_stream.demo.model import CHAT_PATH, Behaviour, ModelStopwatch, Timing
from otel_stream.demo.report import RelayData, bucketed
from otel_stream.demo.telemetry import setup
from tests.cli_support import run_cli
from tests.otlp_receiver import OTLPReceiver
from tests.processes import child_environment

EPSILON = report.EPSILON
ARGS = ("demo", "--relay", "--concurrency", "6", "--long-stream", "1", "--seed", "3")


def by_label(timings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {timing["label"]: timing for timing in timings}


# The demo through the relay, end to end -----------------------------------------------


@pytest.fixture
def otlp() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as receiver:
        yield receiver


@pytest.mark.slow
def test_relay_report_agrees_with_the_clients_and_the_model(otlp: OTLPReceiver) -> None:
    env = child_environment(**otlp.environment(), OTEL_SERVICE_NAME="gateway-under-test")
    result = run_cli(*ARGS, "--seconds", "4", "--relay-hold", "0.15", "--json", env=env, timeout=90)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is True, data["failed"]
    assert data["unexpected"] == []
    relay = data["relay"]
    assert relay["upstream"].endswith(CHAT_PATH)
    assert relay["upstream"] != data["url"]

    # The relay's own server: a cut answer behind it is its app_error (its stream raised).
    own = {(row["reason"], row["phase"]): row for row in data["terminations"]}
    assert own[("app_error", "streaming")]["telemetry"] >= 2
    assert ("incomplete", "streaming") not in own

    # Behind it, every layer counted like the clients, with the reasons a relay passes on.
    layers: dict[str, dict[tuple[str, str], int]] = {}
    for row in relay["terminations"]:
        assert row["telemetry"] == row["clients"], row
        layers.setdefault(row["layer"], {})[(row["reason"], row["phase"])] = row["telemetry"]
    upstream, model = layers[report.UPSTREAM_CALL], layers[report.MODEL_SERVER]
    for key in [
        ("completed", "streaming"),
        ("consumer_closed", "waiting"),  # a client gave up: the relay closed its call
        ("consumer_closed", "streaming"),  # a client left mid-answer, or the deadline
        ("server_disconnect", "streaming"),  # the model failed or cut its answer
    ]:
        assert upstream.get(key, 0) >= 1, (key, upstream)
    for key in [
        ("client_disconnect", "waiting"),
        ("client_disconnect", "streaming"),
        ("app_error", "streaming"),
        ("incomplete", "streaming"),
    ]:
        assert model.get(key, 0) >= 1, (key, model)
    assert sum(upstream.values()) == sum(model.values()) == data["requests"]

    # Model vs hop: each row held to its truth, and the numbers tell the story.
    timings = by_label(relay["timings"])
    assert list(timings) == [
        "upstream, at the relay's client",
        "model, at its own server",
        "hop: the relay's own part",
    ]
    for timing in timings.values():
        assert timing["count"]["ok"] is True, timing
        assert all(row["ok"] is True for row in timing["quantiles"]), timing
    first_byte = by_label(data["timings"])["time to first byte"]
    hop = timings["hop: the relay's own part"]
    # Every streamed answer that reached its client has a hop; answers in one message do not.
    single = sum(data["counts"]["single_message"].values())
    assert hop["count"]["clients"] == first_byte["count"]["clients"] - single
    p50 = {name: t["quantiles"][0] for name, t in timings.items()}
    assert 0.1 <= p50["hop: the relay's own part"]["exact"] <= 0.3  # the hold, 0.15 median
    upstream_p50 = p50["upstream, at the relay's client"]["exact"]
    assert upstream_p50 < first_byte["quantiles"][0]["exact"]  # the relay adds its hold
    assert data["long_stream"]["ok"] is True

    # Exported as two services, and the relay's calls carry the trace on to the model.
    traces: dict[str, set[str]] = {}
    for span in otlp.spans():
        traces.setdefault(span.trace_id, set()).add(span.resource["service.name"])
    assert set().union(*traces.values()) == {"gateway-under-test", "gateway-under-test-model"}
    assert sum(1 for services in traces.values() if len(services) == 2) >= data["requests"] / 2


def test_relay_report_reads_as_model_or_hop() -> None:
    result = run_cli(*ARGS, "--requests", "14", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    flat = " ".join(out.split())  # the console wraps long lines
    for text in (
        "against the relay at http://127.0.0.1:",
        "recorded by StreamingClientInstrumentor",
        "How the requests ended at the relay",
        "Behind the relay",
        "relay's upstream call",
        "model's server",
        "Is it the model or the hop? Time to first byte in seconds",
        "relay, as its clients waited",
        "upstream, at the relay's client",
        "hop: the relay's own part",
        "✓ every mark passed.",
    ):
        assert text in flat, text
    marks = [line.rstrip()[-1] for line in out.splitlines() if line.rstrip()[-1:] in ("✓", "✗")]
    assert set(marks) == {"✓"}
    assert len(marks) >= 5 + 8 + 3 * 4 + 3 * 4  # relay ends, behind it, timings, model or hop


def test_coarse_buckets_fail_the_model_and_hop_rows() -> None:
    env = child_environment(OTEL_STREAM_TTFB_BUCKETS="0.05,0.1")
    result = run_cli(*ARGS, "--requests", "12", "--relay-hold", "0.2", "--json", env=env)
    assert result.returncode == 2, result.stderr
    data = json.loads(result.stdout)
    timings = by_label(data["relay"]["timings"])
    for label in (
        "upstream, at the relay's client",
        "model, at its own server",
        "hop: the relay's own part",
    ):
        p50 = timings[label]["quantiles"][0]
        assert (p50["telemetry"], p50["bucket"], p50["ok"]) == (0.1, [0.1, None], False), label
        assert any(line.startswith(f"{label} p50:") for line in data["failed"]), data["failed"]
    # The counts behind the relay do not depend on buckets: they still agree.
    assert all(row["ok"] for row in data["relay"]["terminations"])


class HoldFirstBody:
    """ASGI middleware that holds the first body message: a layer in front of the relay's
    instrumentation (a buffering proxy, a compressor), which its telemetry cannot see."""

    def __init__(self, app: Any, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        held = False

        async def holding_send(message: Any) -> None:
            nonlocal held
            if message["type"] == "http.response.body" and message.get("body") and not held:
                held = True
                await asyncio.sleep(self.seconds)
            await send(message)

        await self.app(scope, receive, holding_send if scope["type"] == "http" else send)


def test_a_hold_the_relays_telemetry_cannot_see_fails_the_hop_and_the_relay() -> None:
    plan = load.LoadPlan(
        seconds=float("inf"),
        requests=10,
        concurrency=5,
        long_stream_seconds=0,
        seed=5,
        relay=True,
        relay_hold=0.0,
    )
    data = run.collect(plan, relay_outer=lambda app: HoldFirstBody(app, 0.4))
    assert data["ok"] is False
    hop = by_label(data["relay"]["timings"])["hop: the relay's own part"]
    assert hop["count"]["ok"] is True
    for row in hop["quantiles"]:
        # the relay's telemetry saw a hop of milliseconds; the clients waited 0.4 s more
        assert row["telemetry"] < 0.1
        assert row["exact"] >= 0.4
        assert row["ok"] is False
    first_byte = by_label(data["timings"])["time to first byte"]["quantiles"][0]
    assert first_byte["ok"] is False
    assert first_byte["error"] < -first_byte["tolerance"]
    # What happened behind the relay is still right: the upstream row and the counts agree.
    upstream = by_label(data["relay"]["timings"])["upstream, at the relay's client"]
    assert all(row["ok"] for row in upstream["quantiles"])
    assert all(row["ok"] for row in data["relay"]["terminations"])


# The relay itself --------------------------------------------------------------------


@pytest.fixture
def relay_and_model() -> Iterator[tuple[str, str]]:
    telemetry = setup()
    try:
        with (
            run.ServerThread(
                run.build_app(telemetry, Behaviour(tokens=8, ttft=0.05, token_interval=0.1)),
                run.listen(0),
            ) as model,
            run.ServerThread(
                run.build_relay_app(telemetry, model.url, connections=4),
                run.listen(0),
                lifespan="on",
            ) as relay,
        ):
            yield relay.url, model.url
    finally:
        telemetry.shutdown()


def chat(stream: bool = True) -> dict[str, Any]:
    return {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def test_the_relay_passes_each_chunk_on_as_it_arrives(relay_and_model: tuple[str, str]) -> None:
    relay, _ = relay_and_model
    arrivals = []
    with httpx.stream("POST", relay + CHAT_PATH, json=chat(), timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        started = time.perf_counter()
        for chunk in response.iter_raw():
            if b"data:" in chunk:
                arrivals.append(time.perf_counter() - started)
        body_done = arrivals[-1]
    # 8 tokens 0.1 s apart: a relay that buffered would deliver them all at once.
    assert len(arrivals) >= 8
    assert arrivals[0] < 0.15 < 0.6 < body_done


def test_the_relay_passes_status_and_answers_in_one_message(
    relay_and_model: tuple[str, str],
) -> None:
    relay, model = relay_and_model
    bad = httpx.post(relay + CHAT_PATH, content=b'{"messages": 3}', timeout=10)
    direct = httpx.post(model + CHAT_PATH, content=b'{"messages": 3}', timeout=10)
    assert bad.status_code == direct.status_code == 400
    assert bad.json() == direct.json()
    answer = httpx.post(relay + CHAT_PATH, json=chat(stream=False), timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-length"] == str(len(answer.content))
    assert answer.json()["choices"][0]["message"]["content"].startswith("A streaming")


def test_the_relay_cuts_its_answer_when_the_models_is_cut(
    relay_and_model: tuple[str, str],
) -> None:
    relay, _ = relay_and_model
    received = bytearray()

    def read_all() -> None:
        headers = {"x-demo-truncate-after": "2"}
        with httpx.stream(
            "POST", relay + CHAT_PATH, json=chat(), headers=headers, timeout=10
        ) as response:
            for chunk in response.iter_raw():
                received.extend(chunk)

    with pytest.raises(httpx.RemoteProtocolError):
        read_all()
    assert received.count(b'"content":') == 3  # the role chunk and two tokens
    assert b"[DONE]" not in received


def test_a_client_that_leaves_the_relay_leaves_the_model() -> None:
    """The relay closes its upstream response when its client leaves: the model's
    stopwatch and server see their client go, well before the answer would have ended."""
    telemetry, model_telemetry = setup(), setup()
    stopwatch = ModelStopwatch()
    behaviour = Behaviour(tokens=100, ttft=0.05, token_interval=0.05)
    try:
        with (
            run.ServerThread(
                run.build_app(model_telemetry, behaviour, stopwatch), run.listen(0)
            ) as model,
            run.ServerThread(
                run.build_relay_app(telemetry, model.url, connections=4),
                run.listen(0),
                lifespan="on",
            ) as relay,
        ):
            with socket.create_connection(("127.0.0.1", relay.port)) as sock:
                body = json.dumps(chat()).encode()
                sock.sendall(
                    b"POST " + CHAT_PATH.encode() + b" HTTP/1.1\r\nhost: relay\r\n"
                    b"content-type: application/json\r\nx-demo-request-id: 1\r\n"
                    b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                received = b""
                while b"data:" not in received:  # the first token, then leave
                    chunk = sock.recv(65536)
                    assert chunk, received
                    received += chunk
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                ended = report.read_metrics(model_telemetry.reader).terminations
                if ended:
                    break
                time.sleep(0.05)
        assert ended == {("client_disconnect", "streaming"): 1}
        assert stopwatch.timings[1].first_byte_at is not None
    finally:
        telemetry.shutdown()
        model_telemetry.shutdown()


# The report's arithmetic behind the relay ----------------------------------------------


def relayed_results(n: int, *, ttfb: float = 0.5) -> list[load.ClientResult]:
    return [
        load.ClientResult(
            "completed",
            observation="done",
            status=200,
            first_byte=ttfb + 0.01 * i,
            first_token=ttfb + 0.01 * i,
            end=ttfb + 1.0,
            request_id=i,
            sent_at=100.0 + i,
            relayed=True,
        )
        for i in range(n)
    ]


def stopwatch_for(results: list[load.ClientResult], model_ttfb: float) -> dict[int, Timing]:
    """The model answered each request ``model_ttfb`` after it arrived, 1 ms after sent,
    and its first byte reached the client 0.1 s later plus 1 ms of transits."""
    timings = {}
    for result in results:
        assert result.request_id is not None
        assert result.first_byte is not None
        client_first_byte = result.sent_at + result.first_byte
        first_byte_at = client_first_byte - 0.1 - 0.001
        timings[result.request_id] = Timing(first_byte_at - model_ttfb, first_byte_at)
    return timings


def relay_report(
    hop_values: list[float],
    upstream_values: list[float],
    *,
    model_values: list[float] | None = None,
    drop_one_call: bool = False,
) -> dict[str, Any]:
    results = relayed_results(20)
    stopwatch = stopwatch_for(results, 0.35)
    bounds = buckets.TTFB_BUCKETS
    metrics = report.Metrics(
        terminations={("completed", "streaming"): 20},
        durations={
            "completed": bucketed([r.duration or 0 for r in results], buckets.DURATION_BUCKETS)
        },
        histograms={
            report.TTFB: bucketed([r.first_byte or 0 for r in results], bounds),
            report.HOP: bucketed(hop_values, bounds),
            report.CLIENT_TTFB: bucketed(upstream_values, bounds),
        },
        client_terminations={("completed", "streaming"): 19 if drop_one_call else 20},
    )
    model = report.Metrics(
        terminations={("completed", "streaming"): 20},
        histograms={report.TTFB: bucketed(model_values or [0.35] * 20, bounds)},
    )
    return report.build_report(
        metrics,
        results,
        run={},
        first_token_supported=False,
        relay=RelayData(model, stopwatch, "http://127.0.0.1:1" + CHAT_PATH),
    )


def relay_rows(data: dict[str, Any]) -> dict[str, list[bool]]:
    return {t["label"]: [row["ok"] for row in t["quantiles"]] for t in data["relay"]["timings"]}


HOP = "hop: the relay's own part"
UPSTREAM = "upstream, at the relay's client"


def test_readings_the_derivation_allows_pass() -> None:
    # The hop, a transit short of the truth; the upstream, a transit over the model's.
    data = relay_report([0.1] * 20, [0.351] * 20)
    assert relay_rows(data) == {
        UPSTREAM: [True] * 3,
        "model, at its own server": [True] * 3,
        HOP: [True] * 3,
    }
    assert data["ok"] is True, data["failed"]


def test_a_hop_longer_than_from_the_models_first_byte_to_the_clients_fails() -> None:
    # The truth is 0.101 s; a hop cannot exceed it, whatever the clocks: 0.15 s is wrong
    # (say, a relay's telemetry that took its upstream's first byte too early).
    data = relay_report([0.15] * 20, [0.351] * 20)
    assert relay_rows(data)[HOP] == [False] * 3
    assert any(line.startswith(f"{HOP} p50:") for line in data["failed"])


def test_a_hop_short_of_the_truth_by_more_than_two_transits_fails() -> None:
    data = relay_report([0.0005] * 20, [0.351] * 20)
    assert relay_rows(data)[HOP] == [True] * 3  # 0.1 s short: within two transits of 0.1 s
    # The same shortfall on a longer hop is more than two transits can explain.
    results = relayed_results(20)
    stopwatch = stopwatch_for(results, 0.35)
    for timing in stopwatch.values():
        assert timing.first_byte_at is not None
        timing.first_byte_at -= 0.4  # the model's first byte left 0.4 s earlier
    hop = report.timing_row(
        report.HOP,
        HOP,
        bucketed([0.1] * 20, buckets.TTFB_BUCKETS),
        report.hop_truths(results, stopwatch),
        epsilon=(0.0, 2 * EPSILON),
    )
    assert [row["ok"] for row in hop["quantiles"]] == [False] * 3


def test_an_upstream_reading_below_the_models_own_fails() -> None:
    # The relay's client cannot see the first byte before the model sent it.
    data = relay_report([0.1] * 20, [0.3] * 20)
    assert relay_rows(data)[UPSTREAM] == [False] * 3
    assert relay_rows(data)["model, at its own server"] == [True] * 3


def test_a_model_server_reading_past_its_own_loops_delay_fails() -> None:
    # The model's stopwatch says 0.35 s; its middleware, in the same event loop, can add
    # at most epsilon: 0.6 s is a time to first byte measured from the wrong moment.
    data = relay_report([0.1] * 20, [0.351] * 20, model_values=[0.6] * 20)
    assert relay_rows(data)["model, at its own server"] == [False] * 3
    assert relay_rows(data)[UPSTREAM] == [True] * 3


def test_a_count_behind_the_relay_that_differs_fails() -> None:
    data = relay_report([0.1] * 20, [0.351] * 20, drop_one_call=True)
    (row,) = [r for r in data["relay"]["terminations"] if r["layer"] == report.UPSTREAM_CALL]
    assert (row["telemetry"], row["clients"], row["ok"]) == (19, 20, False)
    assert data["ok"] is False
    assert (
        "terminations at the relay's upstream call completed/streaming: telemetry 19, clients 20"
        in data["failed"]
    )
    # The upstream call's time to first byte is counted separately: it has 20 still.
    assert relay_rows(data)[UPSTREAM] == [True] * 3


def test_one_sided_slack() -> None:
    estimate = report.Estimate(0.45, 0.4, 0.5)
    # Above the truth: only the bucket and the slack above (none) explain it.
    assert report.bucket_bound(estimate, 0.42, (0.0, 0.2)) == pytest.approx(0.05 / 0.42)
    # Below the truth: up to the bucket's top plus the slack below.
    assert report.bucket_bound(estimate, 0.6, (0.0, 0.2)) == pytest.approx(0.25 / 0.6)
    assert report.bucket_bound(estimate, 0.6, 0.2) == report.bucket_bound(estimate, 0.6, (0.2, 0.2))


# The command line ----------------------------------------------------------------------


def test_demo_help_documents_the_relay(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--relay put a relay between the clients and the model" in help_text
    assert "http.server.stream.hop.time_to_first_byte" in help_text
    assert "--relay-hold RELAY_HOLD with --relay: median seconds" in help_text


def test_relay_does_not_go_with_serve(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--serve", "--relay", "--port", "0"]) == 1
    assert "--relay drives the load; it does not go with --serve" in capsys.readouterr().err
