from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from hypothesis import settings

from otel_stream import guard as otel_stream_guard
from otel_stream import shutdown
from tests import processes
from tests.otlp_receiver import OTLPReceiver
from tests.telemetry_harness import Telemetry

#: Seconds the session-end check waits for processes that are still exiting.
EXIT_GRACE = 5.0

# CI has no example database: the same examples on every run, and a failure's reproduce blob.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "") not in ("", "false"):
    settings.load_profile("ci")


def pytest_configure(config: pytest.Config) -> None:
    """Mark this session in the environment every process the tests start inherits."""
    processes.mark_session()


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_running() -> Iterator[None]:
    """Fail the run if a process the tests started still runs at its end (then kill it).

    Autouse and session-scoped, so it is set up before every other fixture and torn down
    after them: servers of session fixtures have stopped by then.
    """
    yield
    left = processes.leftovers(grace=EXIT_GRACE)
    if left:
        processes.stop_leftovers(left)
        listed = "\n".join(f"  pid {p.pid} (group {p.pgid}): {p.command}" for p in left)
        pytest.fail(
            f"{len(left)} process(es) the tests started still ran at the session's end "
            f"(now killed):\n{listed}",
            pytrace=False,
        )


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    """A running OTLP/HTTP receiver on loopback (tests/otlp_receiver.py)."""
    with OTLPReceiver() as running:
        yield running


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


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """A fake OpenAI- and Anthropic-compatible model on loopback (the client tests' upstream)."""
    from tests.client_servers import upstream_app
    from tests.servers import serve

    with serve(upstream_app()) as url:
        yield url
