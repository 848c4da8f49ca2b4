"""What ``StreamingInstrumentor`` does to WSGI apps: Flask's and Django's, where they are called.

Choices made on purpose (read before changing):

* **Where.** ``Flask.__call__`` and Django's ``WSGIHandler.__call__``: every Flask app and
  every ``get_wsgi_application()`` goes through them, whatever server serves it (gunicorn,
  waitress, uWSGI, the development servers) and however the app was built. They are the
  outermost frame of the framework, so the request span is current when contrib's
  Flask (its ``before_request``), Django (its middleware) or WSGI instrumentation inside
  starts its span: theirs becomes INTERNAL, and one SERVER span is left. Contrib's
  WSGI middleware wrapped around the app from outside is a server span already: the
  request span becomes its INTERNAL child (see ``server_parent`` in the recorder).
* **One middleware per app.** Kept on the app object, so the settings and instruments are
  built once, not per request.
* **A hand-added middleware wins.** A Flask app whose ``wsgi_app`` is (or wraps) a
  ``StreamingWSGIMiddleware`` is left to it; one wrapped around the app from outside
  has marked the environ before the patched ``__call__`` runs. The environ key covers
  the rest: nothing is instrumented twice.
* **Django's route template** needs the hook of :mod:`otel_stream.wsgi.routes`; it is
  installed with the first Django handler instrumented, and stays (it only copies the
  matched route into the environ).
"""

from __future__ import annotations

from typing import Any

from otel_stream import instrumentor
from otel_stream.guard import failsafe, log_failure
from otel_stream.wsgi.middleware import ENVIRON_KEY, StreamingWSGIMiddleware, WSGIApp
from otel_stream.wsgi.routes import install_django_route_hook

_ATTRIBUTE = "_otel_stream_wsgi_middleware"


class AutoStreamingWSGIMiddleware(StreamingWSGIMiddleware):
    """The ``StreamingWSGIMiddleware`` that ``StreamingInstrumentor`` puts around apps.

    It takes the instrumentor's options, runs its pending one-time setup (the SDK, for
    ``OTEL_STREAM_ENABLED``) at the first request, and passes every request straight
    through once the instrumentor is uninstrumented.

    Args:
        app: The WSGI application to wrap.
    """

    def __init__(self, app: WSGIApp) -> None:
        super().__init__(app, **instrumentor._state.options)

    def __call__(self, environ: Any, start_response: Any) -> Any:
        state = instrumentor._state
        if not state.active:
            return self.app(environ, start_response)
        if state.setup is not None:
            instrumentor.run_setup()
        return super().__call__(environ, start_response)


def _hand_added(app: Any) -> bool:
    """Whether a ``StreamingWSGIMiddleware`` was put into ``app`` by hand."""
    wsgi_app = getattr(app, "wsgi_app", None)
    return any(
        isinstance(node, StreamingWSGIMiddleware)
        and not isinstance(node, AutoStreamingWSGIMiddleware)
        for node in instrumentor._chain(wsgi_app)
    )


def _middleware_of(instance: Any, call: Any) -> AutoStreamingWSGIMiddleware | None:
    """The app's middleware, made at its first request; None when one was added by hand
    (that answer is kept too: the app's chain is walked once, not per request)."""
    middleware = instance.__dict__.get(_ATTRIBUTE)
    if middleware is None:
        middleware = False if _hand_added(instance) else AutoStreamingWSGIMiddleware(call)
        instance.__dict__[_ATTRIBUTE] = middleware
    return middleware or None


def _instrumented_call(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """A framework app's ``__call__(environ, start_response)``, with the middleware."""
    environ = args[0] if args else kwargs.get("environ")
    if not instrumentor._state.active or not isinstance(environ, dict) or ENVIRON_KEY in environ:
        return wrapped(*args, **kwargs)
    middleware = None
    try:
        middleware = _middleware_of(instance, wrapped)
    except Exception as error:
        log_failure("instrumenting a WSGI app", error)
    if middleware is None:
        return wrapped(*args, **kwargs)
    return middleware(*args, **kwargs)


def flask_call(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return _instrumented_call(wrapped, instance, args, kwargs)


def django_call(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if not instance.__dict__.get("_otel_stream_route_hook"):
        with failsafe("Django route hook"):
            instance.__dict__["_otel_stream_route_hook"] = install_django_route_hook()
    return _instrumented_call(wrapped, instance, args, kwargs)
