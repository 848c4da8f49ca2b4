"""Settings: keyword arguments win over ``OTEL_STREAM_*`` variables, which win over defaults.

A bad value never stops the app: it logs one warning naming the setting and the value,
and the default is used instead.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ParamSpec, TypeVar

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


def _validate_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError("expected a bool")


def _validate_positive_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError("expected a positive integer")


def _setting(
    variable: str,
    default: Any,
    parse: Callable[[str], Any],
    validate: Callable[[Any], Any],
) -> Any:
    """A field of :class:`Settings`: its variable, default, and how text and keywords are read."""
    return field(
        default=default, metadata={"variable": variable, "parse": parse, "validate": validate}
    )


def _buckets(variable: str, default: tuple[float, ...]) -> Any:
    return _setting(variable, default, buckets.parse_buckets, buckets.validate_buckets)


def _boolean(variable: str, default: bool) -> Any:
    return _setting(variable, default, parse_bool, _validate_bool)


@dataclass(frozen=True)
class Settings:
    """The resolved configuration of one middleware: one field per setting.

    Each field's metadata names its ``OTEL_STREAM_*`` variable and its parsers, so a
    setting is declared once; ``from_options`` resolves every field the same way.
    """

    enabled: bool = _boolean(env.OTEL_STREAM_ENABLED, True)
    excluded_urls: ExcludeList = field(
        default_factory=lambda: parse_excluded_urls(""),
        metadata={"variable": env.OTEL_STREAM_EXCLUDED_URLS},
    )
    ttfb_buckets: tuple[float, ...] = _buckets(env.OTEL_STREAM_TTFB_BUCKETS, buckets.TTFB_BUCKETS)
    duration_buckets: tuple[float, ...] = _buckets(
        env.OTEL_STREAM_DURATION_BUCKETS, buckets.DURATION_BUCKETS
    )
    gap_buckets: tuple[float, ...] = _buckets(env.OTEL_STREAM_GAP_BUCKETS, buckets.GAP_BUCKETS)
    chunks_buckets: tuple[float, ...] = _buckets(
        env.OTEL_STREAM_CHUNKS_BUCKETS, buckets.CHUNKS_BUCKETS
    )
    body_size_buckets: tuple[float, ...] = _buckets(
        env.OTEL_STREAM_BODY_SIZE_BUCKETS, buckets.BODY_SIZE_BUCKETS
    )
    time_per_output_token_buckets: tuple[float, ...] = _buckets(
        env.OTEL_STREAM_TIME_PER_OUTPUT_TOKEN_BUCKETS, buckets.TIME_PER_OUTPUT_TOKEN_BUCKETS
    )
    payloads: bool = _boolean(env.OTEL_STREAM_PAYLOADS, True)
    payload_max_event_bytes: int = _setting(
        env.OTEL_STREAM_PAYLOAD_MAX_EVENT_BYTES,
        64 * 1024,
        parse_positive_int,
        _validate_positive_int,
    )
    accel_buffering_header: bool = _boolean(env.OTEL_STREAM_ACCEL_BUFFERING_HEADER, False)
    cancel_on_disconnect: bool = _boolean(env.OTEL_STREAM_CANCEL_ON_DISCONNECT, False)

    @property
    def has_excluded_urls(self) -> bool:
        """False when no pattern is set: then the URL need not be built at all."""
        return bool(getattr(self.excluded_urls, "_excluded_urls", True))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The keyword names of every setting."""
        return tuple(item.name for item in fields(cls))

    @classmethod
    def from_options(cls, *, environ: Mapping[str, str] | None = None, **keywords: Any) -> Settings:
        """Resolve every setting: keyword (None: not given) > variable > default."""
        environ = os.environ if environ is None else environ
        unknown = sorted(set(keywords) - set(cls.names()))
        if unknown:
            raise TypeError(
                f"unknown otel-stream option {unknown[0]!r}; valid options: "
                + ", ".join(cls.names())
            )
        values: dict[str, Any] = {}
        for item in fields(cls):
            keyword = keywords.get(item.name)
            if item.name == "excluded_urls":
                values[item.name] = _excluded(keyword, environ)
                continue
            values[item.name] = resolve(
                item.metadata["variable"],
                keyword,
                item.metadata["parse"],
                item.default,
                validate=item.metadata["validate"],
                environ=environ,
                keyword_name=item.name,
            )
        return cls(**values)


P = ParamSpec("P")


def explain_unknown_options(init: Callable[P, None]) -> Callable[P, None]:
    """A constructor whose misspelt keyword is a ``TypeError`` that lists the valid ones.

    Python's own message names the function but not what it accepts; a middleware added
    with ``app.add_middleware`` fails late (when the stack is built), so the message must
    say what is wrong by itself.
    """
    accepted = frozenset(
        name
        for name, parameter in inspect.signature(init).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    )

    @functools.wraps(init)
    def checked(*args: P.args, **kwargs: P.kwargs) -> None:
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            owner = type(args[0]).__name__ if args else init.__qualname__
            raise TypeError(
                f"{owner}() got an unexpected keyword argument {unknown[0]!r}; "
                f"valid options: {', '.join(sorted(accepted))}"
            )
        init(*args, **kwargs)

    return checked


def given_settings(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The settings keywords among a constructor's ``locals()`` (None: not given)."""
    return {name: arguments[name] for name in Settings.names() if arguments.get(name) is not None}
