"""``StreamingClientInstrumentor``: outgoing streams split at the first byte.

Choices made on purpose:

* **Patches wait for their module.** httpx, httpx2 and aiohttp are patched when they
  are imported (wrapt post-import hooks): instrumenting imports none of them.
* **Its own entry point** (``otel_stream_client``), so
  ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_stream_client`` turns the client side
  off and leaves the server side on.
* **Fully reversible.** ``uninstrument()`` puts every patched function back; a
  response already being read finishes its telemetry, and a wrapper someone else
  re-patched over passes every call through.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from types import ModuleType
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from otel_stream import environment_variables as env
from otel_stream import patches
from otel_stream.config import Settings, parse_bool, resolve
from otel_stream.recorder import CLIENT, Recorder

logger = logging.getLogger("otel_stream")

#: Keywords of ``instrument()`` that are not settings.
_OWN_KEYWORDS = ("tracer_provider", "meter_provider", "provider_name")
#: The settings that mean something for an outgoing call (the rest are the server's).
_SETTINGS = (
    "ttfb_buckets",
    "duration_buckets",
    "gap_buckets",
    "chunks_buckets",
    "body_size_buckets",
    "time_per_output_token_buckets",
    "payloads",
    "payload_max_event_bytes",
)

_instruments_any = ("httpx >= 0.23", "httpx2 >= 2.0", "aiohttp >= 3.9")


class _State:
    """What the client instrumentor has done to this process."""

    def __init__(self) -> None:
        self.recorder: Recorder | None = None
        self.patcher = patches.Patcher(lambda module: _targets_of(module), self.instrumenting)
        self.lock = self.patcher.lock

    def instrumenting(self) -> bool:
        return self.recorder is not None


_state = _State()


def _recorder() -> Recorder | None:
    return _state.recorder


def _httpx_targets(module: ModuleType) -> list[tuple[Any, str, Callable[..., Any]]]:
    from otel_stream.clients.httpx import send_wrappers

    send, async_send = send_wrappers(module, _recorder)
    return [(module.Client, "send", send), (module.AsyncClient, "send", async_send)]


def _aiohttp_targets(module: ModuleType) -> list[tuple[Any, str, Callable[..., Any]]]:
    from otel_stream.clients.aiohttp import request_wrapper

    return [(module.ClientSession, "_request", request_wrapper(_recorder))]


#: module -> the (owner, attribute, wrapper) patches it gets.
_TARGETS: dict[str, Callable[[ModuleType], list[tuple[Any, str, Callable[..., Any]]]]] = {
    "httpx": _httpx_targets,
    "httpx2": _httpx_targets,
    "aiohttp.client": _aiohttp_targets,
}


def _targets_of(module: ModuleType) -> list[patches.Target]:
    """What to wrap in ``module`` (one of ``_TARGETS``)."""
    return _TARGETS[module.__name__](module)


ENTRY_POINT = "otel_stream_client"


def instrument_clients() -> None:
    """Instrument the HTTP clients unless ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` names
    ``otel_stream_client`` (or ``*``); for ``OTEL_STREAM_ENABLED=true``. Never raises."""
    names = os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    if {name.strip() for name in names.split(",")} & {ENTRY_POINT, "*"}:
        return
    try:
        StreamingClientInstrumentor().instrument()
    except Exception as error:
        logger.warning(
            "otel-stream: instrumenting the HTTP clients failed (%s); they run uninstrumented",
            error,
            exc_info=error,
        )


class StreamingClientInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Split every outgoing streamed response at the first body byte.

    Patches httpx 0.x, httpx2 (the openai and anthropic SDKs' transport) and aiohttp's
    client; ``opentelemetry-instrument`` finds it through the entry point
    ``otel_stream_client``, and ``OTEL_STREAM_ENABLED=true`` starts it with the server
    side.

    Keyword arguments of ``instrument()``:
        tracer_provider: Tracer provider to use; the global one if omitted.
        meter_provider: Meter provider to use; the global one if omitted.
        provider_name: ``gen_ai.provider.name`` for the LLM streams read (``openai``,
            ``anthropic``...), when every upstream of the process is that provider;
            otel-stream never guesses it.
        **options: The bucket and payload settings of ``StreamingMiddleware``
            (``ttfb_buckets``, ``duration_buckets``, ``gap_buckets``,
            ``chunks_buckets``, ``body_size_buckets``,
            ``time_per_output_token_buckets``, ``payloads``,
            ``payload_max_event_bytes``); the ``OTEL_STREAM_*`` variables apply to
            the rest. Any other keyword is a ``TypeError`` listing the valid ones.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        if not resolve(env.OTEL_STREAM_ENABLED, None, parse_bool, True):
            logger.debug("otel-stream: %s is false; not instrumenting", env.OTEL_STREAM_ENABLED)
            return
        unknown = sorted(set(kwargs) - set(_OWN_KEYWORDS) - set(_SETTINGS))
        if unknown:
            raise TypeError(
                f"StreamingClientInstrumentor.instrument() got an unexpected keyword argument "
                f"{unknown[0]!r}; valid options: {', '.join(sorted(_OWN_KEYWORDS + _SETTINGS))}"
            )
        settings_options = {key: value for key, value in kwargs.items() if key in _SETTINGS}
        recorder = Recorder(
            Settings.from_options(**settings_options),
            kwargs.get("tracer_provider"),
            kwargs.get("meter_provider"),
            CLIENT,
            provider_name=kwargs.get("provider_name"),
        )
        with _state.lock:
            _state.recorder = recorder
        _state.patcher.patch(_TARGETS)

    def _uninstrument(self, **kwargs: Any) -> None:
        with _state.lock:
            _state.recorder = None
            _state.patcher.unpatch()
