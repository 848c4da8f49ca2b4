"""Flush telemetry when the server shuts down, so the last seconds of spans leave the process.

Why this exists: uvicorn catches SIGTERM, shuts down gracefully, restores the previous
handler and raises SIGTERM again. With the default handler that kills the process at
once, before ``atexit``, so a batch span processor's queue never leaves the process.
otel-stream therefore (1) flushes when the app's lifespan shutdown completes, and
(2) chains a SIGTERM handler that flushes, then lets the previous handler (by default,
termination) run. Each flush is bounded by ``OTEL_STREAM_SHUTDOWN_FLUSH_TIMEOUT``
seconds and runs in a daemon thread, so a dead or hanging exporter cannot hold the
shutdown. Providers without ``force_flush`` (the API's no-op ones) are skipped.
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from opentelemetry import metrics, trace

from otel_stream import environment_variables as env
from otel_stream.config import parse_positive_float, resolve

logger = logging.getLogger("otel_stream")

DEFAULT_TIMEOUT = 5.0

_lock = threading.Lock()
_providers: list[Any] = []  # explicit providers; None entries stand for the global ones
_use_global = False
_previous_sigterm: Any = None
_sigterm_installed = False
_timed_out = False


def flush_timeout() -> float:
    return resolve(
        env.OTEL_STREAM_SHUTDOWN_FLUSH_TIMEOUT, None, parse_positive_float, DEFAULT_TIMEOUT
    )


def register(tracer_provider: Any, meter_provider: Any) -> None:
    """Remember providers to flush at shutdown (None: the global provider at that time)."""
    global _use_global
    with _lock:
        for provider in (tracer_provider, meter_provider):
            if provider is None:
                _use_global = True
            elif not any(provider is known for known in _providers):
                _providers.append(provider)
    install_sigterm_handler()


def _targets() -> list[Any]:
    with _lock:
        targets = list(_providers)
        use_global = _use_global
    if use_global:
        for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
            if not any(provider is known for known in targets):
                targets.append(provider)
    return [provider for provider in targets if callable(getattr(provider, "force_flush", None))]


def flush(timeout: float | None = None) -> bool:
    """Flush every registered provider within ``timeout`` seconds; True if all finished.

    After one flush has timed out the exporter is taken as dead: later flushes return at
    once, and the SDK's own exit-time shutdown of those providers is unregistered, so a
    dead or hanging exporter costs the shutdown one timeout, not one per hook.
    """
    global _timed_out
    if _timed_out:
        return False
    timeout = flush_timeout() if timeout is None else timeout
    targets = _targets()
    if not targets:
        return True
    done = threading.Event()

    def run() -> None:
        deadline = time.monotonic() + timeout
        for provider in targets:
            remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
            try:
                provider.force_flush(remaining_ms)
            except Exception:
                logger.warning(
                    "otel-stream: flushing %r at shutdown failed", provider, exc_info=True
                )
        done.set()

    threading.Thread(target=run, name="otel-stream-flush", daemon=True).start()
    if not done.wait(timeout):
        _timed_out = True
        for provider in targets:
            shutdown = getattr(provider, "shutdown", None)
            if callable(shutdown):
                atexit.unregister(shutdown)
        logger.warning("otel-stream: telemetry flush did not finish within %.1f s", timeout)
        return False
    return True


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    flush()
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def install_sigterm_handler() -> None:
    """Chain a flushing SIGTERM handler (main thread only; never replaces it twice).

    If a uvicorn server already holds SIGTERM (the app was loaded after uvicorn took the
    signal: auto-instrumentation, ``--workers``, ``--reload``), its handler is left alone:
    replacing it would flush before the graceful shutdown, and uvicorn would then restore
    the default handler and re-raise. Instead the server's ``shutdown`` flushes when done.
    """
    global _previous_sigterm, _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        current = signal.getsignal(signal.SIGTERM)
        server = getattr(current, "__self__", None)
        if server is not None and type(server).__module__.startswith("uvicorn."):
            _flush_after_shutdown(server)
            return
        _previous_sigterm = current
        signal.signal(signal.SIGTERM, _on_sigterm)
        _sigterm_installed = True
    except (ValueError, OSError) as error:  # no signals here (embedded interpreter, ...)
        logger.debug("otel-stream: SIGTERM handler not installed: %s", error)


def _flush_after_shutdown(server: Any) -> None:
    """Make a uvicorn ``Server`` flush telemetry once its graceful shutdown is done."""
    original = getattr(server, "shutdown", None)
    if not callable(original) or getattr(original, "_otel_stream_flushes", False):
        return

    async def shutdown_then_flush(*args: Any, **kwargs: Any) -> Any:
        try:
            return await original(*args, **kwargs)
        finally:
            flush()

    shutdown_then_flush._otel_stream_flushes = True  # type: ignore[attr-defined]
    server.shutdown = shutdown_then_flush
