"""Route templates of the ASGI frameworks that put them in the scope.

Starlette and FastAPI put the matched route in ``scope["route"]``, Litestar its template
in ``scope["path_template"]``. Choices made on purpose: the route is read only after
the app has routed the request, never computed from the raw path; when a Starlette
request went through mounts, their templates are read from the router's own route table
(the scope holds only the innermost route, and the mounts' path *values*); when that
fails there is no route, never a route that holds a value of the request.
"""

from __future__ import annotations

import re
from typing import Any

from otel_stream.asgi.types import Scope
from otel_stream.guard import log_failure


def route_of(scope: Scope) -> str | None:
    """The route template of Starlette/FastAPI (``scope["route"]``) or Litestar.

    Starlette keeps only the innermost route in the scope; the mounts it went through are
    in ``root_path``, with the values of their path parameters. Their templates are read
    from the router's own route table instead; when that fails there is no route, never
    a route that holds a value of the request.
    """
    route = scope.get("route")
    if route is not None:
        path_format = getattr(route, "path_format", None)
        is_mount = type(route).__name__ == "Mount"
        if is_mount or isinstance(path_format, str):
            if "app_root_path" in scope and scope.get("root_path") != scope["app_root_path"]:
                prefix = _mounts_template(scope)  # mounts were matched: not literal
            else:
                prefix = str(scope.get("root_path") or "")  # the server's, if any
            if prefix is None:
                return None
            if is_mount:
                return prefix or "/"
            return prefix.rstrip("/") + str(path_format) or "/"
    template = scope.get("path_template")
    return template if isinstance(template, str) else None


_CONVERTOR = re.compile(r"{([^:{}]+):[^{}]+}")


def _mounts_template(scope: Scope) -> str | None:
    """The templates of the mounts a Starlette request went through, joined, or None.

    Matches the request against the router's route table again, as Starlette did,
    following only mounts and hosts; checks that it arrives where Starlette did.
    """
    try:
        from starlette.routing import Host, Match, Mount
    except ImportError:
        return None
    try:
        routes = getattr(scope.get("router"), "routes", None)
        app_root = str(scope["app_root_path"])
        probe: dict[str, Any] = {
            "type": scope.get("type", "http"),
            "path": scope.get("path", ""),
            "root_path": app_root,
            "method": scope.get("method", "GET"),
            "headers": scope.get("headers") or [],
            "path_params": {},
        }
        template = app_root.rstrip("/")
        for _ in range(32):  # nesting depth; a cycle of mounts cannot loop forever
            if probe["root_path"] == scope.get("root_path"):
                return template
            for candidate in routes or ():
                if isinstance(candidate, (Mount, Host)):
                    match, child = candidate.matches(probe)
                    if match is Match.FULL:
                        break
            else:
                return None
            probe.update(child)
            if isinstance(candidate, Mount):
                template += _CONVERTOR.sub(r"{\1}", candidate.path)
            routes = candidate.routes
        return None
    except Exception as error:
        log_failure("route template", error)
        return None
