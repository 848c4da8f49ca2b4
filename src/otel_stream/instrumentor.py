"""``StreamingInstrumentor``: the streaming middleware in every ASGI, Flask and Django app.

Choices made on purpose (read before changing; docs/integrations.md shows the traces):

* **Where Starlette and FastAPI apps get it.** In ``build_middleware_stack``, so every
  way of serving them is covered (any server, ``TestClient``, mounts). The middleware
  goes directly inside ``ServerErrorMiddleware`` (contrib's FastAPI instrumentor expects
  to find that class on top), or directly inside the innermost middleware of the stack
  that starts a SERVER span of its own (Starlette's ``OpenTelemetryMiddleware``,
  contrib's ASGI ``OpenTelemetryMiddleware``). Starlette's middleware and FastAPI's
  built-in telemetry start their SERVER span from the request headers whatever span is
  current, so otel-stream must run inside them to become their INTERNAL child instead
  of a second SERVER span. FastAPI's telemetry wraps the whole stack, so it is outside
  already.
* **Where other ASGI apps get it.** Where a server loads them: uvicorn's ``Config.load``
  (inside uvicorn's proxy-headers wrapper, so ``client.address`` is the real client),
  hypercorn's ``ASGIWrapper``, granian's ASGI callback and lifespan wrappers (one
  middleware for both), daphne's ``Server``. A Starlette app found there is left to its
  own stack.
* **WSGI apps** (Flask's and Django's) get ``StreamingWSGIMiddleware`` where the framework
  is called: ``Flask.__call__`` and Django's ``WSGIHandler.__call__`` (see
  ``otel_stream.wsgi.auto`` for why there).
* **Patches wait for their module.** Each is applied when its module is imported (wrapt
  post-import hooks): instrumenting never imports a server the process does not use
  (importing daphne installs Twisted's reactor, for one).
* **Never twice.** A chain or stack that already holds a ``StreamingMiddleware`` (added
  by hand, or by an earlier patch) is left alone; the middleware's scope key covers
  what a walk along ``.app`` attributes cannot see.
* **Fully reversible.** ``uninstrument()`` puts every patched function back; the
  middlewares already inserted into running apps turn into pass-throughs.
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from collections.abc import Callable, Collection, Mapping, MutableMapping
from types import ModuleType
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from otel_stream import environment_variables as env
from otel_stream import patches, shutdown
from otel_stream.asgi import ASGIApp, Message, Receive, Scope, Send, StreamingMiddleware
from otel_stream.config import Settings, parse_bool, parse_positive_float, resolve
from otel_stream.guard import log_failure
from otel_stream.package import _instruments

logger = logging.getLogger("otel_stream")

_MAX_CHAIN = 64

#: Middlewares that start a SERVER span of their own: otel-stream goes inside them.
_SERVER_SPAN_OWNERS = frozenset(
    {
        ("opentelemetry.instrumentation.asgi", "OpenTelemetryMiddleware"),
        ("starlette.middleware.opentelemetry", "OpenTelemetryMiddleware"),
    }
)
_STARLETTE_TOP = frozenset({("starlette.middleware.errors", "ServerErrorMiddleware")})
_UVICORN_WRAPPERS = frozenset(
    {
        ("uvicorn.middleware.proxy_headers", "ProxyHeadersMiddleware"),
        ("uvicorn.middleware.message_logger", "MessageLoggerMiddleware"),
    }
)


class _State:
    """What the instrumentor has done to this process."""

    def __init__(self) -> None:
        self.active = False
        self.options: dict[str, Any] = {}
        #: Run once, when the first app starts (after its lifespan startup) or gets a request.
        self.setup: Callable[[], None] | None = None
        self.patcher = patches.Patcher(lambda module: _targets_of(module), lambda: self.active)
        self.lock = self.patcher.lock


_state = _State()


class AutoStreamingMiddleware(StreamingMiddleware):
    """The ``StreamingMiddleware`` that ``StreamingInstrumentor`` inserts into apps.

    It takes the instrumentor's options, and passes every request straight through once
    the instrumentor is uninstrumented.

    Args:
        app: The ASGI application to wrap.
    """

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app, **_state.options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _state.active:
            await self.app(scope, receive, send)
            return
        if _state.setup is not None:
            if scope["type"] == "lifespan":
                send = _setup_after_startup(send)
            else:
                run_setup()
        await super().__call__(scope, receive, send)


def run_setup() -> None:
    """Run the pending one-time setup (SDK configuration), if any; never raises."""
    with _state.lock:
        setup, _state.setup = _state.setup, None
    if setup is None:
        return
    try:
        setup()
    except Exception as error:
        logger.warning(
            "otel-stream: configuring the OpenTelemetry SDK failed (%s); "
            "the app runs without exporting telemetry",
            error,
            exc_info=error,
        )


def _setup_after_startup(send: Send) -> Send:
    async def send_after_setup(message: Message) -> None:
        if message.get("type") == "lifespan.startup.complete":
            run_setup()
        await send(message)

    return send_after_setup


# Finding the place in an app --------------------------------------------------------


def _is(node: object, names: frozenset[tuple[str, str]]) -> bool:
    return any((cls.__module__, cls.__qualname__) in names for cls in type(node).__mro__)


def _chain(top: object) -> list[Any]:
    """``top`` and the apps it wraps, followed through their ``app`` attributes."""
    nodes: list[Any] = []
    node: Any = top
    while callable(node) and len(nodes) < _MAX_CHAIN and not any(node is n for n in nodes):
        nodes.append(node)
        try:
            node = getattr(node, "app", None)
        except Exception:
            break
    return nodes


def _insert(top: ASGIApp, nodes: list[Any], leading: frozenset[tuple[str, str]]) -> ASGIApp:
    """Put an AutoStreamingMiddleware into the chain ``nodes`` (``top`` first)."""
    if any(isinstance(node, StreamingMiddleware) for node in nodes):
        return top
    owners = [node for node in nodes if _is(node, _SERVER_SPAN_OWNERS)]
    parent: Any = owners[-1] if owners else None
    if parent is None:
        for node in nodes[:-1]:
            if not _is(node, leading):
                break
            parent = node
    if parent is None or not callable(getattr(parent, "app", None)):
        return _wrapper_of(top)
    parent.app = AutoStreamingMiddleware(parent.app)
    return top


_wrappers: weakref.WeakValueDictionary[int, AutoStreamingMiddleware] = weakref.WeakValueDictionary()


def _wrapper_of(app: ASGIApp) -> AutoStreamingMiddleware:
    """One middleware per app, however many times a server hands the app over
    (granian passes it once for lifespan and once for requests)."""
    wrapper = _wrappers.get(id(app))
    if wrapper is None or wrapper.app is not app:
        wrapper = _wrappers[id(app)] = AutoStreamingMiddleware(app)
    return wrapper


def instrument_stack(stack: ASGIApp) -> ASGIApp:
    """A Starlette middleware stack with the middleware inserted (see the module docstring)."""
    return _insert(stack, _chain(stack), _STARLETTE_TOP)


def instrument_served_app(
    app: ASGIApp, leading: frozenset[tuple[str, str]] = frozenset()
) -> ASGIApp:
    """An app as a server loaded it, with the middleware inserted after ``leading`` wrappers."""
    nodes = _chain(app)
    starlette = sys.modules.get("starlette.applications")
    for node in nodes:
        if starlette is not None and isinstance(node, starlette.Starlette):
            if node.middleware_stack is not None:  # built before we were there
                node.middleware_stack = instrument_stack(node.middleware_stack)
            return app
    return _insert(app, nodes, leading)


# The patches ------------------------------------------------------------------------


def _guarded(where: str, change: Callable[[], None]) -> None:
    try:
        change()
    except Exception as error:
        log_failure(where, error)


def _build_middleware_stack(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    stack = wrapped(*args, **kwargs)
    try:
        return instrument_stack(stack)
    except Exception as error:
        log_failure("instrumenting a middleware stack", error)
        return stack


def _uvicorn_load(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)

    def change() -> None:
        instance.loaded_app = instrument_served_app(instance.loaded_app, _UVICORN_WRAPPERS)
        if getattr(instance, "lifespan", None) == "off":
            run_setup()

    _guarded("instrumenting a uvicorn app", change)
    return result


def _hypercorn_wrapper_init(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> None:
    wrapped(*args, **kwargs)

    def change() -> None:
        instance.app = instrument_served_app(instance.app)

    _guarded("instrumenting a hypercorn app", change)


def _granian_callback_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        if args:
            args = (instrument_served_app(args[0]), *args[1:])
        elif "callback" in kwargs:
            kwargs = {**kwargs, "callback": instrument_served_app(kwargs["callback"])}
    except Exception as error:
        log_failure("instrumenting a granian app", error)
    return wrapped(*args, **kwargs)


def _granian_lifespan_init(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> None:
    wrapped(*args, **kwargs)

    def change() -> None:
        instance.callable = instrument_served_app(instance.callable)

    _guarded("instrumenting a granian app's lifespan", change)


def _daphne_server_init(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> None:
    wrapped(*args, **kwargs)

    def change() -> None:
        instance.application = instrument_served_app(instance.application)
        run_setup()  # daphne runs no lifespan

    _guarded("instrumenting a daphne app", change)


def _flask_call(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    from otel_stream.wsgi import auto  # the WSGI adapter loads with the first WSGI app

    return auto.flask_call(wrapped, instance, args, kwargs)


def _django_call(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    from otel_stream.wsgi import auto

    return auto.django_call(wrapped, instance, args, kwargs)


_GRANIAN = ((None, "_asgi_call_wrap", _granian_callback_wrapper),)

#: module -> ((owner in the module or None for the module itself, attribute, wrapper), ...)
_TARGETS: Mapping[str, tuple[tuple[str | None, str, Callable[..., Any]], ...]] = {
    "starlette.applications": (("Starlette", "build_middleware_stack", _build_middleware_stack),),
    "fastapi.applications": (("FastAPI", "build_middleware_stack", _build_middleware_stack),),
    "uvicorn.config": (("Config", "load", _uvicorn_load),),
    "hypercorn.app_wrappers": (("ASGIWrapper", "__init__", _hypercorn_wrapper_init),),
    "granian.asgi": (("LifespanProtocol", "__init__", _granian_lifespan_init),),
    "granian.server.mp": _GRANIAN,
    "granian.server.mt": _GRANIAN,
    "granian.server.embed": _GRANIAN,
    "daphne.server": (("Server", "__init__", _daphne_server_init),),
    # WSGI: where the frameworks are called (otel_stream.wsgi.auto says why there).
    "flask.app": (("Flask", "__call__", _flask_call),),
    "django.core.handlers.wsgi": (("WSGIHandler", "__call__", _django_call),),
}


def _targets_of(module: ModuleType) -> list[patches.Target]:
    """What to wrap in ``module`` (one of ``_TARGETS``)."""
    return [
        (
            module if owner_name is None else getattr(module, owner_name, None),
            attribute,
            wrapper,
        )
        for owner_name, attribute, wrapper in _TARGETS[module.__name__]
    ]


# Settings ---------------------------------------------------------------------------


class _Recorder(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.warned = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            self.warned = True
        return True


def _warns(check: Callable[[], object]) -> bool:
    recorder = _Recorder()
    logger.addFilter(recorder)
    try:
        check()
    finally:
        logger.removeFilter(recorder)
    return recorder.warned


def _checks(name: str, value: str) -> list[Callable[[], object]]:
    """What reads the variable ``name``, run on it alone (the readers warn themselves)."""
    alone = {name: value}
    return [
        lambda: Settings.from_options(environ=alone),
        lambda: resolve(
            env.OTEL_STREAM_SHUTDOWN_FLUSH_TIMEOUT,
            None,
            parse_positive_float,
            shutdown.DEFAULT_TIMEOUT,
            environ=alone,
        ),
    ]


def validate_environment(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Check every ``OTEL_STREAM_*`` variable once, warning once for each bad one.

    Each invalid variable is then removed from ``environ`` (``os.environ`` by default),
    so that every later reader, in this process and in the workers it starts, uses the
    default that the warning announced instead of warning again. Returns their names.
    """
    environ = os.environ if environ is None else environ
    known = {value for key, value in vars(env).items() if key.startswith("OTEL_STREAM_")}
    names = sorted(name for name in environ if name.startswith("OTEL_STREAM_"))
    if env.OTEL_STREAM_EXCLUDED_URLS not in environ and "OTEL_PYTHON_EXCLUDED_URLS" in environ:
        names.append("OTEL_PYTHON_EXCLUDED_URLS")
    invalid = []
    for name in names:
        value = environ[name]
        if name.startswith("OTEL_STREAM_") and name not in known:
            logger.warning("otel-stream: unknown variable %s=%r is ignored", name, value)
            continue
        if any(_warns(check) for check in _checks(name, value)):
            invalid.append(name)
    for name in invalid:
        del environ[name]
    return invalid


# The instrumentor -------------------------------------------------------------------


class StreamingInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instrument every ASGI, Flask and Django app the process serves with the streaming middleware.

    ``opentelemetry-instrument`` finds it through the ``opentelemetry_instrumentor``
    entry point ``otel_stream``; ``OTEL_STREAM_ENABLED=true`` starts it without a
    wrapper command (see ``otel_stream.autoinstrument``). Call ``instrument()`` before
    the apps are created.

    Keyword arguments of ``instrument()``:
        tracer_provider: Tracer provider to use; the global one if omitted.
        meter_provider: Meter provider to use; the global one if omitted.
        server_request_hook: Called with the request span and the scope.
        configure_sdk: Configure the OpenTelemetry SDK from the ``OTEL_*`` variables when
            the first app starts, unless the app has configured one by then.
        **options: Any setting of ``StreamingMiddleware``; the ``OTEL_STREAM_*``
            variables apply to the rest.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        from otel_stream.sdk import configure_sdk

        setup = configure_sdk if kwargs.pop("configure_sdk", False) else None
        validate_environment()
        if not resolve(env.OTEL_STREAM_ENABLED, None, parse_bool, True):
            logger.debug("otel-stream: %s is false; not instrumenting", env.OTEL_STREAM_ENABLED)
            return
        options = dict(kwargs)
        settings_options = {
            key: value
            for key, value in options.items()
            if key not in ("tracer_provider", "meter_provider", "server_request_hook")
        }
        Settings.from_options(**settings_options)  # a wrong keyword fails here, not in an app
        with _state.lock:
            _state.options = options
            _state.setup = setup
            _state.active = True
        _state.patcher.patch(_TARGETS)  # registers import hooks: outside the lock

    def _uninstrument(self, **kwargs: Any) -> None:
        with _state.lock:
            _state.active = False
            _state.setup = None
            _state.patcher.unpatch()
