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
  ``service.instance.id``.
* **Failure-proof.** Anything that goes wrong is logged as one warning; the app starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import uuid
from collections.abc import Iterator

from opentelemetry import metrics, trace

from otel_stream import environment_variables as env
from otel_stream.config import parse_bool, resolve

logger = logging.getLogger("otel_stream")

_OPENTELEMETRY_INSTRUMENT_DIR = os.path.join(
    "opentelemetry", "instrumentation", "auto_instrumentation"
)
_DEFERRED_PROVIDERS = frozenset(
    {
        ("opentelemetry.trace", "ProxyTracerProvider"),
        ("opentelemetry.metrics._internal", "_ProxyMeterProvider"),
    }
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
    if not resolve(env.OTEL_STREAM_ENABLED, None, parse_bool, False):
        return
    if disabled_by_opentelemetry():
        return
    from otel_stream.clients.instrumentor import instrument_clients
    from otel_stream.instrumentor import StreamingInstrumentor

    StreamingInstrumentor().instrument(configure_sdk=True)
    instrument_clients()


def under_opentelemetry_instrument() -> bool:
    """True when ``opentelemetry-instrument``'s ``sitecustomize`` will run in this process."""
    return any(os.path.normpath(path).endswith(_OPENTELEMETRY_INSTRUMENT_DIR) for path in sys.path)


def disabled_by_opentelemetry() -> bool:
    """True when ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` names ``otel_stream`` (or ``*``)."""
    names = os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    return bool({name.strip() for name in names.split(",")} & {_ENTRY_POINT, "*"})


def sdk_configured() -> bool:
    """True once anything has set a global tracer or meter provider."""
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        cls = type(provider)
        if (cls.__module__, cls.__name__) not in _DEFERRED_PROVIDERS:
            return True
    return False


def configure_sdk() -> None:
    """Configure the SDK from the ``OTEL_*`` variables as ``opentelemetry-instrument`` would.

    Does nothing when a tracer or meter provider is already set, when
    ``OTEL_SDK_DISABLED=true``, or when ``opentelemetry-sdk`` is not installed. Uses the
    installed distro and configurator (``opentelemetry-distro``, or a vendor's); with the
    SDK alone, the specification's defaults apply (OTLP over HTTP for traces and metrics).
    """
    if sdk_configured():
        logger.debug("otel-stream: the app configured OpenTelemetry; using its providers")
        return
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        logger.warning(
            "otel-stream: %s=true but opentelemetry-sdk is not installed; "
            "telemetry goes nowhere (pip install opentelemetry-sdk "
            "opentelemetry-exporter-otlp-proto-http)",
            env.OTEL_STREAM_ENABLED,
        )
        return
    from opentelemetry.instrumentation.auto_instrumentation._load import (
        _load_configurators,
        _load_distro,
    )

    with _service_instance_id():
        distro = _load_distro()
        distro.configure()
        _load_configurators()  # type: ignore[no-untyped-call]
        if not sdk_configured():
            from opentelemetry.sdk._configuration import _OTelSDKConfigurator

            os.environ.setdefault("OTEL_TRACES_EXPORTER", "otlp")
            os.environ.setdefault("OTEL_METRICS_EXPORTER", "otlp")
            os.environ.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            _OTelSDKConfigurator().configure()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def _service_instance_id() -> Iterator[None]:
    """Give this process a ``service.instance.id`` while configuring, unless it has one.

    Recent SDKs detect one per process; older ones do not, and the workers of one
    service would then be indistinguishable.
    """
    from opentelemetry.sdk.resources import Resource

    if "service.instance.id" in Resource.create().attributes:
        yield
        return
    name = "OTEL_RESOURCE_ATTRIBUTES"
    original = os.environ.get(name)
    os.environ[name] = ",".join(
        part for part in (original, f"service.instance.id={uuid.uuid4()}") if part
    )
    try:
        yield
    finally:
        if original is None:
            del os.environ[name]
        else:
            os.environ[name] = original
