"""Settings: keyword arguments win over ``OTEL_STREAM_*`` variables, which win over defaults.

A bad value never stops the app: it logs one warning naming the setting and the value,
and the default is used instead.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from opentelemetry.util.http import ExcludeList, parse_excluded_urls

from otel_stream import buckets
from otel_stream import environment_variables as env

logger = logging.getLogger("otel_stream")

T = TypeVar("T")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected true or false")


def parse_positive_int(text: str) -> int:
    value = int(text.strip())
    if value <= 0:
        raise ValueError("expected a positive integer")
    return value


def parse_positive_float(text: str) -> float:
    value = float(text.strip())
    if not value > 0 or value == float("inf"):
        raise ValueError("expected a positive number of seconds")
    return value


#: What a default means, where the value alone does not say it. ``OTEL_STREAM_ENABLED``
#: has two: unset is the start-up hook's (no instrumentation at start-up), true the
#: middleware's (it records).
_DEFAULT_MEANINGS: dict[tuple[str, object], str] = {
    (env.OTEL_STREAM_ENABLED, False): (
        "unset (this process is not instrumented at start-up; a StreamingMiddleware "
        "added in code records as usual)"
    ),
    (env.OTEL_STREAM_ENABLED, True): "true (otel-stream records telemetry)",
}


def _warn(name: str, value: object, error: Exception, default: object) -> None:
    meaning = _DEFAULT_MEANINGS.get((name, default))
    if meaning is None:
        variable = name.startswith("OTEL_")
        meaning = str(default).lower() if variable and isinstance(default, bool) else repr(default)
    logger.warning(
        "otel-stream: invalid %s=%r (%s); using the default %s", name, value, error, meaning
    )


def resolve(
    name: str,
    keyword: Any,
    parse: Callable[[str], T],
    default: T,
    *,
    validate: Callable[[Any], T] | None = None,
    environ: Mapping[str, str] | None = None,
    keyword_name: str | None = None,
) -> T:
    """One setting: the keyword if given, else the variable ``name`` if set, else ``default``."""
    if keyword is not None:
        if validate is None:
            return keyword  # type: ignore[no-any-return]
        try:
            return validate(keyword)
        except (TypeError, ValueError) as error:
            _warn(keyword_name or name, keyword, error, default)
            return default
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw)
    except (TypeError, ValueError) as error:
        _warn(name, raw, error, default)
        return default


def _excluded(keyword: str | Sequence[str] | None, environ: Mapping[str, str]) -> ExcludeList:
    if keyword is not None:
        name, text = "excluded_urls", keyword if isinstance(keyword, str) else ",".join(keyword)
    elif environ.get(env.OTEL_STREAM_EXCLUDED_URLS, "").replace(",", " ").strip():
        name, text = env.OTEL_STREAM_EXCLUDED_URLS, environ[env.OTEL_STREAM_EXCLUDED_URLS]
    else:
        name, text = "OTEL_PYTHON_EXCLUDED_URLS", environ.get("OTEL_PYTHON_EXCLUDED_URLS", "")
    # Blank entries ("/a,,/b", "/a, ") would become an empty pattern, which matches
    # every URL and so would silently turn all telemetry off: drop them.
    patterns = [pattern.strip() for pattern in text.split(",")]
    try:
        return parse_excluded_urls(",".join(pattern for pattern in patterns if pattern))
    except re.error as error:
        _warn(name, text, error, "")
        return parse_excluded_urls("")


@dataclass(frozen=True)
class Settings:
    """The resolved configuration of one middleware."""

    enabled: bool = True
    excluded_urls: ExcludeList = field(default_factory=lambda: parse_excluded_urls(""))
    ttfb_buckets: tuple[float, ...] = buckets.TTFB_BUCKETS
    duration_buckets: tuple[float, ...] = buckets.DURATION_BUCKETS
    gap_buckets: tuple[float, ...] = buckets.GAP_BUCKETS
    chunks_buckets: tuple[float, ...] = buckets.CHUNKS_BUCKETS
    body_size_buckets: tuple[float, ...] = buckets.BODY_SIZE_BUCKETS
    time_per_output_token_buckets: tuple[float, ...] = buckets.TIME_PER_OUTPUT_TOKEN_BUCKETS
    payloads: bool = True
    payload_max_event_bytes: int = 64 * 1024
    accel_buffering_header: bool = False
    cancel_on_disconnect: bool = False

    @property
    def has_excluded_urls(self) -> bool:
        """False when no pattern is set: then the URL need not be built at all."""
        return bool(getattr(self.excluded_urls, "_excluded_urls", True))

    @classmethod
    def from_options(
        cls,
        *,
        enabled: bool | None = None,
        excluded_urls: str | Sequence[str] | None = None,
        ttfb_buckets: Sequence[float] | None = None,
        duration_buckets: Sequence[float] | None = None,
        gap_buckets: Sequence[float] | None = None,
        chunks_buckets: Sequence[float] | None = None,
        body_size_buckets: Sequence[float] | None = None,
        time_per_output_token_buckets: Sequence[float] | None = None,
        payloads: bool | None = None,
        payload_max_event_bytes: int | None = None,
        accel_buffering_header: bool | None = None,
        cancel_on_disconnect: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        environ = os.environ if environ is None else environ

        def histogram(
            name: str,
            keyword: Sequence[float] | None,
            default: tuple[float, ...],
            keyword_name: str,
        ) -> tuple[float, ...]:
            return resolve(
                name,
                keyword,
                buckets.parse_buckets,
                default,
                validate=buckets.validate_buckets,
                environ=environ,
                keyword_name=keyword_name,
            )

        def boolean(name: str, keyword: bool | None, default: bool, keyword_name: str) -> bool:
            return resolve(
                name,
                keyword,
                parse_bool,
                default,
                validate=_validate_bool,
                environ=environ,
                keyword_name=keyword_name,
            )

        return cls(
            enabled=boolean(env.OTEL_STREAM_ENABLED, enabled, True, "enabled"),
            excluded_urls=_excluded(excluded_urls, environ),
            ttfb_buckets=histogram(
                env.OTEL_STREAM_TTFB_BUCKETS, ttfb_buckets, buckets.TTFB_BUCKETS, "ttfb_buckets"
            ),
            duration_buckets=histogram(
                env.OTEL_STREAM_DURATION_BUCKETS,
                duration_buckets,
                buckets.DURATION_BUCKETS,
                "duration_buckets",
            ),
            gap_buckets=histogram(
                env.OTEL_STREAM_GAP_BUCKETS, gap_buckets, buckets.GAP_BUCKETS, "gap_buckets"
            ),
            chunks_buckets=histogram(
                env.OTEL_STREAM_CHUNKS_BUCKETS,
                chunks_buckets,
                buckets.CHUNKS_BUCKETS,
                "chunks_buckets",
            ),
            body_size_buckets=histogram(
                env.OTEL_STREAM_BODY_SIZE_BUCKETS,
                body_size_buckets,
                buckets.BODY_SIZE_BUCKETS,
                "body_size_buckets",
            ),
            time_per_output_token_buckets=histogram(
                env.OTEL_STREAM_TIME_PER_OUTPUT_TOKEN_BUCKETS,
                time_per_output_token_buckets,
                buckets.TIME_PER_OUTPUT_TOKEN_BUCKETS,
                "time_per_output_token_buckets",
            ),
            payloads=boolean(env.OTEL_STREAM_PAYLOADS, payloads, True, "payloads"),
            payload_max_event_bytes=resolve(
                env.OTEL_STREAM_PAYLOAD_MAX_EVENT_BYTES,
                payload_max_event_bytes,
                parse_positive_int,
                64 * 1024,
                validate=_validate_positive_int,
                environ=environ,
                keyword_name="payload_max_event_bytes",
            ),
            accel_buffering_header=boolean(
                env.OTEL_STREAM_ACCEL_BUFFERING_HEADER,
                accel_buffering_header,
                False,
                "accel_buffering_header",
            ),
            cancel_on_disconnect=boolean(
                env.OTEL_STREAM_CANCEL_ON_DISCONNECT,
                cancel_on_disconnect,
                False,
                "cancel_on_disconnect",
            ),
        )


def _validate_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError("expected a bool")


def _validate_positive_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError("expected a positive integer")
