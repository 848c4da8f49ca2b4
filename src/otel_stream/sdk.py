"""SDK set-up for ``OTEL_STREAM_ENABLED=true``, where no wrapper command configures it.

:func:`configure_sdk` does what ``opentelemetry-instrument`` does before it loads the
instrumentors: load the installed distro and configurator, which read the standard
``OTEL_*`` variables. The instrumentor calls it when the first app starts. Choices made
on purpose:

* **The app's own set-up wins.** A tracer or meter provider set by then (by the app, a
  framework, a vendor agent) is used as it is: nothing is configured.
* **A missing exporter skips one signal, not the whole set-up.** The SDK's configurator
  imports every exporter that ``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER`` and
  ``OTEL_LOGS_EXPORTER`` name before it sets up any signal, and raises ``RuntimeError``
  ("Requested component ... not found in entry point ...") at the first one that is not
  installed; nothing is configured then. ``opentelemetry-distro`` defaults all three to
  ``otlp`` over gRPC, so an install with the HTTP exporter only, or without a logs
  exporter, would export nothing. Each name is therefore resolved first against the
  installed entry points, by the SDK's own rule (``otlp`` is ``otlp_proto_grpc`` or
  ``otlp_proto_http`` after ``OTEL_EXPORTER_OTLP_[SIGNAL_]PROTOCOL``, gRPC when unset);
  one that cannot be loaded is left out of that variable for the configuration (``none``
  when nothing is left), with one warning naming the signal, the exporter and what to
  install. The variables are put back afterwards.
* **The resolution is ours, the configuration is the SDK's.** The rule above is a few
  lines, written here rather than imported from the SDK's private helpers; if a future
  SDK resolves a name differently, its configurator still raises, and the caller logs
  that as one warning.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from opentelemetry import metrics, trace

from otel_stream import environment_variables as env

logger = logging.getLogger("otel_stream")

_DEFERRED_PROVIDERS = frozenset(
    {
        ("opentelemetry.trace", "ProxyTracerProvider"),
        ("opentelemetry.metrics._internal", "_ProxyMeterProvider"),
    }
)

#: Signal, its exporter variable, its protocol variable, its entry point group.
SIGNALS = (
    (
        "traces",
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "opentelemetry_traces_exporter",
    ),
    (
        "metrics",
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "opentelemetry_metrics_exporter",
    ),
    (
        "logs",
        "OTEL_LOGS_EXPORTER",
        "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
        "opentelemetry_logs_exporter",
    ),
)
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
#: The distribution that provides each exporter the SDK's own packages name.
PACKAGES = {
    "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
    "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http",
    "console": "opentelemetry-sdk",
    "prometheus": "opentelemetry-exporter-prometheus",
    "zipkin_json": "opentelemetry-exporter-zipkin-json",
    "zipkin_proto": "opentelemetry-exporter-zipkin-proto-http",
}


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
    A signal whose exporter is not installed is skipped with one warning.
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
            "opentelemetry-exporter-otlp-proto-http, or otel-stream's otlp extra)",
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
        with installed_exporters_only():
            _load_configurators()  # type: ignore[no-untyped-call]
        if not sdk_configured():
            from opentelemetry.sdk._configuration import _OTelSDKConfigurator

            os.environ.setdefault("OTEL_TRACES_EXPORTER", "otlp")
            os.environ.setdefault("OTEL_METRICS_EXPORTER", "otlp")
            os.environ.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            with installed_exporters_only():
                _OTelSDKConfigurator().configure()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class MissingExporter:
    """An exporter a signal's variable names that cannot be loaded here."""

    signal: str
    variable: str
    #: The name as written in the variable (``otlp``, ``console``, ...).
    name: str
    #: The entry point it resolves to (``otlp_proto_grpc`` for ``otlp`` over gRPC).
    entry_point: str
    #: Why it cannot be used, as the end of a sentence ("is not installed").
    reason: str

    def describe(self) -> str:
        if self.name == self.entry_point:
            return f"the exporter {self.name!r} {self.reason}"
        return f"{self.name!r} here means {self.entry_point!r}, which {self.reason}"

    def remedies(self) -> list[str]:
        """What to install or set to get this signal exported."""
        if self.entry_point == "otlp":  # an OTLP protocol this SDK does not have
            return ["set OTEL_EXPORTER_OTLP_PROTOCOL to grpc or http/protobuf"]
        package = PACKAGES.get(self.entry_point)
        if package is None:
            install = (
                f"install the package that provides {self.entry_point!r} (entry point "
                f"group opentelemetry_{self.signal}_exporter)"
            )
        else:
            install = f"pip install {package}"
        if self.entry_point in _OTLP_BY_PROTOCOL.values():
            install += " (or otel-stream's otlp extra, which has both OTLP protocols)"
        found = [install]
        if self.entry_point == "otlp_proto_grpc" and self.name == "otlp":
            found.append("set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf")
        return found


def missing_exporters(environ: Mapping[str, str] | None = None) -> list[MissingExporter]:
    """Every exporter the ``OTEL_*_EXPORTER`` variables name that cannot be loaded."""
    environ = os.environ if environ is None else environ
    found = []
    for signal, variable, protocol_variable, group in SIGNALS:
        protocol = (
            environ.get(protocol_variable, "").strip()
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
        )
        for name in _names(environ.get(variable, "")):
            entry_point, reason = _resolve(name, protocol, group)
            if reason is not None:
                found.append(MissingExporter(signal, variable, name, entry_point, reason))
    return found


@contextlib.contextmanager
def installed_exporters_only() -> Iterator[list[MissingExporter]]:
    """Leave out of each ``OTEL_*_EXPORTER`` the exporters that cannot be loaded, meanwhile.

    Warns once for each signal that loses one; puts every variable back on exit.
    """
    missing = missing_exporters()
    originals: dict[str, str] = {}
    for signal, variable, _, _ in SIGNALS:
        lost = [item for item in missing if item.variable == variable]
        if not lost:
            continue
        original = os.environ.get(variable, "")
        originals[variable] = original
        lost_names = {item.name for item in lost}
        kept = [name for name in _names(original) if name not in lost_names]
        os.environ[variable] = ",".join(kept) or "none"
        outcome = f"exported with {', '.join(kept)} only" if kept else "not exported"
        remedies = dict.fromkeys(remedy for item in lost for remedy in item.remedies())
        logger.warning(
            "otel-stream: %s %s: %s=%s: %s. Fix: %s. %s=%s does without it, silently",
            signal,
            outcome,
            variable,
            original,
            "; ".join(item.describe() for item in lost),
            "; or ".join(remedies),
            variable,
            os.environ[variable],
        )
    try:
        yield missing
    finally:
        os.environ.update(originals)


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    return [] if [name.lower() for name in names] in ([], ["none"]) else names


def _resolve(name: str, protocol: str, group: str) -> tuple[str, str | None]:
    """The entry point ``name`` stands for, and why it cannot be loaded (None: it can)."""
    entry_point = name
    if name == "otlp":
        if not protocol:
            entry_point = _OTLP_BY_PROTOCOL["grpc"]  # the SDK's default, not the spec's
        elif protocol in _OTLP_BY_PROTOCOL:
            entry_point = _OTLP_BY_PROTOCOL[protocol]
        else:
            return name, f"cannot be used: {protocol!r} is not an OTLP protocol this SDK has"
    candidates = importlib.metadata.entry_points(group=group, name=entry_point)
    if not candidates:
        return entry_point, "is not installed"
    try:
        next(iter(candidates)).load()
    except Exception as error:  # an ImportError, or anything its module raises
        return entry_point, f"cannot be imported ({type(error).__name__}: {error})"
    return entry_point, None


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
