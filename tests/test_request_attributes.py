"""The request span's attributes are contrib's, also when they are reused.

The ASGI middleware keeps contrib's answer for a connection's requests to one path
(``_request_attributes``): every part of the scope that answer depends on must be part
of the key, and the copies must not leak between requests.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from opentelemetry.trace import NoOpTracerProvider

from otel_stream import StreamingMiddleware
from otel_stream.asgi import middleware as asgi_middleware
from tests.apps import starlette_app
from tests.servers import serve, wait_until
from tests.telemetry_harness import Telemetry

BASE: dict[str, Any] = {
    "type": "http",
    "http_version": "1.1",
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 50000),
    "scheme": "http",
    "method": "POST",
    "path": "/v1/chat/completions",
    "query_string": b"",
    "headers": [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"OpenAI/Python 2.8.1"),
        (b"accept", b"application/json"),
    ],
}


def variant(**changes: Any) -> dict[str, Any]:
    scope = dict(BASE)
    scope.update(changes)
    return scope


def with_header(name: bytes, value: bytes) -> dict[str, Any]:
    headers = [(n, v) for n, v in BASE["headers"] if n != name] + [(name, value)]
    return variant(headers=headers)


VARIANTS = {
    "the same": variant(),
    "another method": variant(method="GET"),
    "another path": variant(path="/v1/completions"),
    "another scheme": variant(scheme="https"),
    "another version": variant(http_version="2"),
    "another server": variant(server=("10.0.0.2", 9000)),
    "another client address": variant(client=("10.1.1.1", 50000)),
    "another connection": variant(client=("127.0.0.1", 50001)),
    "no client": variant(client=None),
    "another host header": with_header(b"host", b"api.example.com"),
    "another user agent": with_header(b"user-agent", b"curl/8.5.0"),
    "a bot's user agent": with_header(b"user-agent", b"Googlebot/2.1"),
    "no headers": variant(headers=[]),
    "an odd method": variant(method="FOO"),
    "a query": variant(query_string=b"api_key=secret"),
    "a second host header": variant(headers=[*BASE["headers"], (b"host", b"other.example")]),
    "a header name in capitals": variant(headers=[(b"Host", b"capital.example")]),
    "a list for the server": variant(server=["10.9.9.9", 7000]),
}


def middleware() -> StreamingMiddleware:
    return StreamingMiddleware(starlette_app(), tracer_provider=NoOpTracerProvider())


def answer(mw: StreamingMiddleware, scope: dict[str, Any]) -> tuple[Any, ...]:
    return asgi_middleware._request_attributes(mw, dict(scope))


def test_every_part_the_attributes_depend_on_is_in_the_key() -> None:
    warm = middleware()
    answer(warm, BASE)  # the base request's answer is kept
    for name, scope in VARIANTS.items():
        cold = answer(middleware(), scope)  # a new middleware computes it afresh
        assert answer(warm, scope) == cold, name
        assert answer(warm, scope) == cold, name  # and once more, from the cache


def test_a_kept_answer_is_copied_for_each_request() -> None:
    mw = middleware()
    _, attributes, metric_attributes = answer(mw, BASE)
    attributes["mutated"] = True
    metric_attributes["http.route"] = "/changed"
    _, again, metric_again = answer(mw, BASE)
    assert "mutated" not in again
    assert "http.route" not in metric_again


def test_query_values_never_reach_the_attributes_nor_the_key() -> None:
    mw = middleware()
    _, attributes, _ = answer(mw, VARIANTS["a query"])
    assert "url.query" not in attributes
    assert all("secret" not in repr(key) for key in mw.attributes_cache)


@pytest.mark.parametrize(
    "name", ["a second host header", "a str header name", "a list for the server"]
)
def test_requests_whose_scope_cannot_be_a_key_are_not_kept(name: str) -> None:
    odd = {"a str header name": variant(headers=[("host", b"str.example")])}
    assert asgi_middleware._attributes_key({**VARIANTS, **odd}[name]) is None


def test_the_kept_answers_are_bounded() -> None:
    mw = middleware()
    size = asgi_middleware._ATTRIBUTES_CACHE_SIZE
    for port in range(size + 10):
        answer(mw, variant(client=("127.0.0.1", 40000 + port)))
    assert 0 < len(mw.attributes_cache) <= size


def test_requests_of_one_connection_each_get_their_own_attributes(telemetry: Telemetry) -> None:
    """On a real server, through one keep-alive connection: paths, agents, methods."""
    app = StreamingMiddleware(starlette_app(), **telemetry.providers)
    requests = [
        ("GET", "/plain", "agent-a"),
        ("GET", "/plain", "agent-b"),
        ("GET", "/stream/1", "agent-a"),
        ("POST", "/plain", "agent-a"),
        ("GET", "/plain?token=hidden", "agent-a"),
        ("GET", "/plain", "agent-a"),
    ]
    with serve(app) as url, httpx.Client(base_url=url) as client:
        for method, path, agent in requests:
            client.request(method, path, headers={"user-agent": agent}).read()
        assert wait_until(lambda: len(telemetry.spans()) == len(requests) + 1)
    request_spans = sorted(
        (s for s in telemetry.spans() if not s.name.endswith(" stream")),
        key=lambda s: s.start_time or 0,
    )
    seen = [
        (
            s.attributes["http.request.method"],
            s.attributes["url.path"],
            s.attributes["user_agent.original"],
        )
        for s in request_spans
        if s.attributes is not None
    ]
    expected = [(m, p.split("?")[0], agent) for m, p, agent in requests]
    assert seen == expected
    ports = {s.attributes["client.port"] for s in request_spans if s.attributes is not None}
    assert len(ports) == 1  # one connection: the cache was used
    assert all("url.query" not in (s.attributes or {}) for s in request_spans)
