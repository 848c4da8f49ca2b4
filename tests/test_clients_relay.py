"""A relay on loopback (Starlette under uvicorn, with ``StreamingMiddleware``) that calls
a real upstream with the openai SDK, httpx or aiohttp, called by the openai SDK: the
relay's outgoing stream, its server exchange, and the hop between them."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from otel_stream import StreamingMiddleware
from otel_stream.clients import StreamingClientInstrumentor
from tests import client_servers
from tests.client_servers import relay_app
from tests.servers import serve, wait_until
from tests.telemetry_harness import Telemetry

TTFT = 0.2
RELAYS = ("openai", "httpx", "aiohttp")


@pytest.fixture
def relay(telemetry: Telemetry, upstream: str) -> Iterator[str]:
    instrumentor = StreamingClientInstrumentor()
    instrumentor.instrument(**telemetry.providers)
    try:
        with serve(StreamingMiddleware(relay_app(upstream), **telemetry.providers)) as url:
            yield url
    finally:
        instrumentor.uninstrument()


def ask(relay: str, kind: str, **headers: str) -> str:
    """Stream a chat completion through the relay's ``kind`` base URL with the openai SDK."""
    client = openai.OpenAI(base_url=f"{relay}/{kind}/v1", api_key="test", max_retries=0)
    parts = []
    stream = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers=headers,
    )
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
    client.close()
    return "".join(parts)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def by_port(spans: list[ReadableSpan], name: str, port: int) -> ReadableSpan:
    (found,) = (
        span
        for span in spans
        if span.name == name
        and span.instrumentation_scope is not None
        and span.instrumentation_scope.name == "otel_stream"
        and span.attributes is not None
        and span.attributes.get("server.port") == port
    )
    return found


def finished(telemetry: Telemetry) -> list[ReadableSpan]:
    """The spans once both streams (the caller's, the relay's upstream) and the relay's
    server exchange have ended: the relay ends its own a moment after the caller read
    the last chunk (its upstream stream sees the end on its next read)."""

    def ended() -> bool:
        spans = telemetry.spans()
        streams = sum(span.name == "POST stream" for span in spans)
        return streams >= 2 and any(span.kind is SpanKind.SERVER for span in spans)

    assert wait_until(ended)
    return telemetry.spans()


def ancestors(span: ReadableSpan, spans: list[ReadableSpan]) -> list[int]:
    by_id = {s.context.span_id: s for s in spans}
    chain = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span.context.span_id)
    return chain


@pytest.mark.parametrize("kind", RELAYS)
def test_a_relayed_stream(telemetry: Telemetry, relay: str, upstream: str, kind: str) -> None:
    answer = ask(relay, kind, **{"x-demo-ttft": str(TTFT), "x-demo-tokens": "6"})

    assert answer.strip().startswith("A streaming answer")
    spans = finished(telemetry)
    upstream_request = by_port(spans, "POST", port_of(upstream))
    upstream_stream = by_port(spans, "POST stream", port_of(upstream))
    assert upstream_request.kind is SpanKind.CLIENT
    assert (upstream_request.end_time - upstream_request.start_time) / 1e9 >= TTFT
    assert upstream_stream.attributes["http.stream.termination_reason"] == "completed"
    assert upstream_stream.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    # the relay's server exchange is an ancestor of its upstream call
    server = next(span for span in spans if span.kind is SpanKind.SERVER)
    assert server.context.span_id in ancestors(upstream_request, spans)
    # the caller's own call to the relay, recorded by the same instrumentation
    caller_stream = by_port(spans, "POST stream", port_of(relay))
    assert caller_stream.attributes["http.stream.termination_reason"] == "completed"
    # the hop: the relay's server span knows its upstream's first byte
    upstream_ttfb = upstream_request.attributes["http.stream.time_to_first_byte"]
    assert server.attributes["http.stream.upstream.time_to_first_byte"] == upstream_ttfb
    (hop,) = telemetry.points("http.server.stream.hop.time_to_first_byte")
    server_ttfb = server.attributes["http.stream.time_to_first_byte"]
    assert hop.count == 1
    assert 0 <= hop.sum <= server_ttfb - upstream_ttfb + 0.005  # the relay's own part
    assert hop.sum < TTFT / 2  # the model's wait is not the hop's


def test_the_hop_is_what_the_relay_held_back(telemetry: Telemetry, relay: str) -> None:
    delay = 0.3
    answer = ask(relay, "twice", **{"x-demo-ttft": "0.05", "x-relay-delay": str(delay)})

    assert answer.strip().startswith("A streaming answer")
    spans = finished(telemetry)
    server = next(span for span in spans if span.kind is SpanKind.SERVER)
    (hop,) = telemetry.points("http.server.stream.hop.time_to_first_byte")
    assert delay <= hop.sum < delay + 0.2
    # the JSON look-up before the stream does not count: the stream's first byte does
    upstream_ttfb = server.attributes["http.stream.upstream.time_to_first_byte"]
    assert upstream_ttfb >= 0.05
    streams = [span for span in spans if span.name == "POST stream"]
    upstream_stream = next(s for s in streams if s.attributes["server.port"] != port_of(relay))
    assert upstream_stream.attributes["http.stream.time_to_first_byte"] == upstream_ttfb


@pytest.mark.parametrize("kind", ["httpx", "aiohttp"])
def test_an_upstream_that_hangs_up_behind_a_relay(
    telemetry: Telemetry, relay: str, upstream: str, kind: str
) -> None:
    with pytest.raises(openai.APIConnectionError):  # the relay, too, hung up mid-stream
        ask(relay, kind, **{"x-demo-ttft": "0.01", "x-demo-truncate-after": "2"})

    spans = finished(telemetry)
    upstream_stream = by_port(spans, "POST stream", port_of(upstream))
    assert upstream_stream.attributes["http.stream.termination_reason"] == "server_disconnect"
    caller_stream = by_port(spans, "POST stream", port_of(relay))
    assert caller_stream.attributes["http.stream.termination_reason"] == "server_disconnect"


def test_the_anthropic_client_through_a_relay(
    telemetry: Telemetry, relay: str, upstream: str
) -> None:
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(
        base_url=relay + "/anthropic",
        api_key="test",
        max_retries=0,
        open_telemetry={"tracer_provider": telemetry.tracer_provider},
    )
    with client.messages.stream(
        model="claude-demo",
        max_tokens=64,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-demo-ttft": str(TTFT)},
    ) as stream:
        text = "".join(stream.text_stream)
    client.close()

    assert text == "".join(client_servers.ANTHROPIC_WORDS)
    spans = finished(telemetry)
    caller_request = by_port(spans, "POST", port_of(relay))
    assert caller_request.kind is SpanKind.INTERNAL  # under the SDK's own CLIENT call span
    upstream_stream = by_port(spans, "POST stream", port_of(upstream))
    assert upstream_stream.attributes["http.stream.termination_reason"] == "completed"
    assert upstream_stream.attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
    server = next(span for span in spans if span.kind is SpanKind.SERVER)
    assert server.attributes["http.stream.upstream.time_to_first_byte"] >= TTFT
    (hop,) = telemetry.points("http.server.stream.hop.time_to_first_byte")
    assert hop.sum < TTFT / 2


@pytest.mark.parametrize("kind", ["httpx", "aiohttp"])
def test_a_relay_whose_caller_leaves_at_done_before_the_upstream_body_ends(
    telemetry: Telemetry, relay: str, upstream: str, kind: str
) -> None:
    # The upstream holds its body's end back until the relay has gone: the relay has
    # passed `data: [DONE]` on and waits in its next read when its caller (the openai
    # SDK, which closes at `[DONE]`) leaves and the relay's body is cancelled.
    answer = ask(relay, kind, **{"x-demo-ttft": "0.01", "x-relay-upstream-prefix": "/held"})

    assert answer.strip().startswith("A streaming answer")
    spans = finished(telemetry)
    upstream_request = by_port(spans, "POST", port_of(upstream))
    assert upstream_request.attributes["url.full"].endswith("/held/v1/chat/completions")
    upstream_stream = by_port(spans, "POST stream", port_of(upstream))
    # the end marker was read: the relay had the whole answer when it stopped reading
    assert upstream_stream.attributes["http.stream.termination_reason"] == "completed"
    assert upstream_stream.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert "error.type" not in upstream_stream.attributes
    caller_stream = by_port(spans, "POST stream", port_of(relay))
    assert caller_stream.attributes["http.stream.termination_reason"] == "completed"
