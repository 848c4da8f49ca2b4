"""Settings: keyword > OTEL_STREAM_* variable > default; bad values warn once and fall back."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from otel_stream import StreamingMiddleware, buckets
from otel_stream import environment_variables as env
from otel_stream.asgi.routes import route_of
from otel_stream.config import Settings, parse_bool, resolve
from otel_stream.payloads.events import sse_chunk_has_event


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def comparable(settings: Settings) -> dict[str, object]:
    fields = dataclasses.asdict(settings)
    del fields["excluded_urls"]  # compared by behaviour instead
    return fields


def test_defaults() -> None:
    settings = Settings.from_options(environ={})
    assert settings.enabled is True
    assert settings.ttfb_buckets == buckets.TTFB_BUCKETS
    assert settings.duration_buckets == buckets.DURATION_BUCKETS
    assert settings.payloads is True
    assert settings.payload_max_event_bytes == 65536
    assert settings.accel_buffering_header is False
    assert settings.cancel_on_disconnect is False
    assert not settings.excluded_urls.url_disabled("http://x/health")


def test_variables_override_defaults() -> None:
    environ = {
        "OTEL_STREAM_TTFB_BUCKETS": "0.1, 1,10",
        "OTEL_STREAM_DURATION_BUCKETS": "1,60,3600",
        "OTEL_STREAM_PAYLOADS": "false",
        "OTEL_STREAM_PAYLOAD_MAX_EVENT_BYTES": "1024",
        "OTEL_STREAM_EXCLUDED_URLS": "health,metrics",
        "OTEL_STREAM_ENABLED": "no",
    }
    settings = Settings.from_options(environ=environ)
    assert settings.ttfb_buckets == (0.1, 1.0, 10.0)
    assert settings.duration_buckets == (1.0, 60.0, 3600.0)
    assert settings.payloads is False
    assert settings.payload_max_event_bytes == 1024
    assert settings.enabled is False
    assert settings.excluded_urls.url_disabled("http://x/metrics")


def test_keywords_win_over_variables() -> None:
    environ = {"OTEL_STREAM_TTFB_BUCKETS": "1,2", "OTEL_STREAM_PAYLOADS": "false"}
    settings = Settings.from_options(ttfb_buckets=[0.5, 5], payloads=True, environ=environ)
    assert settings.ttfb_buckets == (0.5, 5.0)
    assert settings.payloads is True


def test_excluded_urls_fall_back_to_the_generic_variable() -> None:
    settings = Settings.from_options(environ={"OTEL_PYTHON_EXCLUDED_URLS": "ready"})
    assert settings.excluded_urls.url_disabled("http://x/ready")


@pytest.mark.parametrize(
    "options",
    [
        {"environ": {"OTEL_STREAM_EXCLUDED_URLS": "health,,metrics"}},
        {"environ": {"OTEL_STREAM_EXCLUDED_URLS": " health , metrics, "}},
        {"excluded_urls": ["health", "", " ", "metrics"], "environ": {}},
    ],
)
def test_blank_excluded_url_entries_exclude_nothing(options: dict[str, Any]) -> None:
    # An empty pattern matches every URL: kept, it would silently turn telemetry off.
    settings = Settings.from_options(**options)
    assert settings.excluded_urls.url_disabled("http://x/metrics")
    assert settings.excluded_urls.url_disabled("http://x/health")
    assert not settings.excluded_urls.url_disabled("http://x/v1/chat/completions")


@pytest.mark.parametrize("blank", ["  ", ",", " , "])
def test_a_blank_stream_variable_falls_back_to_the_generic_one(blank: str) -> None:
    environ = {"OTEL_STREAM_EXCLUDED_URLS": blank, "OTEL_PYTHON_EXCLUDED_URLS": "ready"}
    settings = Settings.from_options(environ=environ)
    assert settings.excluded_urls.url_disabled("http://x/ready")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_STREAM_TTFB_BUCKETS", "1,abc"),
        ("OTEL_STREAM_TTFB_BUCKETS", "5,1"),
        ("OTEL_STREAM_DURATION_BUCKETS", "-1,2"),
        ("OTEL_STREAM_DURATION_BUCKETS", "nan"),
        ("OTEL_STREAM_PAYLOADS", "maybe"),
        ("OTEL_STREAM_ENABLED", "2"),
        ("OTEL_STREAM_PAYLOAD_MAX_EVENT_BYTES", "0"),
        ("OTEL_STREAM_EXCLUDED_URLS", "(unclosed"),
    ],
)
def test_an_invalid_variable_warns_once_naming_it_and_uses_the_default(
    caplog: pytest.LogCaptureFixture, variable: str, value: str
) -> None:
    with caplog.at_level(logging.WARNING, "otel_stream"):
        settings = Settings.from_options(environ={variable: value})
    (message,) = warnings_of(caplog)
    assert variable in message
    assert value in message
    assert comparable(settings) == comparable(Settings.from_options(environ={}))
    assert not settings.excluded_urls.url_disabled("http://x/(unclosed")


def test_an_invalid_keyword_warns_and_uses_the_default(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "otel_stream"):
        settings = Settings.from_options(duration_buckets=[3, 2, 1], environ={})
    (message,) = warnings_of(caplog)
    assert "duration_buckets" in message
    assert settings.duration_buckets == buckets.DURATION_BUCKETS


def test_the_middleware_rejects_an_unknown_option() -> None:
    with pytest.raises(TypeError, match="ttfb_bucket"):
        StreamingMiddleware(lambda *a: None, ttfb_bucket=[1.0])  # type: ignore[arg-type]


def test_route_templates_of_starlette_litestar_and_none() -> None:
    route = SimpleNamespace(path_format="/v1/chat/{model}", param_convertors={"model": str})
    assert route_of({"route": route, "root_path": "/api/"}) == "/api/v1/chat/{model}"
    assert route_of({"route": route}) == "/v1/chat/{model}"
    assert route_of({"path_template": "/items/{item_id:int}"}) == "/items/{item_id:int}"
    assert route_of({"path": "/raw/123"}) is None
    # Through mounts (root_path beyond app_root_path) without a router to read their
    # templates from: no route, rather than one holding the mount's values.
    mounted = {"route": route, "app_root_path": "", "root_path": "/t/acme"}
    assert route_of(mounted) is None


@pytest.mark.parametrize(
    ("chunk", "has_event"),
    [
        (b": ping\n\n", False),
        (b": ping - 2026-11-21 21:00:00\r\n\r\n", False),
        (b"retry: 1000\n\n", False),
        (b"event: ping\n", False),
        (b"data: {}\n\n", True),
        (b"data\n\n", True),
        (b"id: 1\r\ndata: x\r\n\r\n", True),
        (b": comment\n\ndata: x", True),  # an unfinished line may be a data field
        (b"\xef\xbb\xbfdata: x\n\n", True),  # after a byte order mark
        (b"\xef\xbb\xbf: ping\n\n", False),
        (b"da", True),
    ],
)
def test_sse_first_byte_rule(chunk: bytes, has_event: bool) -> None:
    assert sse_chunk_has_event(chunk) is has_event


def test_an_invalid_boolean_keyword_warns_naming_the_keyword(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "otel_stream"):
        settings = Settings.from_options(payloads="yes", environ={})  # type: ignore[arg-type]
    (message,) = warnings_of(caplog)
    assert "payloads=" in message
    assert settings.payloads is True


def _configuration_doc() -> str:
    path = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    return path.read_text(encoding="utf-8")


def test_an_invalid_enabled_variable_says_what_the_default_means_there(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OTEL_STREAM_ENABLED has two defaults: off as the start-up switch, on in a middleware."""
    with caplog.at_level(logging.WARNING, "otel_stream"):
        assert (
            resolve(
                env.OTEL_STREAM_ENABLED,
                None,
                parse_bool,
                False,
                environ={env.OTEL_STREAM_ENABLED: "ture"},
            )
            is False
        )
        settings = Settings.from_options(environ={env.OTEL_STREAM_ENABLED: "ture"})
    start_up, middleware = warnings_of(caplog)
    assert settings.enabled is True
    assert start_up.endswith(
        "using the default unset (this process is not instrumented at start-up; "
        "a StreamingMiddleware added in code records as usual)"
    )
    assert middleware.endswith("using the default true (otel-stream records telemetry)")
    # The message the docs show is the one a user gets.
    assert start_up in _configuration_doc()


def test_a_boolean_variable_default_is_written_as_the_docs_write_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "otel_stream"):
        Settings.from_options(environ={"OTEL_STREAM_PAYLOADS": "maybe"})
        Settings.from_options(payloads="yes", environ={})  # type: ignore[arg-type]
    variable, keyword = warnings_of(caplog)
    assert variable.endswith("; using the default true")  # as in the table: `true`
    assert keyword.endswith("; using the default True")  # a keyword takes a Python bool
