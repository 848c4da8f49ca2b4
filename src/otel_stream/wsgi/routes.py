"""Route templates of WSGI frameworks, read where the framework left them after routing.

Flask keeps its request object in the environ (werkzeug's ``werkzeug.request``), and it
holds the matched rule (``request.url_rule``). Django keeps ``resolver_match`` on its
request object only, which a WSGI middleware never sees: a hook on
``BaseHandler.resolve_request`` (the one place Django resolves a request) copies the
matched route into the environ. Neither resolves the URL a second time; an unmatched
request has no route, never the raw path.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import Any

from otel_stream.guard import failsafe

#: The route template, where a framework hook recorded it (Django).
ROUTE_KEY = "otel_stream.route"


def route_of(environ: MutableMapping[str, Any]) -> str | None:
    """The route template the framework matched, or None (never the raw path).

    Django's comes from the route hook (:func:`install_django_route_hook`); Flask's from
    the request object werkzeug keeps in the environ (``request.url_rule.rule``).
    """
    route = environ.get(ROUTE_KEY)
    if route is None:
        request = environ.get("werkzeug.request")
        if request is not None:
            rule = getattr(request, "url_rule", None)
            route = getattr(rule, "rule", None)
    return route if isinstance(route, str) and route else None


def _record_django_route(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    match = wrapped(*args, **kwargs)
    with failsafe("Django route"):
        request = args[0] if args else kwargs.get("request")
        route = getattr(match, "route", None)
        environ = getattr(request, "environ", None)
        if route and isinstance(route, str) and isinstance(environ, dict):
            environ[ROUTE_KEY] = route
    return match


def install_django_route_hook() -> bool:
    """Record the route Django resolved (``resolver_match.route``) into the environ.

    Wraps ``BaseHandler.resolve_request`` once per process; True when it is (now) wrapped.
    """
    import wrapt

    base = sys.modules.get("django.core.handlers.base")
    handler = getattr(base, "BaseHandler", None)
    current = vars(handler).get("resolve_request") if handler is not None else None
    if current is None:
        return False
    if (
        isinstance(current, wrapt.FunctionWrapper)
        and getattr(current, "_self_wrapper", None) is _record_django_route
    ):
        return True
    wrapt.wrap_function_wrapper(handler, "resolve_request", _record_django_route)
    return True
