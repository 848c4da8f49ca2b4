"""The request span's attributes are contrib's, also when they are reused.

Both server middlewares keep contrib's answer for a connection's requests to one path
(``KeptAttributes``): every part of the scope or environ that answer depends on must be
part of the key, and the copies must not leak between requests.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from opentelemetry.trace import NoOpTracerProvider

from otel_stream import StreamingMiddleware, StreamingWSGIMiddleware
from otel_stream import server as server_module
from otel_stream.asgi import middleware as asgi_middleware
from otel_stream.wsgi import middleware as wsgi_middleware
from tests import wsgi_servers
from tests.apps import starlette_app
from tests.servers import serve, wait_until
from tests.telemetry_harness import Telemetry
from tests.wsgi_apps import plain_wsgi_app

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
    assert all("secret" not in repr(key) for key in mw.kept_attributes.answers)


@pytest.mark.parametrize(
    "name", ["a second host header", "a str header name", "a list for the server"]
)
def test_requests_whose_scope_cannot_be_a_key_are_not_kept(name: str) -> None:
    odd = {"a str header name": variant(headers=[("host", b"str.example")])}
    assert asgi_middleware._attributes_key({**VARIANTS, **odd}[name]) is None


def test_the_kept_answers_are_bounded() -> None:
    mw = middleware()
    size = server_module.KEPT_ATTRIBUTES
    for port in range(size + 10):
        answer(mw, variant(client=("127.0.0.1", 40000 + port)))
    assert 0 < len(mw.kept_attributes.answers) <= size


def requests_through_one_client(url: str, telemetry: Telemetry, stream_path: str) -> list[Any]:
    """Send ``REQUESTS`` (with ``stream_path`` as the stream) through one keep-alive
    client; check each request span's method, path and agent; return those spans."""
    requests = [(m, stream_path if p == "STREAM" else p, agent) for m, p, agent in REQUESTS]
    with httpx.Client(base_url=url) as client:
        for method, path, agent in requests:
            client.request(method, path, headers={"user-agent": agent}).read()
        assert wait_until(lambda: len(telemetry.spans()) == len(requests) + 1)
    request_spans = sorted(
        (s for s in telemetry.spans() if not s.name.endswith(" stream")),
        key=lambda s: s.start_time or 0,
    )
    seen = [
        (
            (s.attributes or {}).get("http.request.method"),
            (s.attributes or {}).get("url.path"),
            (s.attributes or {}).get("user_agent.original"),
        )
        for s in request_spans
    ]
    assert seen == [(m, p.split("?")[0], agent) for m, p, agent in requests]
    assert all("url.query" not in (s.attributes or {}) for s in request_spans)
    return request_spans


#: (method, path, user agent); STREAM: the app's streaming path.
REQUESTS = [
    ("GET", "/plain", "agent-a"),
    ("GET", "/plain", "agent-b"),
    ("GET", "STREAM", "agent-a"),
    ("POST", "/plain", "agent-a"),
    ("GET", "/plain?token=hidden", "agent-a"),
    ("GET", "/plain", "agent-a"),
]


def test_requests_of_one_connection_each_get_their_own_attributes(telemetry: Telemetry) -> None:
    """On a real server, through one keep-alive connection: paths, agents, methods."""
    app = StreamingMiddleware(starlette_app(), **telemetry.providers)
    with serve(app) as url:
        requests_through_one_client(url, telemetry, "/stream/1")
    assert len(app.kept_attributes.answers) < len(REQUESTS)  # an answer was reused


# WSGI ----------------------------------------------------------------------------------

ENVIRON: dict[str, Any] = {
    "REQUEST_METHOD": "POST",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/v1/chat/completions",
    "QUERY_STRING": "",
    "RAW_URI": "/v1/chat/completions",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8000",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "50000",
    "HTTP_HOST": "127.0.0.1:8000",
    "HTTP_USER_AGENT": "OpenAI/Python 2.8.1",
    "wsgi.url_scheme": "http",
}


def environ_variant(**changes: Any) -> dict[str, Any]:
    environ = {**ENVIRON, **changes}
    return {key: value for key, value in environ.items() if value is not None}


ENVIRON_VARIANTS = {
    "the same": environ_variant(),
    "another method": environ_variant(REQUEST_METHOD="GET"),
    "an odd method": environ_variant(REQUEST_METHOD="FOO"),
    "another path": environ_variant(PATH_INFO="/v1/completions", RAW_URI="/v1/completions"),
    "no target": environ_variant(RAW_URI=None),
    "REQUEST_URI only": environ_variant(RAW_URI=None, REQUEST_URI="/v1/chat/completions"),
    "another server name": environ_variant(SERVER_NAME="api.internal"),
    "another port": environ_variant(SERVER_PORT="9000"),
    "HTTP/1.0": environ_variant(SERVER_PROTOCOL="HTTP/1.0"),
    "https": environ_variant(**{"wsgi.url_scheme": "https"}),
    "another host header": environ_variant(HTTP_HOST="api.example.com"),
    "no host header": environ_variant(HTTP_HOST=None),
    "another user agent": environ_variant(HTTP_USER_AGENT="curl/8.5.0"),
    "a bot's user agent": environ_variant(HTTP_USER_AGENT="Googlebot/2.1"),
    "another client": environ_variant(REMOTE_ADDR="10.1.1.1"),
    "another connection": environ_variant(REMOTE_PORT="50001"),
    "a remote host name": environ_variant(REMOTE_HOST="client.example"),
    "a query": environ_variant(QUERY_STRING="api_key=secret", RAW_URI="/v1/x?api_key=secret"),
}


def wsgi_middleware_() -> StreamingWSGIMiddleware:
    return StreamingWSGIMiddleware(plain_wsgi_app, tracer_provider=NoOpTracerProvider())


def wsgi_answer(mw: StreamingWSGIMiddleware, environ: dict[str, Any]) -> tuple[Any, ...]:
    return wsgi_middleware._request_attributes(mw, dict(environ))


def test_every_part_the_wsgi_attributes_depend_on_is_in_the_key() -> None:
    warm = wsgi_middleware_()
    wsgi_answer(warm, ENVIRON)
    for name, environ in ENVIRON_VARIANTS.items():
        cold = wsgi_answer(wsgi_middleware_(), environ)
        assert wsgi_answer(warm, environ) == cold, name
        assert wsgi_answer(warm, environ) == cold, name


def test_wsgi_query_values_never_reach_the_attributes_nor_the_key() -> None:
    mw = wsgi_middleware_()
    _, attributes, _ = wsgi_answer(mw, ENVIRON_VARIANTS["a query"])
    assert "url.query" not in attributes
    assert all("secret" not in repr(key) for key in mw.kept_attributes.answers)


def test_wsgi_requests_of_one_connection_each_get_their_own_attributes(
    telemetry: Telemetry,
) -> None:
    """On waitress (which keeps connections alive), through one client."""
    app = StreamingWSGIMiddleware(plain_wsgi_app, **telemetry.providers)
    with wsgi_servers.serve(app, "waitress") as url:
        requests_through_one_client(url, telemetry, "/sse?count=2")
    assert len(app.kept_attributes.answers) < len(REQUESTS)  # an answer was reused


def test_a_query_that_is_not_utf8_is_instrumented_cold_or_warm() -> None:
    """Contrib decodes the query only for the attribute otel-stream drops: it is not
    given one, so a request's telemetry never depends on what was kept before."""
    odd = variant(query_string=b"q=\xff\xfe")
    cold = answer(middleware(), odd)
    assert cold == answer(middleware(), BASE)
    assert "url.query" not in cold[1]
