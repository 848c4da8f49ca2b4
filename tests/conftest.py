from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from hypothesis import settings

from otel_stream import guard as otel_stream_guard
from otel_stream import shutdown
from tests.telemetry_harness import Telemetry

# CI has no example database: the same examples on every run, and a failure's reproduce blob.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "") not in ("", "false"):
    settings.load_profile("ci")


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    harness = Telemetry()
    yield harness
    harness.shutdown()


@pytest.fixture(autouse=True)
def _fresh_log_once() -> None:
    """Each test sees the first failure of each kind logged (the cache lives per process)."""
    otel_stream_guard._logged.clear()


@pytest.fixture(autouse=True)
def _restore_shutdown_state() -> Iterator[None]:
    """Undo what a test's middlewares registered for shutdown, and their SIGTERM handler."""
    with shutdown._lock:
        providers = list(shutdown._providers)
        use_global = shutdown._use_global
        timed_out = shutdown._timed_out
        sigterm_installed = shutdown._sigterm_installed
        previous_sigterm = shutdown._previous_sigterm
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    yield
    if sigterm_handler is not None:  # None: not set from Python, nothing to put back
        signal.signal(signal.SIGTERM, sigterm_handler)
    with shutdown._lock:
        shutdown._providers[:] = providers
        shutdown._use_global = use_global
        shutdown._timed_out = timed_out
        shutdown._sigterm_installed = sigterm_installed
        shutdown._previous_sigterm = previous_sigterm
