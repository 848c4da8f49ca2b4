"""The one guard for otel-stream's own telemetry code: a failure is logged once and swallowed.

Telemetry must never break a response. Every place where otel-stream's own work could
raise (span and metric calls, attribute collection, a user's hook) runs inside
``failsafe(where)`` or a function decorated ``@guarded(where)``; the app's own
exceptions never pass through either.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from types import TracebackType
from typing import ParamSpec, TypeVar

logger = logging.getLogger("otel_stream")

_logged: set[str] = set()


def log_failure(where: str, error: BaseException) -> None:
    """Log a failure of otel-stream's own telemetry code, once per place and error type."""
    key = f"{where}:{type(error).__qualname__}"
    if key in _logged:
        return
    _logged.add(key)
    logger.warning(
        "otel-stream: telemetry failed in %s and was skipped; the response is not affected",
        where,
        exc_info=error,
    )


class failsafe:
    """A context manager that logs (once) and swallows any ``Exception`` raised inside it.

    Args:
        where: What was being done, for the log line ("first byte", "request end").
    """

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if error is None or not isinstance(error, Exception):
            return False  # cancellation and exits pass through
        log_failure(self.where, error)
        return True


P = ParamSpec("P")
R = TypeVar("R")


def guarded(where: str) -> Callable[[Callable[P, R]], Callable[P, R | None]]:
    """A function whose ``Exception`` is logged (once) and swallowed; it then returns None.

    The guard of the per-request paths: one extra call where ``with failsafe(...)``
    costs three (construction, ``__enter__``, ``__exit__``).
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R | None]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> R | None:
            try:
                return function(*args, **kwargs)
            except Exception as error:
                log_failure(where, error)
                return None

        return run

    return decorate
