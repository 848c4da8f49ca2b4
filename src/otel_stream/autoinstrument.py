"""``OTEL_STREAM_ENABLED=true``: instrument a process started the usual way.

The wheel installs ``otel_stream.pth`` into site-packages. Python runs it at every
interpreter start-up; it reads one environment variable and, unless that is unset or
false, calls :func:`start`. Choices made on purpose:

* **Nothing without the variable.** The ``.pth`` line imports nothing then; importing
  ``otel_stream`` itself never patches anything.
* **``opentelemetry-instrument`` goes first.** Its ``sitecustomize`` (also what the
  Kubernetes operator injects through ``PYTHONPATH``) loads the ``otel_stream`` entry
  point and configures the SDK itself, so :func:`start` steps aside when that directory
  is on ``sys.path``: the app is instrumented once, and the disable switch is honoured
  in one place.
* **The SDK is configured late.** Not at start-up but when the first app has finished
  its lifespan startup (or gets its first request, or is loaded by a server that runs no
  lifespan), and only if neither the app nor anything else has set a tracer or meter
  provider by then: an app that configures OpenTelemetry at import time, in a factory or
  in its startup handler keeps its own configuration. Each process (every worker of
  ``uvicorn --workers``, gunicorn, granian) configures its own SDK, with its own
  ``service.instance.id``. The set-up itself is ``otel_stream.sdk``; a signal whose
  exporter is not installed is skipped there with one warning.
* **Failure-proof.** Anything that goes wrong is logged as one warning; the app starts.
"""

from __future__ import annotations

import logging
import os
import sys

from otel_stream import environment_variables as env
from otel_stream.config import parse_bool, resolve

logger = logging.getLogger("otel_stream")

_OPENTELEMETRY_INSTRUMENT_DIR = os.path.join(
    "opentelemetry", "instrumentation", "auto_instrumentation"
)
_ENTRY_POINT = "otel_stream"


_started = False


def start() -> None:
    """Instrument this process if ``OTEL_STREAM_ENABLED`` says so; never raises.

    Runs once per process, even when two site directories hold the ``.pth`` file (a
    virtual environment with ``--system-site-packages``).
    """
    global _started
    if _started:
        return
    _started = True
    try:
        _start()
    except Exception as error:
        logger.warning(
            "otel-stream: %s start-up failed (%s); the app runs without otel-stream",
            env.OTEL_STREAM_ENABLED,
            error,
            exc_info=error,
        )


def _start() -> None:
    if under_opentelemetry_instrument():
        return
    if not _enabled():
        return
    if disabled_by_opentelemetry():
        return
    from otel_stream.clients.instrumentor import instrument_clients
    from otel_stream.instrumentor import StreamingInstrumentor

    StreamingInstrumentor().instrument(configure_sdk=True)
    instrument_clients()


def _enabled() -> bool:
    """``OTEL_STREAM_ENABLED`` as the start-up switch (default: off).

    An invalid value warns once and is then removed from the environment, as the
    instrumentor does with the other variables: a middleware added in code, and the
    processes this one starts, then use their default without a second warning.
    """
    enabled = resolve(env.OTEL_STREAM_ENABLED, None, parse_bool, False)
    raw = os.environ.get(env.OTEL_STREAM_ENABLED, "")
    try:
        parse_bool(raw)
    except ValueError:
        if raw.strip():  # blank is unset, not invalid
            del os.environ[env.OTEL_STREAM_ENABLED]
    return enabled


def under_opentelemetry_instrument() -> bool:
    """True when ``opentelemetry-instrument``'s ``sitecustomize`` will run in this process."""
    return any(os.path.normpath(path).endswith(_OPENTELEMETRY_INSTRUMENT_DIR) for path in sys.path)


def disabled_by_opentelemetry() -> bool:
    """True when ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` names ``otel_stream`` (or ``*``)."""
    names = os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    return bool({name.strip() for name in names.split(",")} & {_ENTRY_POINT, "*"})
