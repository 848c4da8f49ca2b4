"""StreamingWSGIMiddleware on real servers: werkzeug's, waitress, gunicorn sync and gthread.

Each test runs on every server (the servers are started once per module and shared;
each request is found by its ``X-Test-Id`` header). The clients are real: httpx
streaming, the ``openai`` client, raw sockets that close mid-stream.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator

import openai
import pytest

from tests.otlp_receiver import OTLPReceiver
from tests.rawclient import read_until
from tests.wsgi_servers import (
    SERVERS,
    TEST_ID_HEADER,
    Served,
    fetch,
    open_raw,
    read_all,
    running_app,
    without_date,
)

Apps = Callable[..., Served]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def apps(receiver: OTLPReceiver) -> Iterator[Apps]:
    """``apps(server, app_name, wrap="middleware")``: that app, started on first use."""
    with contextlib.ExitStack() as stack:
        cache: dict[tuple[str, str, str], Served] = {}

        def get(server: str, app_name: str, wrap: str = "middleware") -> Served:
            key = (server, app_name, wrap)
            if key not in cache:
                cache[key] = stack.enter_context(running_app(server, app_name, receiver, wrap=wrap))
            return cache[key]

        yield get


def new_id() -> str:
    return uuid.uuid4().hex


ROUTES = {
    "plain": ("/sse", None),
    "flask": ("/chat/r1", "/chat/<room>"),
    "django": ("/chat/r1", "chat/<str:room>"),
}


# The split ---------------------------------------------------------------------------------


@pytest.mark.parametrize("app_name", list(ROUTES))
@pytest.mark.parametrize("server", SERVERS)
def test_the_request_span_ends_at_the_first_byte_and_the_stream_span_covers_the_body(
    apps: Apps, server: str, app_name: str
) -> None:
    served = apps(server, app_name)
    path, route = ROUTES[app_name]
    test_id = new_id()
    fetched = fetch(served.url, f"{path}?count=5&pace=0.05&first=0.2", test_id)
    tag = "r1-" if app_name != "plain" else ""
    assert fetched.body == b"".join(f"data: {tag}{i}\n\n".encode() for i in range(5))
    exchange = served.exchange(test_id)
    request, stream = exchange.request, exchange.stream
    assert stream is not None
    assert request.kind == "SERVER"
    assert request.name == ("GET" if route is None else f"GET {route}")
    assert request.attributes.get("http.route") == route
    assert stream.name == f"{request.name} stream"
    assert stream.kind == "INTERNAL"
    assert (stream.trace_id, stream.parent_span_id) == (request.trace_id, request.span_id)
    assert request.end_ns == stream.start_ns
    ttfb = request.attributes["http.stream.time_to_first_byte"]
    assert 0.2 <= ttfb < 2.2
    assert stream.attributes["http.stream.time_to_first_byte"] == ttfb
    assert (stream.end_ns - stream.start_ns) / 1e9 >= 4 * 0.05 * 0.9
    assert stream.attributes["http.stream.termination_reason"] == "completed"
    assert stream.attributes["http.stream.chunks"] == 5
    assert stream.attributes["http.stream.bytes"] == len(fetched.body)
    assert stream.attributes["http.stream.events"] == 5
    assert stream.attributes["http.stream.max_chunk_gap"] >= 0.045
    assert request.attributes["http.response.status_code"] == 200
    assert fetched.arrivals[0] - fetched.sent_at >= 0.2  # the client waited as long


@pytest.mark.parametrize("app_name", list(ROUTES))
@pytest.mark.parametrize("server", SERVERS)
def test_a_response_whole_with_its_first_item_gets_the_request_span_only(
    apps: Apps, server: str, app_name: str
) -> None:
    served = apps(server, app_name)
    test_id = new_id()
    fetched = fetch(served.url, "/plain", test_id)
    assert fetched.body == b"plain answer"
    exchange = served.exchange(test_id)
    assert exchange.stream is None
    assert exchange.reason == "completed"
    assert exchange.request.attributes["http.stream.time_to_first_byte"] > 0
    assert "http.stream.chunks" not in exchange.request.attributes


# Every reason, provoked for real ----------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_an_llm_stream_without_its_end_marker_is_incomplete(apps: Apps, server: str) -> None:
    served = apps(server, "plain")
    whole, cut = new_id(), new_id()
    fetch(served.url, "/openai?count=3", whole)
    fetch(served.url, "/openai?count=3&done=0", cut)
    assert served.exchange(whole).reason == "completed"
    truncated = served.exchange(cut).ended
    assert truncated.attributes["http.stream.termination_reason"] == "incomplete"
    assert truncated.attributes["error.type"] == "incomplete"


@pytest.mark.parametrize("server", SERVERS)
def test_the_app_raising_mid_stream_is_an_app_error(apps: Apps, server: str) -> None:
    served = apps(server, "plain")
    test_id = new_id()
    received = read_all(served.url, "/sse?count=5&fail=2", test_id)
    assert b"data: 1\n\n" in received
    assert b"data: 2" not in received
    stream = served.exchange(test_id).stream
    assert stream is not None
    assert stream.attributes["http.stream.termination_reason"] == "app_error"
    assert stream.attributes["error.type"] == "ValueError"
    assert stream.attributes["http.stream.chunks"] == 2
    assert stream.status == "ERROR"


@pytest.mark.parametrize("app_name", ["flask", "django"])
@pytest.mark.parametrize("server", SERVERS)
def test_frameworks_streams_end_for_the_same_reasons(
    apps: Apps, server: str, app_name: str
) -> None:
    """Flask's and Django's streaming responses: a generator raising mid-stream, and a
    client that leaves mid-stream."""
    served = apps(server, app_name)
    failing, leaving = new_id(), new_id()
    read_all(served.url, "/fail/r1?count=5", failing)
    sock = open_raw(served.url, "/chat/r1?count=500&pace=0.02", {TEST_ID_HEADER: leaving})
    read_until(sock, b"data: r1-2\n")
    sock.close()
    failed = served.exchange(failing).ended
    assert failed.attributes["http.stream.termination_reason"] == "app_error"
    assert failed.attributes["error.type"] == "ValueError"
    left = served.exchange(leaving)
    assert left.reason == "client_disconnect"
    assert left.stream is not None
    assert 3 <= left.stream.attributes["http.stream.chunks"] < 500


@pytest.mark.parametrize("server", SERVERS)
def test_the_app_raising_before_its_iterable_is_an_app_error(apps: Apps, server: str) -> None:
    served = apps(server, "plain")
    test_id = new_id()
    received = read_all(served.url, "/boom", test_id)
    assert received.startswith(b"HTTP/1.")
    assert b" 500 " in received.split(b"\r\n", 1)[0]
    exchange = served.exchange(test_id)
    assert exchange.stream is None
    assert exchange.reason == "app_error"
    assert exchange.request.attributes["error.type"] == "RuntimeError"
    assert exchange.request.status == "ERROR"


@pytest.mark.parametrize("close", ["fin", "rst"])
@pytest.mark.parametrize("server", SERVERS)
def test_a_client_that_closes_mid_stream_is_a_client_disconnect(
    apps: Apps, server: str, close: str
) -> None:
    from tests.wsgi_servers import reset

    served = apps(server, "plain")
    test_id = new_id()
    sock = open_raw(served.url, "/sse?count=500&pace=0.02", {TEST_ID_HEADER: test_id})
    read_until(sock, b"data: 3\n")
    closed_ns = time.time_ns()
    if close == "rst":
        reset(sock)
    else:
        sock.close()
    stream = served.exchange(test_id).stream
    assert stream is not None
    assert stream.attributes["http.stream.termination_reason"] == "client_disconnect"
    assert 4 <= stream.attributes["http.stream.chunks"] < 500
    assert stream.end_ns > closed_ns  # ended when the server found out, not at the 500th


@pytest.mark.parametrize("server", SERVERS)
def test_a_client_gone_before_the_first_byte_leaves_the_exchange_waiting(
    apps: Apps, server: str
) -> None:
    """The first write fails, so the first byte never arrived: no stream span. (waitress
    buffers writes and learns of the reset at a later one: for it the first byte went out.)"""
    from tests.wsgi_servers import reset

    served = apps(server, "plain")
    test_id = new_id()
    sock = open_raw(served.url, "/sse?count=50&first=0.5&pace=0.02", {TEST_ID_HEADER: test_id})
    time.sleep(0.15)
    reset(sock)
    exchange = served.exchange(test_id)
    assert exchange.reason == "client_disconnect"
    if server == "waitress":
        assert exchange.stream is not None
    else:
        assert exchange.stream is None
        assert "http.stream.time_to_first_byte" not in exchange.request.attributes


# Bytes, headers and the frameworks' own streaming helpers ---------------------------------

TARGETS = [
    "/sse?count=5",
    "/openai?count=4",
    "/plain",
    "/ndjson?count=3",
    "/empty",
    "/write",
    "/file",
]


@pytest.mark.parametrize("server", SERVERS)
def test_the_client_receives_the_same_bytes_with_and_without_the_middleware(
    apps: Apps, server: str
) -> None:
    bare, instrumented = apps(server, "plain", "none"), apps(server, "plain")
    for target in TARGETS:
        expected = without_date(read_all(bare.url, target, new_id()))
        assert without_date(read_all(instrumented.url, target, new_id())) == expected, target


@pytest.mark.parametrize("server", SERVERS)
def test_flask_stream_with_context_keeps_the_request_while_the_body_streams(
    apps: Apps, server: str
) -> None:
    served = apps(server, "flask")
    test_id = new_id()
    fetched = fetch(served.url, "/ctx/r2?count=3&tag=abc", test_id)
    assert fetched.status == 200
    assert fetched.body == b"".join(f"data: abc-r2-{i}\n\n".encode() for i in range(3))
    exchange = served.exchange(test_id)
    assert exchange.request.name == "GET /ctx/<room>"
    assert exchange.stream is not None
    assert exchange.reason == "completed"
    assert exchange.stream.attributes["http.stream.chunks"] == 3


@pytest.mark.parametrize("server", SERVERS)
def test_the_openai_client_reads_a_flask_chat_completions_stream(apps: Apps, server: str) -> None:
    served = apps(server, "flask")
    test_id = new_id()
    client = openai.OpenAI(
        base_url=served.url + "/v1", api_key="test", default_headers={TEST_ID_HEADER: test_id}
    )
    try:
        stream = client.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "Say something."}],
            stream=True,
            max_tokens=4,
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    finally:
        client.close()
    assert text == "tok0 tok1 tok2 tok3 "
    exchange = served.exchange(test_id)
    assert exchange.request.name == "POST /v1/chat/completions"
    stream_span = exchange.stream
    assert stream_span is not None
    attributes = stream_span.attributes
    assert attributes["http.stream.termination_reason"] == "completed"
    assert list(attributes["gen_ai.response.finish_reasons"]) == ["stop"]
    assert attributes["gen_ai.usage.output_tokens"] == 4
    assert attributes["gen_ai.usage.input_tokens"] == 5
    assert (
        attributes["http.stream.time_to_first_token"]
        >= attributes["http.stream.time_to_first_byte"]
    )


@pytest.mark.parametrize("server", ["werkzeug", "gunicorn-sync", "gunicorn-gthread"])
def test_send_wait_is_the_time_the_server_spent_writing_to_a_slow_client(
    apps: Apps, server: str
) -> None:
    """A reader that stalls 1 s with a small receive buffer holds the server's blocking
    write. (waitress is left out: it buffers up to 16 MiB per connection itself, so its
    writes never wait.)"""
    served = apps(server, "plain")
    test_id = new_id()
    headers = {TEST_ID_HEADER: test_id, "Connection": "close"}
    # 8 MiB: more than the socket buffers of both ends hold on loopback
    sock = open_raw(served.url, "/sse?count=512&size=16384", headers, receive_buffer=4096)
    with sock:
        time.sleep(1.0)
        total = 0
        while data := sock.recv(65536):
            total += len(data)
    assert total > 512 * 16384
    stream = served.exchange(test_id).stream
    assert stream is not None
    assert stream.attributes["http.stream.termination_reason"] == "completed"
    assert stream.attributes["http.stream.send_wait"] >= 0.5
